//! Group commit for a redb file: one writer thread runs every write transaction, and one fsync
//! makes a whole batch of them durable; and recovery of the file after an I/O failure.
//!
//! redb allows one write transaction at a time, and a durable commit costs an fsync (about a
//! millisecond here), so one commit per request caps a store at about a thousand writes per
//! second however many requests wait. The writer takes every request queued at that moment,
//! runs each in its own transaction committed without fsync ([`Durability::None`]: each request
//! still succeeds or fails alone), then makes them all durable with one empty
//! [`Durability::Immediate`] commit, and only then answers them. A request that arrives alone
//! runs as one durable commit, so a quiet store pays nothing extra. The queue, the writer thread
//! and its recover-and-retry loop are `group_commit`'s; this module is the redb commit step.
//!
//! What callers can rely on: a write's future resolves only after its data is on disk (or with
//! the error that kept it from getting there). A read in another task may see a write up to one
//! fsync before that write's caller is answered; if the machine dies in that window the write is
//! gone, and so is the answer to it.
//!
//! After a failed write (a full disk, an I/O error) redb refuses every later read and write of
//! that `Database` until it is closed and opened again. The writer thread, which runs every
//! write and so sees every such failure first, does that: it takes the handle away from readers
//! (they get `UNAVAILABLE` meanwhile), waits for reads in flight to let go, and opens the file
//! again (redb checks it as after a crash). If that fails too (the disk is still full), it
//! tries again every [`REOPEN_RETRY`] until it succeeds. Writes that failed were answered with
//! their error (`RESOURCE_EXHAUSTED` for a full disk) and left nothing behind.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, Durability, WriteTransaction};

use super::group_commit::{Batching, CommitStep, GroupCommit, Health};
use crate::{Error, Result};

/// Most write requests one durable commit covers; the rest wait for the next.
pub const GROUP_COMMIT_MAX: usize = 256;
/// How often the writer tries again to open a file it had to close after an I/O failure.
pub const REOPEN_RETRY: Duration = Duration::from_secs(1);
/// How long a reopen waits for reads in flight to let go of the failed handle before it tries
/// anyway (a read still holding it then makes this attempt fail, and the next one is made
/// [`REOPEN_RETRY`] later).
const REOPEN_DRAIN_WAIT: Duration = Duration::from_secs(5);

/// The caller's answer, sent once the batch it ran in is durable (or failed to become so).
type Answer = Box<dyn FnOnce(Result<()>) + Send>;
/// A queued write: runs its transaction with the given durability (or learns that there is no
/// open database to run it on) and hands back its answer, and whether the storage engine
/// failed it (as opposed to the write refusing itself, e.g. ALREADY_EXISTS).
type Job = Box<dyn FnOnce(Result<&Database>, Durability) -> (Answer, bool) + Send>;

/// One redb file and its open `Database`, which the writer may close and open again.
#[derive(Debug)]
struct DbFile {
    path: PathBuf,
    current: RwLock<Option<Arc<Database>>>,
}

impl DbFile {
    fn get(&self) -> Result<Arc<Database>> {
        self.current
            .read()
            .map_err(|_| Error::Backend("the store's handle lock is poisoned".into()))?
            .clone()
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "{} is being reopened after an I/O failure; try again",
                    self.path.display()
                ))
            })
    }

    fn set(&self, db: Option<Arc<Database>>) -> Option<Arc<Database>> {
        match self.current.write() {
            Ok(mut current) => std::mem::replace(&mut *current, db),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), db),
        }
    }

    /// Closes the failed database and opens the file again.
    fn reopen(&self) -> Result<()> {
        if let Some(old) = self.set(None) {
            let deadline = Instant::now() + REOPEN_DRAIN_WAIT;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let db = super::open_database(&self.path).map_err(Error::redb)?;
        self.set(Some(Arc::new(db)));
        tracing::warn!(file = %self.path.display(), "store reopened after an I/O failure; it serves again");
        Ok(())
    }
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
    file: Arc<DbFile>,
    writer: GroupCommit<Job>,
}

impl Committer {
    /// Starts the writer thread of `db`, the open file at `path`, named `thread_name` (it shows
    /// in `top -H`).
    pub(crate) fn start(
        db: Database,
        path: PathBuf,
        thread_name: &str,
    ) -> std::io::Result<Committer> {
        let file = Arc::new(DbFile {
            path,
            current: RwLock::new(Some(Arc::new(db))),
        });
        let batching = Batching {
            max: GROUP_COMMIT_MAX,
            retry: REOPEN_RETRY,
        };
        let writer = GroupCommit::start(RedbCommit { file: file.clone() }, batching, thread_name)?;
        Ok(Committer {
            inner: Arc::new(Inner { file, writer }),
        })
    }

    /// Opens (or creates) the redb file at `path`, lets `create_tables` make sure every table
    /// exists (so read transactions never meet a missing one), and starts its writer thread.
    pub(crate) fn open(
        path: &Path,
        thread_name: &str,
        create_tables: impl FnOnce(&WriteTransaction) -> Result<()>,
    ) -> Result<Committer> {
        let db = super::open_database(path).map_err(super::backend)?;
        let txn = db.begin_write().map_err(super::backend)?;
        create_tables(&txn)?;
        txn.commit().map_err(super::backend)?;
        Committer::start(db, path.to_owned(), thread_name).map_err(super::backend)
    }

