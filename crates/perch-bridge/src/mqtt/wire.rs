//! The socket of one MQTT connection: buffered reads decoded into packets, and queued writes
//! with a deadline.
//!
//! Invariants: a session never awaits a socket write. Its packets are queued (`Wire::queue`), at
//! most `BridgeOptions::outbound_queue_max_bytes` of them, and `Wire::pump` writes them while the
//! connection waits for input; output that makes no progress for `BridgeOptions::write_timeout`
//! is a deadline of the session. So a device that stops reading can neither block its session
//! (revocations, commands) nor grow server memory.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::mqtt::close::CloseReason;
use crate::mqtt::codec::{self, Packet};

/// Bytes read from the socket per call.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// An emptied outbound buffer bigger than this is released rather than kept for reuse.
const OUTBOUND_KEEP_BYTES: usize = 64 * 1024;
/// When a session ends, output it queued (a PUBACK, a SUBACK) gets this long to reach a device
/// that reads; a stuck one is not waited for longer.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// The socket half of a connection: buffered reads, and queued writes with a deadline.
pub(crate) struct Wire<S> {
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    inbound: BytesMut,
    /// Encoded packets not yet accepted by the socket.
    outbound: BytesMut,
    /// Bytes were handed to the socket but not flushed yet (TLS buffers them).
    unflushed: bool,
    /// Bytes ever queued and ever written: a packet queued to end at offset N is written once
    /// `written >= N`.
    queued: u64,
    written: u64,
    /// While output waits: when the socket last accepted some of it.
    progress_at: Option<Instant>,
    pub(crate) max_packet_bytes: usize,
    outbound_max_bytes: usize,
    write_timeout: Duration,
}

pub(crate) enum Read {
    Packet(Packet),
    Eof,
    Invalid(codec::DecodeError),
}

/// What `Wire::pump` did.
pub(crate) enum Pumped {
    /// Read this many bytes (0: the peer closed).
    Read(usize),
    /// Wrote queued output (`Wire::written` moved on).
    Wrote,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub(crate) fn new(
        stream: S,
        max_packet_bytes: usize,
        outbound_max_bytes: usize,
        write_timeout: Duration,
    ) -> Wire<S> {
        let (reader, writer) = tokio::io::split(stream);
        Wire {
            reader,
            writer,
            inbound: BytesMut::with_capacity(READ_CHUNK_BYTES),
            outbound: BytesMut::with_capacity(1024),
            unflushed: false,
            queued: 0,
            written: 0,
            progress_at: None,
            max_packet_bytes,
            outbound_max_bytes,
            write_timeout,
        }
    }

    /// The next complete packet already buffered, if any.
    pub(crate) fn buffered(&mut self) -> Option<Read> {
        match codec::decode(&mut self.inbound, self.max_packet_bytes) {
            Ok(Some(p)) => Some(Read::Packet(p)),
            Ok(None) => None,
            Err(e) => Some(Read::Invalid(e)),
        }
    }

    /// Reads more bytes; cancel-safe (bytes land in `inbound` only when a read completes).
    pub(crate) async fn fill(&mut self) -> std::io::Result<usize> {
        self.inbound.reserve(READ_CHUNK_BYTES);
        self.reader.read_buf(&mut self.inbound).await
    }

    pub(crate) async fn read(&mut self) -> Read {
        loop {
            if let Some(r) = self.buffered() {
                return r;
            }
            match self.fill().await {
                Ok(0) | Err(_) => return Read::Eof,
                Ok(_) => {}
            }
        }
    }

    /// Queues a packet for `pump` to write; returns the offset at which it is written. Refused
    /// (with why, to close the connection) when the device has left
    /// `BridgeOptions::outbound_queue_max_bytes` unread; one packet is always accepted.
    pub(crate) fn queue(&mut self, packet: &Packet) -> Result<u64, CloseReason> {
        let before = self.outbound.len();
        codec::encode(packet, &mut self.outbound);
        if before > 0 && self.outbound.len() > self.outbound_max_bytes {
            self.outbound.truncate(before);
            return Err(CloseReason::OutboundFull {
                queued: before,
                limit: self.outbound_max_bytes,
            });
        }
        if self.progress_at.is_none() {
            self.progress_at = Some(Instant::now());
        }
        self.queued += (self.outbound.len() - before) as u64;
        Ok(self.queued)
    }

