//! `MessageLog` on local disk: per stream, a directory of segment files, appended by one writer
//! thread that commits many appends with one `fdatasync` (group commit).
//!
//! Layout: `ROOT/<stream id, 16 hex digits>/<base seq, 20 digits>.seg`. A record is
//! `[u32 body length][u32 crc32 of body][body]`, little-endian; the body holds seq, publish
//! time, ordering key, attributes and data. The last segment of a stream is the active one and
//! is never deleted, so its name keeps the next sequence number even when everything older was
//! dropped by retention.
//!
//! Invariants: a record is visible to readers only after it is on disk; publish times never go
//! backwards within a stream.
//!
//! Recovery at start-up: only the active segment is ever cut. A torn tail left by a crash (the
//! first record whose length, CRC or sequence number does not check out, and everything after
//! it) is cut off there; that data was never acknowledged. Sealed segments are never modified:
//! a bad record in one is logged as an error with the range of sequence numbers it makes
//! unreadable, and readers skip from the last good record to the next segment, so subscriptions
//! move past the hole instead of stalling at it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, mpsc};
use std::thread;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use perch_core::Rejection;
use tokio::sync::{oneshot, watch};

use crate::log::{Appended, MessageLog, NewMessage, StoredMessage};
use crate::{Error, Result};

/// A segment is rolled once it holds this many bytes (a batch may overshoot it). Default of
/// `perch serve --log-segment-bytes`.
pub const SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest `--log-segment-bytes` accepted (smaller would mean a file per few messages).
pub const SEGMENT_MIN_BYTES: u64 = 4096;
/// Largest record body accepted when reading back (a 10 MB message plus attributes fits).
const RECORD_MAX_BYTES: u32 = 16 * 1024 * 1024;
/// One sparse index entry per this many records.
const INDEX_INTERVAL: u64 = 32;
/// Most append requests one group commit takes.
const GROUP_COMMIT_MAX_REQUESTS: usize = 4096;
/// Read-ahead chunk when scanning a segment.
const READ_CHUNK_BYTES: usize = 256 * 1024;
const HEADER_BYTES: u64 = 8;

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

fn no_stream(stream: u64) -> Error {
    Rejection::not_found(format!("message stream {stream:016x} does not exist")).into()
}

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    seq: u64,
    offset: u64,
    time_micros: i64,
}

#[derive(Debug)]
struct Segment {
    base_seq: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Committed bytes: everything before is on disk and readable.
    len: u64,
    count: u64,
    index: Vec<IndexEntry>,
    last_time_micros: i64,
}

impl Segment {
    fn end_seq(&self) -> u64 {
        self.base_seq + self.count
    }
}

#[derive(Debug)]
struct StreamState {
    segments: Vec<Segment>,
    next_seq: u64,
    last_time_micros: i64,
}

#[derive(Debug)]
struct Stream {
    dir: PathBuf,
    state: RwLock<StreamState>,
    watch: watch::Sender<u64>,
}

struct WriteRequest {
    stream: u64,
    messages: Vec<NewMessage>,
    reply: oneshot::Sender<Result<Vec<Appended>>>,
}

/// The embedded message log.
#[derive(Debug, Clone)]
pub struct SegmentLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    streams: RwLock<HashMap<u64, Arc<Stream>>>,
    /// `std::sync::mpsc::Sender` is `Sync`: publishers on every runtime worker send without a lock.
    writer: mpsc::Sender<WriteRequest>,
    segment_max_bytes: u64,
}

