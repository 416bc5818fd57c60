//! What a stream holds in memory — its segments, each with its file, committed length and
//! sparse index — and reading records back from a segment's committed part.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::backend;
use super::record::{HEADER_BYTES, RECORD_MAX_BYTES, decode_head, decode_record};
use crate::Result;
use crate::log::StoredMessage;

/// One sparse index entry per this many records.
pub(super) const INDEX_INTERVAL: u64 = 32;
/// Read-ahead chunk when scanning a segment.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Where a record starts, for seeking by sequence number or time.
#[derive(Debug, Clone, Copy)]
pub(super) struct IndexEntry {
    pub(super) seq: u64,
    pub(super) offset: u64,
    pub(super) time_micros: i64,
}

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) base_seq: u64,
    pub(super) path: PathBuf,
    pub(super) file: Arc<File>,
    /// Committed bytes: everything before is on disk and readable.
    pub(super) len: u64,
    pub(super) count: u64,
    pub(super) index: Vec<IndexEntry>,
    pub(super) last_time_micros: i64,
}

/// A stream's segments, oldest first; the last is the active one.
#[derive(Debug)]
pub(super) struct StreamState {
    pub(super) segments: Vec<Segment>,
    pub(super) next_seq: u64,
    pub(super) last_time_micros: i64,
}

#[derive(Debug)]
pub(super) struct Stream {
    pub(super) dir: PathBuf,
    pub(super) state: RwLock<StreamState>,
    /// The next sequence number, announced after every commit.
    pub(super) watch: watch::Sender<u64>,
}

impl Stream {
    pub(super) fn new(dir: PathBuf, state: StreamState) -> Stream {
        let (watch, _) = watch::channel(state.next_seq);
        Stream {
            dir,
            state: RwLock::new(state),
            watch,
        }
    }
}

pub(super) fn segment_name(base_seq: u64) -> String {
    format!("{base_seq:020}.seg")
}

pub(super) fn open_segment_file(path: &Path) -> Result<File> {
    super::super::open_private_file(path).map_err(backend)
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(backend)
}

impl Segment {
    /// Creates the empty segment file of `base_seq` in `dir` and makes its name durable.
    pub(super) fn create(dir: &Path, base_seq: u64) -> Result<Segment> {
        let path = dir.join(segment_name(base_seq));
        let file = open_segment_file(&path)?;
        sync_dir(dir)?;
        Ok(Segment {
            base_seq,
            path,
            file: Arc::new(file),
            len: 0,
            count: 0,
            index: Vec::new(),
            last_time_micros: i64::MIN,
        })
    }

    pub(super) fn end_seq(&self) -> u64 {
        self.base_seq + self.count
    }

    /// Appends the messages from `from` on to `out` until `out` holds `max` or `bytes` reaches
    /// `max_bytes`, or the segment ends.
    pub(super) fn read_into(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
        out: &mut Vec<StoredMessage>,
        bytes: &mut usize,
    ) {
        let i = self.index.partition_point(|e| e.seq <= from);
        let start = i.checked_sub(1).map(|i| self.index[i].offset).unwrap_or(0);
        let mut reader = SegmentReader::new(&self.file, start, self.len);
        while let Some((_, body)) = reader.next() {
            let Some(m) = decode_record(&body) else { break };
            if m.seq < from {
                continue;
            }
            *bytes += m.message.size();
            out.push(m);
            if out.len() >= max || *bytes >= max_bytes {
                break;
            }
        }
    }

    /// The first sequence number published at or after `t` (µs), if this segment holds one.
    pub(super) fn seq_at_time(&self, t: i64) -> Option<u64> {
        let i = self.index.partition_point(|e| e.time_micros < t);
        let start = i.checked_sub(1).map(|i| self.index[i].offset).unwrap_or(0);
        let mut reader = SegmentReader::new(&self.file, start, self.len);
        while let Some((_, body)) = reader.next() {
            if let Some((seq, time)) = decode_head(&body)
                && time >= t
            {
                return Some(seq);
            }
        }
        None
    }
}

impl StreamState {
    /// The segment holding `seq`; when `seq` is unreadable (in the hole a corrupt sealed segment
    /// leaves), the next segment that holds messages, so reads skip the hole.
    pub(super) fn segment_from(&self, seq: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.base_seq <= seq);
        if let Some(s) = i.checked_sub(1).and_then(|i| self.segments.get(i))
            && seq < s.end_seq()
        {
            return Some(s);
        }
        self.segments[i..].iter().find(|s| s.count > 0)
    }
}

/// Sequential reader over the committed part of a segment, with read-ahead.
pub(super) struct SegmentReader<'a> {
    file: &'a File,
    end: u64,
    pub(super) pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> SegmentReader<'a> {
    pub(super) fn new(file: &'a File, start: u64, end: u64) -> SegmentReader<'a> {
        SegmentReader {
            file,
            end,
            pos: start,
            buf: Vec::new(),
            buf_start: start,
        }
    }

    /// Ensures `[pos, pos + n)` is buffered; false if it lies beyond the end or cannot be read.
    fn fill(&mut self, n: u64) -> bool {
        if self.pos + n > self.end {
            return false;
        }
        let have_end = self.buf_start + self.buf.len() as u64;
        if self.pos >= self.buf_start && self.pos + n <= have_end {
            return true;
        }
        let want = (n as usize)
            .max(READ_CHUNK_BYTES)
            .min((self.end - self.pos) as usize);
        self.buf.resize(want, 0);
        self.buf_start = self.pos;
        self.file.read_exact_at(&mut self.buf, self.pos).is_ok()
    }

    fn slice(&self, n: u64) -> &[u8] {
        let at = (self.pos - self.buf_start) as usize;
        &self.buf[at..at + n as usize]
    }

    /// The next record's body and its offset; `None` at the end or at a bad record.
    pub(super) fn next(&mut self) -> Option<(u64, Vec<u8>)> {
        let offset = self.pos;
        if !self.fill(HEADER_BYTES) {
            return None;
        }
        let header = self.slice(HEADER_BYTES);
        let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
        let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
        if len > RECORD_MAX_BYTES {
            return None;
        }
        self.pos += HEADER_BYTES;
        if !self.fill(len as u64) {
            self.pos = offset;
            return None;
        }
        let body = self.slice(len as u64).to_vec();
        if crc32fast::hash(&body) != crc {
            self.pos = offset;
            return None;
        }
        self.pos += len as u64;
        Some((offset, body))
    }
}
