//! Group commit, the part every embedded store shares: one writer thread takes whatever requests
//! are queued once the previous batch is done (up to a cap), hands them to its store's commit
//! step, which makes the whole batch durable with one sync and only then answers each request;
//! and, when a commit step reports that its storage engine has latched a failure, the writer
//! recovers it before the next batch, trying again every retry period while that fails.
//!
//! Used by the message log (`log/`: one `fdatasync` per stream per batch) and by every redb
//! file (`commit.rs`: one empty durable commit per batch). What a commit step does, and how it
//! answers its requests, stays with its store; the queue, the batching, the thread's lifetime
//! and the recover-and-retry loop live here, once.
//!
//! Acknowledged means durable: this module never answers a request itself; a commit step
//! answers only after its sync (or with the error that kept the batch from becoming durable). A
//! request dropped unanswered (the writer stopped) drops its reply channel, so its caller gets an
//! error, never a false success.

use std::sync::mpsc;
use std::time::Duration;

/// Whether a store can take the next batch, or its storage engine refuses everything until it
/// is recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    Serving,
    Broken,
}

/// One store's side of group commit.
pub(crate) trait CommitStep: Send + 'static {
    type Request: Send + 'static;

    /// Runs every request of `batch` (drained: anything left is dropped unanswered), makes them
    /// durable together, then answers each. `Broken` when the storage engine failed in a way it
    /// must be recovered from before it serves again.
    fn commit(&mut self, batch: &mut Vec<Self::Request>) -> Health;

    /// Tries to recover after `commit` reported `Broken`: `Serving` once it did. While it is
    /// still `Broken` the writer calls this again every retry period, and before each batch.
    fn recover(&mut self) -> Health {
        Health::Serving
    }
}

/// How one writer batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    /// Most requests one commit takes; the rest wait for the next.
    pub max: usize,
    /// How often a broken store is recovered again while no request arrives.
    pub retry: Duration,
}

/// The handle of a writer thread. Dropping it finishes what was queued and joins the thread (so
/// the store's files are closed once the store is dropped).
pub(crate) struct GroupCommit<R> {
    queue: Option<mpsc::Sender<R>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<R> std::fmt::Debug for GroupCommit<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("thread", &self.thread)
            .finish_non_exhaustive()
    }
}