fn segment_name(base_seq: u64) -> String {
    format!("{base_seq:020}.seg")
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap_or_default()
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

fn encode_record(buf: &mut Vec<u8>, seq: u64, time_micros: i64, m: &NewMessage) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_BYTES as usize]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&time_micros.to_le_bytes());
    put_bytes(buf, m.ordering_key.as_bytes());
    buf.extend_from_slice(&(m.attributes.len() as u32).to_le_bytes());
    for (k, v) in &m.attributes {
        put_bytes(buf, k.as_bytes());
        put_bytes(buf, v.as_bytes());
    }
    put_bytes(buf, &m.data);
    let body_len = (buf.len() - start - HEADER_BYTES as usize) as u32;
    let crc = crc32fast::hash(&buf[start + HEADER_BYTES as usize..]);
    buf[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A cursor over a record body.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// Decodes seq and time only (for indexing).
fn decode_head(body: &[u8]) -> Option<(u64, i64)> {
    let mut b = Body(body);
    Some((b.u64()?, b.u64()? as i64))
}

fn decode_record(body: &[u8]) -> Option<StoredMessage> {
    let mut b = Body(body);
    let seq = b.u64()?;
    let time = b.u64()? as i64;
    let ordering_key = b.string()?;
    let n = b.u32()?;
    let mut attributes = BTreeMap::new();
    for _ in 0..n {
        let k = b.string()?;
        let v = b.string()?;
        attributes.insert(k, v);
    }
    let data = Bytes::copy_from_slice(b.bytes()?);
    Some(StoredMessage {
        seq,
        publish_time: from_micros(time),
        message: NewMessage {
            data,
            attributes,
            ordering_key,
        },
    })
}

/// Sequential reader over the committed part of a segment, with read-ahead.
struct SegmentReader<'a> {
    file: &'a File,
    end: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> SegmentReader<'a> {
    fn new(file: &'a File, start: u64, end: u64) -> SegmentReader<'a> {
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
    fn next(&mut self) -> Option<(u64, Vec<u8>)> {
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

fn open_segment_file(path: &Path) -> Result<File> {
    super::open_private_file(path).map_err(backend)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(backend)
}

/// Whether recovery may cut a segment's bad tail: only the active (last) segment's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegmentRole {
    Sealed,
    Active,
}

/// Scans a segment, building its index up to its first bad record. The active segment's bad
/// tail is cut off; a sealed segment is left untouched and reads stop at its last good record.
fn load_segment(path: &Path, base_seq: u64, role: SegmentRole) -> Result<Segment> {
    let file = open_segment_file(path)?;
    let size = file.metadata().map_err(backend)?.len();
    let mut reader = SegmentReader::new(&file, 0, size);
    let mut count = 0;
    let mut index = Vec::new();
    let mut last_time = i64::MIN;
    let mut valid_end = 0;
    while let Some((offset, body)) = reader.next() {
        let Some((seq, time)) = decode_head(&body) else {
            break;
        };
        if seq != base_seq + count {
            break;
        }
        if count % INDEX_INTERVAL == 0 {
            index.push(IndexEntry {
                seq,
                offset,
                time_micros: time,
            });
        }
        count += 1;
        last_time = time;
        valid_end = reader.pos;
    }
    if valid_end < size && role == SegmentRole::Active {
        tracing::warn!(segment = %path.display(), kept = valid_end, size, "cutting off a torn or corrupt tail of the active segment");
        file.set_len(valid_end).map_err(backend)?;
        file.sync_all().map_err(backend)?;
    }
    Ok(Segment {
        base_seq,
        path: path.to_owned(),
        file: Arc::new(file),
        len: valid_end,
        count,
        index,
        last_time_micros: last_time,
    })
}

fn load_stream(dir: &Path) -> Result<StreamState> {
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .map_err(backend)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    bases.sort_unstable();
    let mut segments = Vec::new();
    for (i, &base) in bases.iter().enumerate() {
        let role = if i + 1 == bases.len() {
            SegmentRole::Active
        } else {
            SegmentRole::Sealed
        };
        segments.push(load_segment(&dir.join(segment_name(base)), base, role)?);
    }
    for pair in segments.windows(2) {
        report_unreadable(&pair[0], pair[1].base_seq);
    }
    if segments.is_empty() {
        let path = dir.join(segment_name(1));
        segments.push(Segment {
            base_seq: 1,
            file: Arc::new(open_segment_file(&path)?),
            path,
            len: 0,
            count: 0,
            index: Vec::new(),
            last_time_micros: i64::MIN,
        });
        sync_dir(dir)?;
    }
    let last = segments
        .last()
        .map(|s| (s.end_seq(), s.last_time_micros))
        .unwrap_or((1, i64::MIN));
    let last_time = segments
        .iter()
        .map(|s| s.last_time_micros)
        .max()
        .unwrap_or(i64::MIN);
    Ok(StreamState {
        segments,
        next_seq: last.0,
        last_time_micros: last_time.max(last.1),
    })
}

/// Logs, loudly, the messages a sealed segment should hold (up to `next_base`) but cannot return.
fn report_unreadable(sealed: &Segment, next_base: u64) {
    if sealed.end_seq() >= next_base {
        return;
    }
    tracing::error!(
        segment = %sealed.path.display(),
        first_unreadable_seq = sealed.end_seq(),
        last_unreadable_seq = next_base - 1,
        readable_bytes = sealed.len,
        "a sealed log segment is corrupt: these messages cannot be read and are skipped; \
         the file is left as it is for inspection"
    );
}

impl SegmentLog {
    /// Opens (or creates) the log under `root`, recovering every stream, and starts the writer.
    pub fn open(root: &Path) -> Result<SegmentLog> {
        SegmentLog::open_with(root, SEGMENT_MAX_BYTES)
    }

    /// `open` with a custom segment size (tests use small ones to exercise rolling).
    pub fn open_with(root: &Path, segment_max_bytes: u64) -> Result<SegmentLog> {
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
            let (watch, _) = watch::channel(state.next_seq);
            streams.insert(
                id,
                Arc::new(Stream {
                    dir: entry.path(),
                    state: RwLock::new(state),
                    watch,
                }),
            );
        }
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            root: root.to_owned(),
            streams: RwLock::new(streams),
            writer: tx,
            segment_max_bytes,
        });
        let weak = Arc::downgrade(&inner);
        thread::Builder::new()
            .name("perch-log-writer".into())
            .spawn(move || writer_loop(weak, rx))
            .map_err(backend)?;
        Ok(SegmentLog { inner })
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

fn writer_loop(inner: std::sync::Weak<Inner>, rx: mpsc::Receiver<WriteRequest>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX_REQUESTS {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let mut by_stream: BTreeMap<u64, Vec<WriteRequest>> = BTreeMap::new();
        for r in batch {
            by_stream.entry(r.stream).or_default().push(r);
        }
        for (id, requests) in by_stream {
            let stream = inner.streams.read().ok().and_then(|s| s.get(&id).cloned());
            let Some(stream) = stream else {
                for r in requests {
                    let _ = r.reply.send(Err(no_stream(id)));
                }
                continue;
            };
            match write_batch(&inner, &stream, &requests) {
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
    }
}

/// Appends every request of one stream with one write and one fdatasync.
fn write_batch(
    inner: &Inner,
    stream: &Stream,
    requests: &[WriteRequest],
) -> Result<Vec<Vec<Appended>>> {
    // Roll first if the active segment is full; the new file is empty until committed below.
    let (file, offset, mut seq, mut last_time) = {
        let mut state = stream.state.write().map_err(backend)?;
        let needs_roll = state
            .segments
            .last()
            .is_none_or(|s| s.len >= inner.segment_max_bytes);
        if needs_roll {
            let base = state.next_seq;
            let path = stream.dir.join(segment_name(base));
            let file = open_segment_file(&path)?;
            sync_dir(&stream.dir)?;
            state.segments.push(Segment {
                base_seq: base,
                path,
                file: Arc::new(file),
                len: 0,
                count: 0,
                index: Vec::new(),
                last_time_micros: i64::MIN,
            });
        }
        let active = state
            .segments
            .last()
            .ok_or_else(|| backend("stream has no segment"))?;
        (
            active.file.clone(),
            active.len,
            state.next_seq,
            state.last_time_micros,
        )
    };
    let now = micros(Utc::now()).max(last_time);
    let mut buf = Vec::new();
    let mut results = Vec::with_capacity(requests.len());
    let mut new_index = Vec::new();
    let mut count_in_segment = {
        let state = stream.state.read().map_err(backend)?;
        state.segments.last().map(|s| s.count).unwrap_or(0)
    };
    for r in requests {
        let mut appended = Vec::with_capacity(r.messages.len());
        for m in &r.messages {
            let record_offset = offset + buf.len() as u64;
            if count_in_segment % INDEX_INTERVAL == 0 {
                new_index.push(IndexEntry {
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
    last_time = now;
    if let Err(e) = file
        .write_all_at(&buf, offset)
        .and_then(|()| file.sync_data())
    {
        // Nothing of this batch counts: cut whatever part of it reached the file (a shorter
        // file needs no space), so the next batch starts on a clean end, as recovery expects.
        let _ = file.set_len(offset);
        return Err(Error::io(&e));
    }
    {
        let mut state = stream.state.write().map_err(backend)?;
        let added = seq - state.next_seq;
        let active = state
            .segments
            .last_mut()
            .ok_or_else(|| backend("stream has no segment"))?;
        active.len += buf.len() as u64;
        active.count += added;
        active.index.extend(new_index);
        if added > 0 {
            active.last_time_micros = last_time;
        }
        state.next_seq = seq;
        state.last_time_micros = last_time;
    }
    stream.watch.send_replace(seq);
    Ok(results)
}

impl StreamState {
    /// The segment holding `seq`; when `seq` is unreadable (in the hole a corrupt sealed segment
    /// leaves), the next segment that holds messages, so reads skip the hole.
    fn segment_from(&self, seq: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.base_seq <= seq);
        if let Some(s) = i.checked_sub(1).and_then(|i| self.segments.get(i))
            && seq < s.end_seq()
        {
            return Some(s);
        }
        self.segments[i..].iter().find(|s| s.count > 0)
    }
}

fn read_from_segment(
    s: &Segment,
    from: u64,
    max: usize,
    max_bytes: usize,
    out: &mut Vec<StoredMessage>,
    bytes: &mut usize,
) {
    let i = s.index.partition_point(|e| e.seq <= from);
    let start = i.checked_sub(1).map(|i| s.index[i].offset).unwrap_or(0);
    let mut reader = SegmentReader::new(&s.file, start, s.len);
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
            let (watch, _) = watch::channel(state.next_seq);
            streams.insert(
                stream,
                Arc::new(Stream {
                    dir,
                    state: RwLock::new(state),
                    watch,
                }),
            );
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
        self.inner
            .writer
            .send(WriteRequest {
                stream,
                messages,
                reply,
            })
            .map_err(|_| backend("the log writer has stopped"))?;
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
            read_from_segment(segment, from, max, max_bytes, &mut out, &mut bytes);
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
        let i = segment.index.partition_point(|e| e.time_micros < t);
        let start = i
            .checked_sub(1)
            .map(|i| segment.index[i].offset)
            .unwrap_or(0);
        let mut reader = SegmentReader::new(&segment.file, start, segment.len);
        while let Some((_, body)) = reader.next() {
            if let Some((seq, time)) = decode_head(&body)
                && time >= t
            {
                return Ok(seq);
            }
        }
        Ok(segment.end_seq())
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
    use std::fs::OpenOptions;

    use super::*;

    fn msg(i: usize) -> NewMessage {
        NewMessage {
            data: Bytes::from(format!("payload-{i}")),
            attributes: BTreeMap::from([("i".to_owned(), i.to_string())]),
            ordering_key: if i.is_multiple_of(2) {
                "even".into()
            } else {
                String::new()
            },
        }
    }

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
    async fn a_torn_tail_is_cut_off_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SegmentLog::open(dir.path()).unwrap();
            log.create_stream(1).await.unwrap();
            log.append(1, (0..10).map(msg).collect()).await.unwrap();
        }
        let seg = dir.path().join(format!("{:016x}", 1)).join(segment_name(1));
        let len = fs::metadata(&seg).unwrap().len();
        // A crash mid-write: half a record of garbage after the last good one.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0x20, 0, 0, 0, 1, 2, 3, 4, 5, 6], len)
            .unwrap();
        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(log.next_seq(1).unwrap(), 11);
        assert_eq!(fs::metadata(&seg).unwrap().len(), len);
        assert_eq!(log.append(1, vec![msg(10)]).await.unwrap()[0].seq, 11);
        assert_eq!(log.read(1, 1, 100, usize::MAX).unwrap().len(), 11);
    }

    /// A stream's segment files, oldest first.
    fn segment_files(root: &Path, stream: u64) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(root.join(format!("{stream:016x}")))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    /// Where each record of a segment file starts.
    fn record_offsets(path: &Path) -> Vec<u64> {
        let bytes = fs::read(path).unwrap();
        let mut offsets = Vec::new();
        let mut at = 0usize;
        while at + 8 <= bytes.len() {
            offsets.push(at as u64);
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            at += 8 + len;
        }
        offsets
    }

    /// Flips one byte inside the body of the `index`-th record of a segment file.
    fn corrupt_record(path: &Path, index: usize) {
        let at = record_offsets(path)[index] + HEADER_BYTES + 4;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 0xff], at).unwrap();
    }

    fn base_of(path: &Path) -> u64 {
        path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
    }

    /// Appends one message at a time until the stream has `segments` segment files and the
    /// active one holds `in_active` messages.
    async fn fill(log: &SegmentLog, root: &Path, segments: usize, in_active: usize) -> u64 {
        let mut i = 0;
        while segment_files(root, 1).len() < segments {
            log.append(1, vec![msg(i)]).await.unwrap();
            i += 1;
        }
        for _ in 1..in_active {
            log.append(1, vec![msg(i)]).await.unwrap();
            i += 1;
        }
        assert_eq!(segment_files(root, 1).len(), segments);
        i as u64
    }

    #[tokio::test]
    async fn a_corrupt_sealed_segment_is_kept_and_reads_skip_its_unreadable_range() {
        let dir = tempfile::tempdir().unwrap();
        let total = {
            let log = SegmentLog::open_with(dir.path(), 1024).unwrap();
            log.create_stream(1).await.unwrap();
            fill(&log, dir.path(), 3, 3).await
        };
        let files = segment_files(dir.path(), 1);
        let (sealed, next_base) = (&files[0], base_of(&files[1]));
        let size = fs::metadata(sealed).unwrap().len();
        corrupt_record(sealed, 5); // seq 6: seqs 6 .. next_base - 1 become unreadable

        let log = SegmentLog::open_with(dir.path(), 1024).unwrap();
        assert_eq!(
            fs::metadata(sealed).unwrap().len(),
            size,
            "sealed segments are never cut"
        );
        assert_eq!(log.next_seq(1).unwrap(), total + 1);
        let seqs: Vec<u64> = log
            .read(1, 1, 1000, usize::MAX)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        let expected: Vec<u64> = (1..=5).chain(next_base..=total).collect();
        assert_eq!(seqs, expected);
        // A reader standing in the hole moves on to the next readable message.
        assert_eq!(log.read(1, 7, 1, usize::MAX).unwrap()[0].seq, next_base);
        assert_eq!(log.read_one(1, 6).unwrap(), None);
        assert_eq!(
            log.read_one(1, next_base).unwrap().unwrap().message,
            msg(next_base as usize - 1)
        );
        assert_eq!(log.append(1, vec![msg(0)]).await.unwrap()[0].seq, total + 1);
    }

    #[tokio::test]
    async fn a_corrupt_record_in_the_active_segment_cuts_it_there_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SegmentLog::open_with(dir.path(), 1024).unwrap();
            log.create_stream(1).await.unwrap();
            fill(&log, dir.path(), 3, 5).await;
        }
        let files = segment_files(dir.path(), 1);
        let sizes: Vec<u64> = files
            .iter()
            .map(|f| fs::metadata(f).unwrap().len())
            .collect();
        let active = &files[2];
        let cut_at = record_offsets(active)[2];
        corrupt_record(active, 2);

        let log = SegmentLog::open_with(dir.path(), 1024).unwrap();
        let base = base_of(active);
        assert_eq!(log.next_seq(1).unwrap(), base + 2);
        assert_eq!(fs::metadata(active).unwrap().len(), cut_at);
        for (f, size) in files.iter().zip(&sizes).take(2) {
            assert_eq!(
                fs::metadata(f).unwrap().len(),
                *size,
                "sealed segments are never cut"
            );
        }
        assert_eq!(
            log.read(1, 1, 1000, usize::MAX).unwrap().len() as u64,
            base + 1
        );
        assert_eq!(log.append(1, vec![msg(0)]).await.unwrap()[0].seq, base + 2);
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
