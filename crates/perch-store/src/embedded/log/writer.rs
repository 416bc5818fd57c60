//! The message log's side of group commit: a batch's appends to one stream go to its active
//! segment with one write and one `fdatasync`, and only then become visible to readers and get
//! their answers. A batch that fails is cut off the file again, so the next one starts on a
//! clean end (as recovery expects), and every append of it gets the error.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, RwLock};

use perch_core::Clock;
use tokio::sync::oneshot;

use super::record::{encode_record, from_micros, micros};
use super::segment::{INDEX_INTERVAL, IndexEntry, Segment, Stream};
use super::{backend, no_stream};
use crate::embedded::group_commit::{CommitStep, Health};
use crate::log::{Appended, NewMessage};
use crate::{Error, Result};

/// Most append requests one group commit takes.
pub(super) const GROUP_COMMIT_MAX_REQUESTS: usize = 4096;

/// One `append` call, answered once its messages are on disk.
pub(super) struct WriteRequest {
    pub(super) stream: u64,
    pub(super) messages: Vec<NewMessage>,
    pub(super) reply: oneshot::Sender<Result<Vec<Appended>>>,
}

/// The log writer's state: the streams it appends to, and what stamps publish times.
pub(super) struct LogCommit {
    pub(super) streams: Arc<RwLock<HashMap<u64, Arc<Stream>>>>,
    pub(super) segment_max_bytes: u64,
    pub(super) clock: Arc<dyn Clock>,
}

impl CommitStep for LogCommit {
    type Request = WriteRequest;

    /// Commits each stream's share of the batch on its own: a failed stream fails only its
    /// own appends. A failed write leaves nothing behind, so the log never needs recovering.
    fn commit(&mut self, batch: &mut Vec<WriteRequest>) -> Health {
        let mut by_stream: BTreeMap<u64, Vec<WriteRequest>> = BTreeMap::new();
        for r in batch.drain(..) {
            by_stream.entry(r.stream).or_default().push(r);
        }
        for (id, requests) in by_stream {
            let stream = self.streams.read().ok().and_then(|s| s.get(&id).cloned());
            let Some(stream) = stream else {
                for r in requests {
                    let _ = r.reply.send(Err(no_stream(id)));
                }
                continue;
            };
            match self.write_batch(&stream, &requests) {
                Ok(results) => {
                    for (r, res) in requests.into_iter().zip(results) {
                        let _ = r.reply.send(Ok(res));
                    }
                }
                Err(e) => {
                    tracing::error!(stream = id, error = %e, "message log write failed; publishers get an error");
                    for r in requests {
                        let _ = r.reply.send(Err(e.clone()));
                    }
                }
            }
        }
        Health::Serving
    }
}

/// Where a batch goes: the end of the active segment as it was before the batch.
struct Tail {
    file: Arc<File>,
    offset: u64,
    next_seq: u64,
    last_time_micros: i64,
    count_in_segment: u64,
}

/// A batch encoded for one write.
struct Encoded {
    buf: Vec<u8>,
    index: Vec<IndexEntry>,
    results: Vec<Vec<Appended>>,
    next_seq: u64,
    time_micros: i64,
}

impl LogCommit {
    /// Appends every request of one stream with one write and one fdatasync.
    fn write_batch(
        &self,
        stream: &Stream,
        requests: &[WriteRequest],
    ) -> Result<Vec<Vec<Appended>>> {
        let tail = self.tail(stream)?;
        let now = micros(self.clock.now()).max(tail.last_time_micros);
        let encoded = encode_batch(&tail, now, requests);
        if let Err(e) = tail
            .file
            .write_all_at(&encoded.buf, tail.offset)
            .and_then(|()| tail.file.sync_data())
        {
            // Nothing of this batch counts: cut whatever part of it reached the file (a shorter
            // file needs no space), so the next batch starts on a clean end, as recovery expects.
            let _ = tail.file.set_len(tail.offset);
            return Err(Error::io(&e));
        }
        let next_seq = encoded.next_seq;
        let results = publish(stream, encoded)?;
        stream.watch.send_replace(next_seq);
        Ok(results)
    }

