//! `MessageLog` on local disk: per stream, a directory of segment files, appended by one writer
//! thread that commits many appends with one `fdatasync` (group commit).
//!
//! Layout: `ROOT/<stream id, 16 hex digits>/<base seq, 20 digits>.seg`, each a sequence of
//! records (`record`). The last segment of a stream is the active one and is never deleted, so
//! its name keeps the next sequence number even when everything older was dropped by retention.
//!
//! Invariants: a record is visible to readers only after it is on disk; publish times never go
//! backwards within a stream.
//!
//! - `record`: the on-disk record format.
//! - `segment`: segments and streams in memory, and reading a segment back.
//! - `recovery`: loading streams at start-up (cutting only the active segment's torn tail).
//! - `writer`: appending, as the log's group-commit step.
//! - this module: the `SegmentLog` handle, its streams, and the `MessageLog` contract.

mod record;
mod recovery;
mod segment;
#[cfg(test)]
mod testing;
mod writer;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use perch_core::Rejection;
use perch_core::clock::{Clock, SystemClock};
use tokio::sync::{oneshot, watch};

use self::record::micros;
use self::recovery::load_stream;
use self::segment::{Segment, Stream, sync_dir};
use self::writer::{GROUP_COMMIT_MAX_REQUESTS, LogCommit, WriteRequest};
use super::backend;
use super::group_commit::{Batching, GroupCommit};
use crate::log::{Appended, MessageLog, NewMessage, StoredMessage};
use crate::{Error, Result};

/// A segment is rolled once it holds this many bytes (a batch may overshoot it). Default of
/// `perch serve --log-segment-bytes`.
pub const SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest `--log-segment-bytes` accepted (smaller would mean a file per few messages).
pub const SEGMENT_MIN_BYTES: u64 = 4096;

fn no_stream(stream: u64) -> Error {
    Rejection::not_found(format!("message stream {stream:016x} does not exist")).into()
}

/// The embedded message log.
#[derive(Debug, Clone)]
pub struct SegmentLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    streams: Arc<RwLock<HashMap<u64, Arc<Stream>>>>,
    /// Dropped with the last handle: the writer finishes what was queued, then stops.
    writer: GroupCommit<WriteRequest>,
}

impl SegmentLog {
    /// Opens (or creates) the log under `root`, recovering every stream, and starts the writer.
    pub fn open(root: &Path) -> Result<SegmentLog> {
        SegmentLog::open_with(root, SEGMENT_MAX_BYTES)
    }

    /// `open` with a custom segment size (tests use small ones to exercise rolling).
    pub fn open_with(root: &Path, segment_max_bytes: u64) -> Result<SegmentLog> {
        SegmentLog::open_with_clock(root, segment_max_bytes, Arc::new(SystemClock))
    }

    /// `open_with`, stamping publish times from `clock` (they still never go backwards within a
    /// stream, whatever the clock does).
    pub fn open_with_clock(
        root: &Path,
        segment_max_bytes: u64,
        clock: Arc<dyn Clock>,
    ) -> Result<SegmentLog> {
        super::create_private_dir_all(root).map_err(backend)?;
        let mut streams = HashMap::new();
        for entry in fs::read_dir(root).map_err(backend)? {
            let entry = entry.map_err(backend)?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            let state = load_stream(&entry.path())?;
            streams.insert(id, Arc::new(Stream::new(entry.path(), state)));
        }
        let streams = Arc::new(RwLock::new(streams));
        let step = LogCommit {
            streams: streams.clone(),
            segment_max_bytes,
            clock,
        };
        let batching = Batching {
            max: GROUP_COMMIT_MAX_REQUESTS,
            // Unused: a failed append cuts its own bytes off again, so the log never needs
            // recovering.
            retry: Duration::from_secs(1),
        };
        let writer = GroupCommit::start(step, batching, "perch-log-writer").map_err(backend)?;
        Ok(SegmentLog {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                streams,
                writer,
            }),
        })
    }

    fn stream(&self, id: u64) -> Result<Arc<Stream>> {
        self.inner
            .streams
            .read()
            .map_err(backend)?
            .get(&id)
            .cloned()
            .ok_or_else(|| no_stream(id))
    }
}