    /// Runs `f` on the open database on tokio's blocking pool.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.database()?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(super::backend)?
    }

    /// The open database, for reads; `UNAVAILABLE` while it is being reopened.
    pub(crate) fn database(&self) -> Result<Arc<Database>> {
        self.inner.file.get()
    }

    /// Runs `f` in a write transaction of its own and returns its result once it is durable.
    /// An `Err` from `f` aborts only this transaction.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |db, durability| {
            let outcome = db.and_then(|db| run(db, durability, f));
            let engine_failed = matches!(outcome, Err(Error::Full(_) | Error::Backend(_)));
            let answer: Answer = Box::new(move |synced| {
                let answer = match (outcome, synced) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Ok(_), Err(e)) => Err(e),
                    (Err(e), _) => Err(e),
                };
                let _ = tx.send(answer);
            });
            (answer, engine_failed)
        });
        if !self.inner.writer.submit(job) {
            return Err(Error::Backend(
                "the store's writer thread has stopped".into(),
            ));
        }
        rx.await.map_err(|_| {
            Error::Backend("the store's writer thread stopped before answering".into())
        })?
    }
}

fn run<T>(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&WriteTransaction) -> Result<T>,
) -> Result<T> {
    let mut txn = db.begin_write().map_err(Error::redb)?;
    txn.set_durability(durability).map_err(Error::redb)?;
    let value = f(&txn)?;
    txn.commit().map_err(Error::redb)?;
    Ok(value)
}

/// The redb side of group commit: each write in a transaction of its own committed without
/// fsync, then one empty durable commit for the batch; after a failure the engine latched, the
/// file is closed and opened again.
struct RedbCommit {
    file: Arc<DbFile>,
}

impl CommitStep for RedbCommit {
    type Request = Job;

    fn commit(&mut self, batch: &mut Vec<Job>) -> Health {
        metrics::histogram!("perch_store_group_commit_writes").record(batch.len() as f64);
        match self.file.get() {
            Ok(db) => {
                // A failed write may have left redb refusing everything: an empty durable commit
                // tells (and costs an fsync only after a failure).
                if run_batch(batch, &db) && sync(&db).is_err() {
                    drop(db);
                    tracing::error!(file = %self.file.path.display(), "the store failed to write; closing and reopening it");
                    return Health::Broken;
                }
            }
            Err(e) => {
                for job in batch.drain(..) {
                    if let Some((answer, _)) = run_job(job, Err(e.clone()), Durability::None) {
                        answer(Err(e.clone()));
                    }
                }
            }
        }
        Health::Serving
    }

    /// Reopens the file; `Broken` while it still cannot be opened.
    fn recover(&mut self) -> Health {
        match self.file.reopen() {
            Ok(()) => Health::Serving,
            Err(e) => {
                tracing::warn!(file = %self.file.path.display(), error = %e, "the store could not be reopened yet; retrying");
                Health::Broken
            }
        }
    }
}

/// Runs and answers one batch; whether the storage engine failed any of it, so that redb
/// (which then refuses everything until the file is reopened) needs reopening.
fn run_batch(batch: &mut Vec<Job>, db: &Database) -> bool {
    if batch.len() == 1 {
        let job = batch.pop().expect("one job");
        return match run_job(job, Ok(db), Durability::Immediate) {
            Some((answer, engine_failed)) => {
                answer(Ok(()));
                engine_failed
            }
            None => false,
        };
    }
    let mut engine_failed = false;
    let answers: Vec<Answer> = batch
        .drain(..)
        .filter_map(|job| run_job(job, Ok(db), Durability::None))
        .map(|(answer, failed)| {
            engine_failed |= failed;
            answer
        })
        .collect();
    let synced = sync(db);
    if let Err(e) = &synced {
        tracing::error!(error = %e, "a group commit failed; its writes were not acknowledged");
    }
    for answer in answers {
        answer(synced.clone());
    }
    engine_failed || synced.is_err()
}

/// Runs one job. A panic inside it (a bug) aborts only its own transaction and drops its
/// answer, so its caller gets an error while the writer thread lives on for everyone else.
fn run_job(job: Job, db: Result<&Database>, durability: Durability) -> Option<(Answer, bool)> {
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
    let txn = db.begin_write().map_err(Error::redb)?;
    txn.commit().map_err(Error::redb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let committer =
            Committer::start(Database::create(&path).unwrap(), path, "test-commit").unwrap();
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
        let db = committer.database().unwrap();
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
            let committer = Committer::start(
                Database::create(&path).unwrap(),
                path.clone(),
                "test-commit",
            )
            .unwrap();
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
        }
        // Dropping the committer joined its thread and closed the file: it opens again.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        for i in 0..500u64 {
            let got = t.get(i).unwrap().map(|v| v.value());
            assert_eq!(got, (i % 7 != 0).then_some(i * 2), "key {i}");
        }
    }
}