    /// Bytes the socket has accepted so far (compare with `queue`'s offsets).
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    fn has_output(&self) -> bool {
        !self.outbound.is_empty() || self.unflushed
    }

    /// When waiting output that made no progress counts as a dead device, if any waits.
    pub(crate) fn write_deadline(&self) -> Option<Instant> {
        self.progress_at
            .filter(|_| self.has_output())
            .map(|at| at + self.write_timeout)
    }

    /// Writes queued output while waiting for input; returns after a read or a write.
    /// Cancel-safe: partial progress is kept in `self`.
    pub(crate) async fn pump(&mut self) -> std::io::Result<Pumped> {
        if !self.has_output() {
            return self.fill().await.map(Pumped::Read);
        }
        self.inbound.reserve(READ_CHUNK_BYTES);
        let wrote = tokio::select! {
            n = self.reader.read_buf(&mut self.inbound) => return n.map(Pumped::Read),
            w = write_some(&mut self.writer, &mut self.outbound, &mut self.unflushed) => w?,
        };
        self.written += wrote as u64;
        self.progress_at = self.has_output().then(Instant::now);
        if self.outbound.is_empty() && self.outbound.capacity() > OUTBOUND_KEEP_BYTES {
            self.outbound = BytesMut::new();
        }
        Ok(Pumped::Wrote)
    }

    /// Writes everything queued, within the write timeout (the handshake and bootstrap, which
    /// have nothing else to wait for).
    async fn flush_all(&mut self) -> std::io::Result<()> {
        let timeout = self.write_timeout;
        let all = async {
            while self.has_output() {
                let n =
                    write_some(&mut self.writer, &mut self.outbound, &mut self.unflushed).await?;
                self.written += n as u64;
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, all).await {
            Ok(r) => {
                self.progress_at = None;
                r
            }
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Writes what is still queued, for at most `CLOSE_FLUSH_TIMEOUT`; errors are moot then.
    pub(crate) async fn flush_before_close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.flush_all()).await;
    }

    /// Queues a packet and writes it out, within the write timeout.
    pub(crate) async fn send(&mut self, packet: &Packet) -> std::io::Result<()> {
        self.queue(packet)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        self.flush_all().await
    }
}

/// One step of writing: some queued bytes, or the flush once none are left. Returns the bytes
/// the socket accepted; cancel-safe.
async fn write_some<W: AsyncWrite + Unpin>(
    writer: &mut W,
    outbound: &mut BytesMut,
    unflushed: &mut bool,
) -> std::io::Result<usize> {
    if outbound.is_empty() {
        writer.flush().await?;
        *unflushed = false;
        return Ok(0);
    }
    let n = writer.write_buf(outbound).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    *unflushed = true;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::mqtt::codec::{Publish, QoS};

    fn publish(payload_bytes: usize) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "/devices/d/commands".into(),
            packet_id: None,
            payload: Bytes::from(vec![b'x'; payload_bytes]),
        })
    }

    /// A peer that never reads: the queue is capped, the deadline set, and reading drains it.
    #[tokio::test]
    async fn output_a_peer_does_not_read_is_capped_and_has_a_deadline() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut wire = Wire::new(ours, 1 << 20, 10_000, Duration::from_secs(5));
        assert!(wire.write_deadline().is_none());
        let Ok(first) = wire.queue(&publish(6_000)) else {
            panic!("one packet always fits");
        };
        // A packet bigger than the cap is accepted when nothing waits.
        assert!(first > 6_000);
        assert!(wire.queue(&publish(6_000)).is_err(), "over the cap");
        let deadline = wire.write_deadline().expect("output waits");
        // The socket takes 1 KiB, then nothing: progress moves the deadline, then it stands.
        while let Ok(Ok(Pumped::Wrote)) =
            tokio::time::timeout(Duration::from_millis(10), wire.pump()).await
        {}
        assert_eq!(wire.written(), 1024);
        assert!(wire.written() < first);
        assert!(wire.write_deadline().expect("still waiting") >= deadline);
        // Once the peer reads, everything goes out and the deadline is gone.
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let _ = peer.read_to_end(&mut all).await;
            all.len()
        });
        while wire.written() < first {
            assert!(matches!(wire.pump().await, Ok(Pumped::Wrote)));
        }
        assert!(matches!(wire.pump().await, Ok(Pumped::Wrote))); // the flush
        assert!(wire.write_deadline().is_none());
        drop(wire);
        assert_eq!(reader.await.ok(), Some(first as usize));
    }
}