#[async_trait::async_trait]
impl MessageLog for SegmentLog {
    async fn create_stream(&self, stream: u64) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut streams = inner.streams.write().map_err(backend)?;
            if streams.contains_key(&stream) {
                return Ok(());
            }
            let dir = inner.root.join(format!("{stream:016x}"));
            super::create_private_dir_all(&dir).map_err(backend)?;
            sync_dir(&inner.root)?;
            let state = load_stream(&dir)?;
            streams.insert(stream, Arc::new(Stream::new(dir, state)));
            Ok(())
        })
        .await
        .map_err(backend)?
    }

    async fn delete_stream(&self, stream: u64) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let removed = inner.streams.write().map_err(backend)?.remove(&stream);
            if let Some(s) = removed {
                fs::remove_dir_all(&s.dir).map_err(backend)?;
                sync_dir(&inner.root)?;
            }
            Ok(())
        })
        .await
        .map_err(backend)?
    }

    async fn append(&self, stream: u64, messages: Vec<NewMessage>) -> Result<Vec<Appended>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        let request = WriteRequest {
            stream,
            messages,
            reply,
        };
        if !self.inner.writer.submit(request) {
            return Err(backend("the log writer has stopped"));
        }
        rx.await
            .map_err(|_| backend("the log writer dropped the request"))?
    }

    fn read(
        &self,
        stream: u64,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>> {
        let stream = self.stream(stream)?;
        let state = stream.state.read().map_err(backend)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut from = from.max(state.segments.first().map(|s| s.base_seq).unwrap_or(1));
        while out.len() < max && bytes < max_bytes && from < state.next_seq {
            let Some(segment) = state.segment_from(from) else {
                break;
            };
            from = from.max(segment.base_seq);
            let before = out.len();
            segment.read_into(from, max, max_bytes, &mut out, &mut bytes);
            if out.len() == before {
                break;
            }
            from = out.last().map(|m| m.seq + 1).unwrap_or(from);
        }
        Ok(out)
    }

    fn read_one(&self, stream: u64, seq: u64) -> Result<Option<StoredMessage>> {
        Ok(self
            .read(stream, seq, 1, usize::MAX)?
            .into_iter()
            .next()
            .filter(|m| m.seq == seq))
    }

    fn next_seq(&self, stream: u64) -> Result<u64> {
        Ok(self.stream(stream)?.state.read().map_err(backend)?.next_seq)
    }

    fn first_seq(&self, stream: u64) -> Result<u64> {
        let s = self.stream(stream)?;
        let state = s.state.read().map_err(backend)?;
        Ok(state
            .segments
            .iter()
            .find(|s| s.count > 0)
            .map(|s| s.base_seq)
            .unwrap_or(state.next_seq))
    }

    fn seq_at_time(&self, stream: u64, time: DateTime<Utc>) -> Result<u64> {
        let t = micros(time);
        let s = self.stream(stream)?;
        let state = s.state.read().map_err(backend)?;
        // Times never decrease, so the first segment whose last time reaches `t` holds the answer.
        let Some(segment) = state
            .segments
            .iter()
            .find(|s| s.count > 0 && s.last_time_micros >= t)
        else {
            return Ok(state.next_seq);
        };
        Ok(segment.seq_at_time(t).unwrap_or(segment.end_seq()))
    }

    fn watch(&self, stream: u64) -> Result<watch::Receiver<u64>> {
        Ok(self.stream(stream)?.watch.subscribe())
    }

    async fn truncate_before(&self, stream: u64, before: u64) -> Result<()> {
        let s = self.stream(stream)?;
        tokio::task::spawn_blocking(move || {
            let doomed: Vec<Segment> = {
                let mut state = s.state.write().map_err(backend)?;
                let keep_from = state
                    .segments
                    .iter()
                    .position(|seg| seg.end_seq() > before)
                    .unwrap_or(state.segments.len() - 1)
                    .min(state.segments.len() - 1);
                state.segments.drain(..keep_from).collect()
            };
            for segment in doomed {
                fs::remove_file(&segment.path).map_err(backend)?;
            }
            Ok(())
        })
        .await
        .map_err(backend)?
    }

    fn streams(&self) -> Vec<u64> {
        self.inner
            .streams
            .read()
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::msg;
    use super::*;

    #[tokio::test]
    async fn appends_are_read_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SegmentLog::open_with(dir.path(), 1024).unwrap();
            log.create_stream(7).await.unwrap();
            let mut seqs = Vec::new();
            for chunk in (0..200).collect::<Vec<_>>().chunks(17) {
                let appended = log
                    .append(7, chunk.iter().map(|&i| msg(i)).collect())
                    .await
                    .unwrap();
                seqs.extend(appended.iter().map(|a| a.seq));
            }
            assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
            let all = log.read(7, 1, 1000, usize::MAX).unwrap();
            assert_eq!(all.len(), 200);
            assert_eq!(all[150].message, msg(150));
        }
        let log = SegmentLog::open_with(dir.path(), 1024).unwrap();
        assert_eq!(log.next_seq(7).unwrap(), 201);
        assert_eq!(log.read_one(7, 123).unwrap().unwrap().message, msg(122));
        let page = log.read(7, 190, 5, usize::MAX).unwrap();
        assert_eq!(
            page.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![190, 191, 192, 193, 194]
        );
        let appended = log.append(7, vec![msg(999)]).await.unwrap();
        assert_eq!(appended[0].seq, 201);
    }

    #[tokio::test]
    async fn truncation_drops_whole_old_segments_and_keeps_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open_with(dir.path(), 512).unwrap();
        log.create_stream(3).await.unwrap();
        for i in 0..100 {
            log.append(3, vec![msg(i)]).await.unwrap();
        }
        log.truncate_before(3, 60).await.unwrap();
        let first = log.first_seq(3).unwrap();
        assert!(first > 1 && first <= 60, "first retained {first}");
        assert_eq!(log.read(3, 1, 1, usize::MAX).unwrap()[0].seq, first);
        log.truncate_before(3, u64::MAX).await.unwrap();
        assert_eq!(log.next_seq(3).unwrap(), 101);
        drop(log);
        let log = SegmentLog::open_with(dir.path(), 512).unwrap();
        assert_eq!(log.next_seq(3).unwrap(), 101);
    }

    #[tokio::test]
    async fn seq_at_time_finds_the_first_message_at_or_after() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path()).unwrap();
        log.create_stream(1).await.unwrap();
        let a = log.append(1, vec![msg(0), msg(1)]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let b = log.append(1, vec![msg(2)]).await.unwrap();
        assert_eq!(log.seq_at_time(1, a[0].publish_time).unwrap(), 1);
        assert_eq!(log.seq_at_time(1, b[0].publish_time).unwrap(), 3);
        assert_eq!(
            log.seq_at_time(1, b[0].publish_time + chrono::Duration::seconds(1))
                .unwrap(),
            4
        );
    }
}
