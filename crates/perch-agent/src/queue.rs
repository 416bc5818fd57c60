//! The on-disk queue of readings not yet PUBACKed, one file per reading.
//!
//! `QUEUE_DIR/<seq, 20 digits>.json` holds the exact bytes to publish. A reading is written to
//! a `.tmp` file, fsynced, renamed into place and the directory fsynced before it counts as
//! queued, so `kill -9` or a power cut loses nothing that was queued. It is deleted only after
//! its PUBACK; a deletion lost in a crash means the reading is sent again (the bridge may see
//! it twice, and `seq` identifies it). `QUEUE_DIR/seq` keeps the last sequence number handed
//! out, so numbers keep rising across restarts even after the queue drained.
//!
//! Bounded: beyond `max_readings` the oldest readings are deleted and counted in `dropped`.
//! Blocking I/O: call from a blocking thread.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const READING_SUFFIX: &str = ".json";
const SEQ_FILE: &str = "seq";

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Queue {
    dir: PathBuf,
    max_readings: usize,
    /// Sequence numbers on disk, oldest first.
    seqs: VecDeque<u64>,
    last_seq: u64,
    dropped: u64,
}

impl Queue {
    /// Opens (creating) the queue in `dir`, removing leftover temporary files.
    pub(crate) fn open(dir: &Path, max_readings: usize) -> io::Result<Queue> {
        fs::create_dir_all(dir)?;
        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            } else if let Some(seq) = name
                .strip_suffix(READING_SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let stored_seq = fs::read_to_string(dir.join(SEQ_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let last_seq = stored_seq.max(seqs.last().copied().unwrap_or(0));
        let mut queue = Queue {
            dir: dir.to_path_buf(),
            max_readings: max_readings.max(1),
            seqs: seqs.into(),
            last_seq,
            dropped: 0,
        };
        queue.trim()?;
        Ok(queue)
    }

    /// Readings waiting.
    pub(crate) fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Readings deleted unsent because the queue was full, since this process started.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Durably appends the reading that `make(seq)` renders for the next sequence number.
    /// Returns the sequence number and how many old readings were dropped to make room.
    pub(crate) fn push(&mut self, make: impl FnOnce(u64) -> Vec<u8>) -> io::Result<(u64, u64)> {
        let seq = self.last_seq + 1;
        write_file(&self.dir.join(SEQ_FILE), seq.to_string().as_bytes())?;
        write_file(&self.reading_path(seq), &make(seq))?;
        sync_dir(&self.dir)?;
        self.last_seq = seq;
        self.seqs.push_back(seq);
        let before = self.dropped;
        self.trim()?;
        Ok((seq, self.dropped - before))
    }

    /// Up to `n` of the oldest readings, oldest first.
    pub(crate) fn peek(&self, n: usize) -> io::Result<Vec<(u64, Vec<u8>)>> {
        self.seqs
            .iter()
            .take(n)
            .map(|&seq| fs::read(self.reading_path(seq)).map(|bytes| (seq, bytes)))
            .collect()
    }

    /// Deletes reading `seq` (after its PUBACK).
    pub(crate) fn remove(&mut self, seq: u64) -> io::Result<()> {
        if let Some(at) = self.seqs.iter().position(|&s| s == seq) {
            self.seqs.remove(at);
            match fs::remove_file(self.reading_path(seq)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    fn trim(&mut self) -> io::Result<()> {
        while self.seqs.len() > self.max_readings {
            if let Some(oldest) = self.seqs.pop_front() {
                match fs::remove_file(self.reading_path(oldest)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                self.dropped += 1;
            }
        }
        Ok(())
    }

    fn reading_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{READING_SUFFIX}"))
    }
}

/// Writes `path` atomically and durably (tmp file, fsync, rename; the caller fsyncs the dir).
fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(seq: u64) -> Vec<u8> {
        format!("reading {seq}").into_bytes()
    }

    #[test]
    fn readings_come_back_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), 10).unwrap();
        for _ in 0..3 {
            q.push(body).unwrap();
        }
        q.remove(1).unwrap();
        drop(q);
        std::fs::write(dir.path().join("00000000000000000009.json.tmp"), "torn").unwrap();
        let mut q = Queue::open(dir.path(), 10).unwrap();
        assert_eq!(q.peek(10).unwrap(), vec![(2, body(2)), (3, body(3))]);
        assert!(!dir.path().join("00000000000000000009.json.tmp").exists());
        assert_eq!(q.push(body).unwrap(), (4, 0));
    }

    #[test]
    fn sequence_numbers_keep_rising_after_the_queue_drained() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), 10).unwrap();
        let (seq, _) = q.push(body).unwrap();
        q.remove(seq).unwrap();
        assert_eq!(q.len(), 0);
        drop(q);
        let mut q = Queue::open(dir.path(), 10).unwrap();
        assert_eq!(q.push(body).unwrap().0, 2);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), 3).unwrap();
        for _ in 0..3 {
            q.push(body).unwrap();
        }
        assert_eq!(q.push(body).unwrap(), (4, 1));
        assert_eq!(q.push(body).unwrap(), (5, 1));
        assert_eq!(q.dropped(), 2);
        assert_eq!(
            q.peek(10).unwrap().iter().map(|r| r.0).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        drop(q);
        // A smaller bound on restart trims at once.
        let q = Queue::open(dir.path(), 1).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q.dropped(), 2);
    }
}
