//! Recovery at start-up: scans a stream's segment files, rebuilding each one's index up to its
//! first bad record (a length, CRC or sequence number that does not check out).
//!
//! Only the active segment is ever cut: a torn tail left by a crash was never acknowledged.
//! Sealed segments are never modified: a bad record in one is logged as an error with the range
//! of sequence numbers it makes unreadable, and readers skip from its last good record to the
//! next segment.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::backend;
use super::record::decode_head;
use super::segment::{
    INDEX_INTERVAL, IndexEntry, Segment, SegmentReader, StreamState, open_segment_file,
    segment_name,
};
use crate::Result;

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

/// Loads the stream in `dir`, creating its first segment if it has none.
pub(super) fn load_stream(dir: &Path) -> Result<StreamState> {
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
        segments.push(Segment::create(dir, 1)?);
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

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};

    use super::super::record::HEADER_BYTES;
    use super::super::segment::segment_name;
    use super::super::testing::msg;
    use crate::embedded::SegmentLog;
    use crate::log::MessageLog;

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
}
