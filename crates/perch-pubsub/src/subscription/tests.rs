//! The subscription state machine on hand-made logs: order, acks and the floor, nacks,
//! expiry, attempts, ordering keys, filters, backoff, exactly-once, restart and seek.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::Utc;
use perch_store::log::NewMessage;

use super::*;

fn settings() -> DeliverySettings {
    DeliverySettings {
        ack_deadline: Duration::from_secs(10),
        retry: None,
        max_delivery_attempts: None,
        filter: None,
        ordering: false,
        exactly_once: false,
    }
}

fn log(n: u64, key: impl Fn(u64) -> &'static str) -> Vec<StoredMessage> {
    (1..=n)
        .map(|seq| StoredMessage {
            seq,
            publish_time: Utc::now(),
            message: NewMessage {
                data: Bytes::from(format!("m{seq}")),
                attributes: BTreeMap::from([("n".to_owned(), (seq % 2).to_string())]),
                ordering_key: key(seq).to_owned(),
            },
        })
        .collect()
}

fn take(state: &mut SubscriptionState, msgs: &[StoredMessage], now: Instant, max: usize) -> Taken {
    let head = msgs.len() as u64 + 1;
    let mut read = |from: u64, n: usize| {
        Some(
            msgs.iter()
                .filter(|m| m.seq >= from)
                .take(n)
                .cloned()
                .collect(),
        )
    };
    let want = Want {
        stream: None,
        max_count: max,
        max_bytes: usize::MAX,
        deadline: Duration::from_secs(10),
    };
    state.take(now, want, head, &mut read)
}

fn seqs(t: &Taken) -> Vec<u64> {
    t.deliveries.iter().map(|d| d.message.seq).collect()
}

fn id(d: &Delivery) -> AckId {
    AckId::parse(&d.ack_id).unwrap()
}

#[test]
fn a_failed_log_read_delivers_nothing_and_skips_nothing() {
    let msgs = log(4, |_| "");
    let mut s = SubscriptionState::new(9, settings(), AckProgress::default(), 1);
    let now = Instant::now();
    let want = || Want {
        stream: None,
        max_count: 10,
        max_bytes: usize::MAX,
        deadline: Duration::from_secs(10),
    };
    let t = s.take(now, want(), 5, &mut |_, _| None);
    assert!(t.deliveries.is_empty());
    // Two delivered and nacked, so they wait in the ready queue; reads fail again.
    let t = take(&mut s, &msgs, now, 2);
    assert_eq!(seqs(&t), vec![1, 2]);
    for d in &t.deliveries {
        s.modify_deadline(&id(d), 0, now).unwrap();
    }
    let t = s.take(now, want(), 5, &mut |_, _| None);
    assert!(t.deliveries.is_empty());
    // Once the log reads again, every message is still owed.
    assert_eq!(seqs(&take(&mut s, &msgs, now, 10)), vec![1, 2, 3, 4]);
}

#[test]
fn delivers_in_order_and_acks_advance_the_floor() {
    let msgs = log(5, |_| "");
    let mut s = SubscriptionState::new(9, settings(), AckProgress::default(), 1);
    let now = Instant::now();
    let t = take(&mut s, &msgs, now, 3);
    assert_eq!(seqs(&t), vec![1, 2, 3]);
    s.ack(&id(&t.deliveries[1])).unwrap();
    assert_eq!(s.floor(), 1);
    s.ack(&id(&t.deliveries[0])).unwrap();
    assert_eq!(s.floor(), 3);
    assert_eq!(
        s.take_progress().unwrap(),
        AckProgress {
            floor: 3,
            acked: vec![]
        }
    );
    assert!(s.take_progress().is_none());
    assert_eq!(seqs(&take(&mut s, &msgs, now, 10)), vec![4, 5]);
}

#[test]
fn progress_whose_save_failed_is_taken_again() {
    let msgs = log(2, |_| "");
    let mut s = SubscriptionState::new(9, settings(), AckProgress::default(), 1);
    let t = take(&mut s, &msgs, Instant::now(), 2);
    s.ack(&id(&t.deliveries[0])).unwrap();
    let saved = s.take_progress().unwrap();
    assert!(s.take_progress().is_none());
    s.mark_unsaved(); // the store refused the save
    assert_eq!(s.take_progress(), Some(saved));
}

