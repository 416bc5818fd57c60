//! The on-disk record of the message log: `[u32 body length][u32 crc32 of body][body]`,
//! little-endian, where the body holds seq, publish time (µs since the epoch), ordering key,
//! attributes and data, each variable part prefixed by its u32 length.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::log::{NewMessage, StoredMessage};

/// Largest record body accepted when reading back (a 10 MB message plus attributes fits).
pub(super) const RECORD_MAX_BYTES: u32 = 16 * 1024 * 1024;
/// Length and CRC in front of every body.
pub(super) const HEADER_BYTES: u64 = 8;

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn from_micros(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap_or_default()
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

/// Appends the record of `m` (with its header) to `buf`.
pub(super) fn encode_record(buf: &mut Vec<u8>, seq: u64, time_micros: i64, m: &NewMessage) {
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
pub(super) fn decode_head(body: &[u8]) -> Option<(u64, i64)> {
    let mut b = Body(body);
    Some((b.u64()?, b.u64()? as i64))
}

/// Decodes a whole body; `None` if it does not parse.
pub(super) fn decode_record(body: &[u8]) -> Option<StoredMessage> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> NewMessage {
        NewMessage {
            data: Bytes::from_static(b"\x00payload\xff"),
            attributes: BTreeMap::from([
                ("deviceId".to_owned(), "d1".to_owned()),
                ("subFolder".to_owned(), String::new()),
            ]),
            ordering_key: "k".into(),
        }
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded_and_its_header_checks_out() {
        let mut buf = vec![0xaa]; // records are appended after whatever the buffer holds
        encode_record(&mut buf, 42, 1_700_000_000_123_456, &message());
        let record = &buf[1..];
        let len = u32::from_le_bytes(record[0..4].try_into().unwrap());
        let crc = u32::from_le_bytes(record[4..8].try_into().unwrap());
        let body = &record[HEADER_BYTES as usize..];
        assert_eq!(len as usize, body.len());
        assert_eq!(crc, crc32fast::hash(body));
        assert_eq!(decode_head(body), Some((42, 1_700_000_000_123_456)));
        let stored = decode_record(body).unwrap();
        assert_eq!(stored.seq, 42);
        assert_eq!(micros(stored.publish_time), 1_700_000_000_123_456);
        assert_eq!(stored.message, message());
    }

    #[test]
    fn a_truncated_body_does_not_decode() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 0, &message());
        let body = &buf[HEADER_BYTES as usize..];
        for cut in [0, 7, 15, body.len() - 1] {
            assert!(decode_record(&body[..cut]).is_none(), "cut at {cut}");
        }
        assert!(decode_head(&body[..15]).is_none());
    }
}