impl<R: Send + 'static> GroupCommit<R> {
    /// Starts the writer thread of `step`, named `thread_name` (it shows in `top -H`).
    pub(crate) fn start<S: CommitStep<Request = R>>(
        step: S,
        batching: Batching,
        thread_name: &str,
    ) -> std::io::Result<GroupCommit<R>> {
        let (queue, requests) = mpsc::channel::<R>();
        let thread = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || writer(step, &requests, batching))?;
        Ok(GroupCommit {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues `request` for the next batch; `false` if the writer thread has stopped (the
    /// request is dropped, and with it its reply channel). `std::sync::mpsc::Sender` is `Sync`:
    /// callers on every runtime worker queue without a lock.
    pub(crate) fn submit(&self, request: R) -> bool {
        self.queue
            .as_ref()
            .is_some_and(|queue| queue.send(request).is_ok())
    }
}

impl<R> Drop for GroupCommit<R> {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

/// The writer loop: a batch is whatever is queued once the previous batch is done. It ends when
/// every handle is dropped and the queue is empty.
fn writer<S: CommitStep>(mut step: S, queue: &mpsc::Receiver<S::Request>, batching: Batching) {
    let mut batch = Vec::new();
    let mut health = Health::Serving;
    loop {
        let first = match health {
            Health::Broken => match queue.recv_timeout(batching.retry) {
                Ok(request) => Some(request),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
            Health::Serving => match queue.recv() {
                Ok(request) => Some(request),
                Err(_) => return,
            },
        };
        if health == Health::Broken {
            health = step.recover();
        }
        let Some(first) = first else { continue };
        batch.push(first);
        while batch.len() < batching.max {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if step.commit(&mut batch) == Health::Broken {
            health = step.recover();
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A step that records its batches and fails on request.
    struct Recorder {
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
        recoveries: Arc<Mutex<Vec<Health>>>,
        /// Outcomes of the next recoveries (then `Serving`).
        recover_with: Vec<Health>,
        /// Holds the first batch (after saying it started) until the test lets it go, so the
        /// rest queue up behind it.
        gate: Option<Gate>,
    }

    /// The first commit says on `started` that it has its batch, then waits for `go`.
    struct Gate {
        started: mpsc::Sender<()>,
        go: mpsc::Receiver<()>,
    }

    /// A number, answered with itself once committed.
    type Request = (u32, tokio::sync::oneshot::Sender<u32>);

    impl CommitStep for Recorder {
        type Request = Request;

        fn commit(&mut self, batch: &mut Vec<Self::Request>) -> Health {
            if let Some(gate) = self.gate.take() {
                let _ = gate.started.send(());
                let _ = gate.go.recv();
            }
            let mut seen = Vec::new();
            let mut broken = false;
            for (n, reply) in batch.drain(..) {
                seen.push(n);
                broken |= n == 0;
                let _ = reply.send(n);
            }
            self.batches.lock().unwrap().push(seen);
            if broken {
                Health::Broken
            } else {
                Health::Serving
            }
        }

        fn recover(&mut self) -> Health {
            let outcome = if self.recover_with.is_empty() {
                Health::Serving
            } else {
                self.recover_with.remove(0)
            };
            self.recoveries.lock().unwrap().push(outcome);
            outcome
        }
    }

    /// A test writer, the batches it committed, and the outcomes of its recoveries.
    type Started = (
        GroupCommit<Request>,
        Arc<Mutex<Vec<Vec<u32>>>>,
        Arc<Mutex<Vec<Health>>>,
    );

    fn start(recover_with: Vec<Health>, gate: Option<Gate>, max: usize) -> Started {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let recoveries = Arc::new(Mutex::new(Vec::new()));
        let step = Recorder {
            batches: batches.clone(),
            recoveries: recoveries.clone(),
            recover_with,
            gate,
        };
        let batching = Batching {
            max,
            retry: Duration::from_millis(10),
        };
        let writer = GroupCommit::start(step, batching, "test-group-commit").unwrap();
        (writer, batches, recoveries)
    }

    fn submit(writer: &GroupCommit<Request>, n: u32) -> tokio::sync::oneshot::Receiver<u32> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(writer.submit((n, tx)));
        rx
    }

    /// A gate for the first commit: (the gate, its `started` end, its `go` end).
    fn gate() -> (Gate, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (started, has_started) = mpsc::channel();
        let (open, go) = mpsc::channel();
        (Gate { started, go }, has_started, open)
    }

    #[test]
    fn requests_queued_behind_a_commit_share_the_next_one_up_to_the_cap() {
        let (gate, started, open) = gate();
        let (writer, batches, _) = start(Vec::new(), Some(gate), 3);
        let mut replies = vec![submit(&writer, 1)];
        started.recv().unwrap();
        replies.extend((2..=6).map(|n| submit(&writer, n)));
        open.send(()).unwrap();
        drop(writer);
        for (i, mut reply) in replies.into_iter().enumerate() {
            assert_eq!(reply.try_recv().unwrap(), i as u32 + 1);
        }
        assert_eq!(
            *batches.lock().unwrap(),
            vec![vec![1], vec![2, 3, 4], vec![5, 6]]
        );
    }

    #[test]
    fn a_broken_store_is_recovered_before_the_next_batch_and_retried_while_idle() {
        let (writer, batches, recoveries) = start(vec![Health::Broken, Health::Broken], None, 8);
        let mut first = submit(&writer, 0);
        // The commit broke it; the writer retries on its own every 10 ms until it recovers.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while recoveries.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            *recoveries.lock().unwrap(),
            vec![Health::Broken, Health::Broken, Health::Serving]
        );
        let mut second = submit(&writer, 7);
        drop(writer);
        assert_eq!(first.try_recv().unwrap(), 0);
        assert_eq!(second.try_recv().unwrap(), 7);
        assert_eq!(*batches.lock().unwrap(), vec![vec![0], vec![7]]);
        assert_eq!(
            recoveries.lock().unwrap().len(),
            3,
            "no recovery once serving"
        );
    }

    #[test]
    fn dropping_the_handle_finishes_the_queue_and_then_the_thread() {
        let (gate, started, open) = gate();
        let (writer, batches, _) = start(Vec::new(), Some(gate), 100);
        let replies: Vec<_> = (1..=4).map(|n| submit(&writer, n)).collect();
        started.recv().unwrap();
        open.send(()).unwrap();
        drop(writer);
        let answered: Vec<u32> = replies
            .into_iter()
            .map(|mut r| r.try_recv().unwrap())
            .collect();
        assert_eq!(answered, vec![1, 2, 3, 4]);
        let total: usize = batches.lock().unwrap().iter().map(Vec::len).sum();
        assert_eq!(total, 4);
    }
}
