//! Group commit for a redb file: one writer thread runs every write transaction, and one fsync
//! makes a whole batch of them durable.
//!
//! redb allows one write transaction at a time, and a durable commit costs an fsync (about a
//! millisecond here), so one commit per request caps a store at about a thousand writes per
//! second however many requests wait. The writer takes every request queued at that moment,
//! runs each in its own transaction committed without fsync ([`Durability::None`]: each request
//! still succeeds or fails alone), then makes them all durable with one empty
//! [`Durability::Immediate`] commit, and only then answers them. A request that arrives alone
//! runs as one durable commit, so a quiet store pays nothing extra.
//!
//! What callers can rely on: a write's future resolves only after its data is on disk (or with
//! the error that kept it from getting there). A read in another task may see a write up to one
//! fsync before that write's caller is answered; if the machine dies in that window the write is
//! gone, and so is the answer to it.

use std::sync::Arc;
use std::sync::mpsc;

use redb::{Database, Durability, WriteTransaction};

use crate::{Error, Result};

/// Most write requests one durable commit covers; the rest wait for the next.
pub const GROUP_COMMIT_MAX: usize = 256;

/// The caller's answer, sent once the batch it ran in is durable (or failed to become so).
type Answer = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// A queued write: runs its transaction with the given durability and hands back its answer.
type Job = Box<dyn FnOnce(&Database, Durability) -> Answer + Send>;

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

/// The handle of a file's writer thread; cheap to clone. Dropping the last handle finishes what
/// was queued and joins the thread, so the file is closed cleanly (no check at the next open)
/// once the store that owns it is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Committer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl Committer {
    /// Starts the writer thread of `db`, named `thread_name` (it shows in `top -H`).
    pub(crate) fn start(db: Arc<Database>, thread_name: &str) -> std::io::Result<Committer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || writer(&db, &queue))?;
        Ok(Committer {
            inner: Arc::new(Inner {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
        })
    }

    /// Runs `f` in a write transaction of its own and returns its result once it is durable.
    /// An `Err` from `f` aborts only this transaction.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |db, durability| {
            let outcome = run(db, durability, f);
            Box::new(move |synced| {
                let answer = match (outcome, synced) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Ok(_), Err(e)) => Err(Error::Backend(e)),
                    (Err(e), _) => Err(e),
                };
                let _ = tx.send(answer);
            })
        });
        self.inner
            .jobs
            .as_ref()
            .ok_or_else(|| backend("the store is closed"))?
            .send(job)
            .map_err(|_| backend("the store's writer thread has stopped"))?;
        rx.await
            .map_err(|_| backend("the store's writer thread stopped before answering"))?
    }
}

fn run<T>(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&WriteTransaction) -> Result<T>,
) -> Result<T> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(durability).map_err(backend)?;
    let value = f(&txn)?;
    txn.commit().map_err(backend)?;
    Ok(value)
}

/// The writer loop: a batch is whatever is queued once the previous batch is durable.
fn writer(db: &Database, queue: &mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(GROUP_COMMIT_MAX);
    while let Ok(first) = queue.recv() {
        batch.push(first);
        while batch.len() < GROUP_COMMIT_MAX {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("perch_store_group_commit_writes").record(batch.len() as f64);
        if batch.len() == 1 {
            if let Some(answer) = run_job(batch.pop().expect("one job"), db, Durability::Immediate)
            {
                answer(Ok(()));
            }
            continue;
        }
        let answers: Vec<Answer> = batch
            .drain(..)
            .filter_map(|job| run_job(job, db, Durability::None))
            .collect();
        let synced = sync(db).map_err(|e| e.to_string());
        if let Err(e) = &synced {
            tracing::error!(error = %e, "a group commit failed; its writes were not acknowledged");
        }
        for answer in answers {
            answer(synced.clone());
        }
    }
}

/// Runs one job. A panic inside it (a bug) aborts only its own transaction and drops its
/// answer, so its caller gets an error while the writer thread lives on for everyone else.
fn run_job(job: Job, db: &Database, durability: Durability) -> Option<Answer> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(db, durability))) {
        Ok(answer) => Some(answer),
        Err(_) => {
            tracing::error!("a store write panicked; its transaction was aborted");
            None
        }
    }
}

/// Makes every earlier non-durable commit durable.
fn sync(db: &Database) -> Result<()> {
    let txn = db.begin_write().map_err(backend)?;
    txn.commit().map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("t.redb")).unwrap());
        let committer = Committer::start(db.clone(), "test-commit").unwrap();
        let panicked = committer
            .write(|txn| -> Result<()> {
                txn.open_table(T).unwrap().insert(1, 1).unwrap();
                panic!("a bug in a write");
            })
            .await;
        assert!(panicked.is_err());
        committer
            .write(|txn| {
                txn.open_table(T).unwrap().insert(2, 2).unwrap();
                Ok(())
            })
            .await
            .unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        assert!(
            t.get(1).unwrap().is_none(),
            "the panicking write was aborted"
        );
        assert_eq!(t.get(2).unwrap().map(|v| v.value()), Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_each_commit_or_fail_alone_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let db = Arc::new(Database::create(&path).unwrap());
            let committer = Committer::start(db.clone(), "test-commit").unwrap();
            let mut tasks = Vec::new();
            for i in 0..500u64 {
                let c = committer.clone();
                tasks.push(tokio::spawn(async move {
                    c.write(move |txn| {
                        txn.open_table(T).unwrap().insert(i, i * 2).unwrap();
                        // Every seventh write fails after writing: its insert must vanish.
                        if i % 7 == 0 {
                            return Err(Error::Backend(format!("refused {i}")));
                        }
                        Ok(i)
                    })
                    .await
                }));
            }
            for (i, t) in tasks.into_iter().enumerate() {
                let r = t.await.unwrap();
                assert_eq!(r.is_err(), i % 7 == 0, "write {i}: {r:?}");
            }
            drop(committer);
            assert_eq!(
                Arc::strong_count(&db),
                1,
                "dropping the committer joins its thread"
            );
        }
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        for i in 0..500u64 {
            let got = t.get(i).unwrap().map(|v| v.value());
            assert_eq!(got, (i % 7 != 0).then_some(i * 2), "key {i}");
        }
    }
}