    /// The active segment's end, rolling to a new segment first if it is full (the new file is
    /// empty until the batch is committed).
    fn tail(&self, stream: &Stream) -> Result<Tail> {
        let mut state = stream.state.write().map_err(backend)?;
        let needs_roll = state
            .segments
            .last()
            .is_none_or(|s| s.len >= self.segment_max_bytes);
        if needs_roll {
            let base = state.next_seq;
            state.segments.push(Segment::create(&stream.dir, base)?);
        }
        let active = state
            .segments
            .last()
            .ok_or_else(|| backend("stream has no segment"))?;
        Ok(Tail {
            file: active.file.clone(),
            offset: active.len,
            next_seq: state.next_seq,
            last_time_micros: state.last_time_micros,
            count_in_segment: active.count,
        })
    }
}

/// Encodes every message of `requests`, numbered from the tail on and stamped `now`.
fn encode_batch(tail: &Tail, now: i64, requests: &[WriteRequest]) -> Encoded {
    let mut buf = Vec::new();
    let mut index = Vec::new();
    let mut results = Vec::with_capacity(requests.len());
    let mut seq = tail.next_seq;
    let mut count_in_segment = tail.count_in_segment;
    for r in requests {
        let mut appended = Vec::with_capacity(r.messages.len());
        for m in &r.messages {
            let record_offset = tail.offset + buf.len() as u64;
            if count_in_segment.is_multiple_of(INDEX_INTERVAL) {
                index.push(IndexEntry {
                    seq,
                    offset: record_offset,
                    time_micros: now,
                });
            }
            encode_record(&mut buf, seq, now, m);
            appended.push(Appended {
                seq,
                publish_time: from_micros(now),
            });
            seq += 1;
            count_in_segment += 1;
        }
        results.push(appended);
    }
    Encoded {
        buf,
        index,
        results,
        next_seq: seq,
        time_micros: now,
    }
}

/// Makes a committed batch visible to readers.
fn publish(stream: &Stream, encoded: Encoded) -> Result<Vec<Vec<Appended>>> {
    let mut state = stream.state.write().map_err(backend)?;
    let added = encoded.next_seq - state.next_seq;
    let active = state
        .segments
        .last_mut()
        .ok_or_else(|| backend("stream has no segment"))?;
    active.len += encoded.buf.len() as u64;
    active.count += added;
    active.index.extend(encoded.index);
    if added > 0 {
        active.last_time_micros = encoded.time_micros;
    }
    state.next_seq = encoded.next_seq;
    state.last_time_micros = encoded.time_micros;
    Ok(encoded.results)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use perch_core::ManualClock;

    use super::super::testing::msg;
    use crate::embedded::SegmentLog;
    use crate::log::MessageLog;

    use super::*;

    #[tokio::test]
    async fn publish_times_come_from_the_clock_and_never_go_backwards_in_a_stream() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
        let clock = Arc::new(ManualClock::new(t0));
        let log = SegmentLog::open_with_clock(dir.path(), 1024, clock.clone()).unwrap();
        log.create_stream(1).await.unwrap();
        let first = log.append(1, vec![msg(0), msg(1)]).await.unwrap();
        assert!(first.iter().all(|a| a.publish_time == t0));
        clock.set(t0 - chrono::Duration::hours(1));
        let behind = log.append(1, vec![msg(2)]).await.unwrap();
        assert_eq!(
            behind[0].publish_time, t0,
            "a clock set back does not reorder times"
        );
        clock.set(t0 + chrono::Duration::seconds(3));
        let later = log.append(1, vec![msg(3)]).await.unwrap();
        assert_eq!(later[0].publish_time, t0 + chrono::Duration::seconds(3));
        assert_eq!(log.seq_at_time(1, later[0].publish_time).unwrap(), 4);
        let stored = log.read(1, 1, 10, usize::MAX).unwrap();
        let times: Vec<_> = stored.iter().map(|m| m.publish_time).collect();
        assert_eq!(times, vec![t0, t0, t0, t0 + chrono::Duration::seconds(3)]);
    }

    #[tokio::test]
    async fn appends_to_a_missing_stream_fail_alone_in_their_batch() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path()).unwrap();
        log.create_stream(1).await.unwrap();
        let (ok, missing) = tokio::join!(log.append(1, vec![msg(0)]), log.append(9, vec![msg(1)]));
        assert_eq!(ok.unwrap()[0].seq, 1);
        let err = missing.unwrap_err();
        assert!(
            matches!(&err, Error::Rejected(r) if r.message.contains("0000000000000009")),
            "{err:?}"
        );
    }
}