#[test]
fn nack_and_expiry_redeliver_and_count_attempts() {
    let msgs = log(2, |_| "");
    let mut st = settings();
    st.max_delivery_attempts = Some(3);
    let mut s = SubscriptionState::new(1, st, AckProgress::default(), 1);
    let now = Instant::now();
    let t = take(&mut s, &msgs, now, 1);
    assert_eq!(t.deliveries[0].delivery_attempt, 1);
    s.modify_deadline(&id(&t.deliveries[0]), 0, now).unwrap();
    let t = take(&mut s, &msgs, now, 1);
    assert_eq!((seqs(&t), t.deliveries[0].delivery_attempt), (vec![1], 2));
    // Let it expire.
    let later = now + Duration::from_secs(11);
    let t = take(&mut s, &msgs, later, 1);
    assert_eq!((seqs(&t), t.deliveries[0].delivery_attempt), (vec![1], 3));
    s.modify_deadline(&id(&t.deliveries[0]), 0, later).unwrap();
    // Third failure: dead-lettered, acked, and the next message follows.
    let t = take(&mut s, &msgs, later, 1);
    assert_eq!(t.dead_letters.len(), 1);
    assert_eq!(t.dead_letters[0].1, 3);
    assert_eq!(seqs(&t), vec![2]);
    assert_eq!(s.floor(), 2);
}

#[test]
fn a_stale_ack_id_cannot_nack_the_new_lease() {
    let msgs = log(1, |_| "");
    let mut s = SubscriptionState::new(1, settings(), AckProgress::default(), 1);
    let now = Instant::now();
    let first = take(&mut s, &msgs, now, 1);
    let later = now + Duration::from_secs(11);
    let second = take(&mut s, &msgs, later, 1);
    assert_eq!(
        s.modify_deadline(&id(&first.deliveries[0]), 0, later),
        Err(AckIdError::Expired)
    );
    assert_eq!(s.leased(), 1);
    // Without exactly-once, the old id still acks the message.
    s.ack(&id(&first.deliveries[0])).unwrap();
    assert_eq!(s.leased(), 0);
    assert_eq!(s.floor(), 2);
    let _ = second;
}

#[test]
fn exactly_once_refuses_expired_ids() {
    let msgs = log(1, |_| "");
    let mut st = settings();
    st.exactly_once = true;
    let mut s = SubscriptionState::new(1, st, AckProgress::default(), 1);
    let now = Instant::now();
    let first = take(&mut s, &msgs, now, 1);
    let second = take(&mut s, &msgs, now + Duration::from_secs(11), 1);
    assert_eq!(s.ack(&id(&first.deliveries[0])), Err(AckIdError::Expired));
    s.ack(&id(&second.deliveries[0])).unwrap();
    assert_eq!(AckId::parse("nonsense"), None);
    assert_eq!(
        s.ack(&AckId {
            subscription: 2,
            seq: 1,
            generation: 1
        }),
        Err(AckIdError::Malformed)
    );
}

#[test]
fn ordering_keys_hold_back_later_messages_until_acked() {
    let msgs = log(6, |seq| if seq % 2 == 0 { "even" } else { "odd" });
    let mut st = settings();
    st.ordering = true;
    let mut s = SubscriptionState::new(1, st, AckProgress::default(), 1);
    let now = Instant::now();
    let t = take(&mut s, &msgs, now, 10);
    assert_eq!(seqs(&t), vec![1, 2]);
    s.modify_deadline(&id(&t.deliveries[1]), 0, now).unwrap();
    s.ack(&id(&t.deliveries[0])).unwrap();
    let t = take(&mut s, &msgs, now, 10);
    // 2 is redelivered before 4; 3 follows 1.
    assert_eq!(seqs(&t), vec![2, 3]);
    for d in &t.deliveries {
        s.ack(&id(d)).unwrap();
    }
    assert_eq!(seqs(&take(&mut s, &msgs, now, 10)), vec![4, 5]);
}

#[test]
fn filters_ack_what_they_drop_and_retry_policy_backs_off() {
    let msgs = log(4, |_| "");
    let mut st = settings();
    st.filter = Some(Filter::parse(r#"attributes.n = "0""#).unwrap());
    st.retry = Some((Duration::from_secs(5), Duration::from_secs(60)));
    let mut s = SubscriptionState::new(1, st, AckProgress::default(), 1);
    let now = Instant::now();
    let t = take(&mut s, &msgs, now, 10);
    assert_eq!(seqs(&t), vec![2, 4]);
    s.modify_deadline(&id(&t.deliveries[0]), 0, now).unwrap();
    assert!(
        take(&mut s, &msgs, now + Duration::from_secs(4), 10)
            .deliveries
            .is_empty()
    );
    assert_eq!(
        s.next_wakeup(),
        Some(now + Duration::from_secs(5)).min(s.next_wakeup())
    );
    assert_eq!(
        seqs(&take(&mut s, &msgs, now + Duration::from_secs(5), 10)),
        vec![2]
    );
}

#[test]
fn restart_resumes_from_progress_and_seek_resets() {
    let msgs = log(5, |_| "");
    let progress = AckProgress {
        floor: 2,
        acked: vec![3],
    };
    let mut s = SubscriptionState::new(1, settings(), progress, 1);
    let now = Instant::now();
    assert_eq!(seqs(&take(&mut s, &msgs, now, 10)), vec![2, 4, 5]);
    s.reset(1, []);
    assert_eq!(seqs(&take(&mut s, &msgs, now, 10)), vec![1, 2, 3, 4, 5]);
}
