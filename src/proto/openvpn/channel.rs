//! One key state's control channel: a TLS connection fed through the reliability
//! layer, plus the cleartext it yields. Shared by the server and client sessions.

use std::io::{Read, Write};
use std::time::Instant;

use super::packet::{MAX_ACKS, Opcode, SessionId};
use super::reliable::{ACKS_PER_CONTROL_PACKET, Reliable, Timing};
use super::wrap::Wrap;

/// TLS bytes carried by one P_CONTROL_V1 packet. OpenVPN's default `tls-mtu` is 1250
/// bytes for the whole UDP payload; this leaves room for the header, tls-crypt and
/// eight ACKs.
pub const MAX_TLS_CHUNK: usize = 1100;

/// Cleartext buffered but not yet parsed. A peer sending more is misbehaving.
const MAX_PENDING_CLEARTEXT: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("peer sent more than {MAX_PENDING_CLEARTEXT} bytes of unparsed control messages")]
    Overflow,
}

pub struct KeyChannel {
    pub key_id: u8,
    pub tls: rustls::Connection,
    pub reliable: Reliable,
    /// When this key state started (the handshake window counts from here).
    pub started: Instant,
    /// Cleartext read from TLS, not yet consumed.
    pub cleartext: Vec<u8>,
    /// ACKs per packet at most (a control packet carries at most
    /// [`ACKS_PER_CONTROL_PACKET`] of them).
    pub max_acks: usize,
}

impl KeyChannel {
    pub fn new(key_id: u8, tls: rustls::Connection, reliable: Reliable, started: Instant) -> Self {
        KeyChannel { key_id, tls, reliable, started, cleartext: Vec::new(), max_acks: MAX_ACKS }
    }

    pub fn new_with_timing(key_id: u8, tls: rustls::Connection, timing: Timing, started: Instant) -> Self {
        Self::new(key_id, tls, Reliable::new(timing), started)
    }

    /// Hands TLS bytes from an in-order P_CONTROL_V1 payload to the TLS engine and
    /// collects any cleartext that results.
    pub fn feed_tls(&mut self, mut data: &[u8]) -> Result<(), ChannelError> {
        while !data.is_empty() {
            self.tls.read_tls(&mut data).map_err(|e| ChannelError::Tls(e.to_string()))?;
            self.tls.process_new_packets().map_err(|e| ChannelError::Tls(e.to_string()))?;
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.tls.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if self.cleartext.len() + n > MAX_PENDING_CLEARTEXT {
                        return Err(ChannelError::Overflow);
                    }
                    self.cleartext.extend_from_slice(&buf[..n]);
                }
                Err(_) => break, // WouldBlock: nothing more for now
            }
        }
        Ok(())
    }

    /// Writes one control message as its own TLS record(s). OpenVPN reads the
    /// key-method message and each text message with separate TLS reads.
    pub fn write_message(&mut self, msg: &[u8]) {
        // Writing to rustls's buffer cannot fail once the handshake is done.
        let _ = self.tls.writer().write_all(msg);
    }

    /// Writes a text control message with its trailing NUL.
    pub fn write_text(&mut self, text: &str) {
        let mut m = Vec::with_capacity(text.len() + 1);
        m.extend_from_slice(text.as_bytes());
        m.push(0);
        self.write_message(&m);
    }

    /// Moves pending TLS output into reliable P_CONTROL_V1 messages.
    pub fn flush_tls(&mut self) {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut out).is_err() {
                break;
            }
        }
        for chunk in out.chunks(MAX_TLS_CHUNK) {
            self.reliable.send(Opcode::ControlV1, chunk.to_vec());
        }
    }

    /// Delivers in-order reliable messages: TLS payloads go to the TLS engine; resets
    /// carry nothing to deliver.
    pub fn deliver(&mut self) -> Result<(), ChannelError> {
        while let Some((opcode, payload)) = self.reliable.deliver() {
            if opcode == Opcode::ControlV1 {
                self.feed_tls(&payload)?;
            }
        }
        Ok(())
    }

    /// The next packet to put on the wire: a reliable message due for (re)transmission
    /// with pending (and recently sent) ACKs riding on it, or, with `bare_ack`, a
    /// P_ACK_V1 for ACKs that found no message to ride on. Sessions ask every channel
    /// for the first kind before any for the second.
    pub fn poll_packet(
        &mut self,
        now: Instant,
        bare_ack: bool,
        wrap: &mut Wrap,
        local: SessionId,
        remote: SessionId,
        scratch: &mut Vec<u8>,
    ) -> Option<Vec<u8>> {
        if bare_ack {
            if !self.reliable.has_pending_acks() {
                return None;
            }
            let acks = self.reliable.take_acks(self.max_acks);
            return Some(wrap.seal(Opcode::AckV1, self.key_id, local, remote, acks, None, &[], scratch));
        }
        let t = self.reliable.poll_transmit(now)?;
        let acks = self.reliable.take_acks(self.max_acks.min(ACKS_PER_CONTROL_PACKET));
        Some(wrap.seal(t.opcode, self.key_id, local, remote, acks, Some(t.message_id), &t.payload, scratch))
    }

    pub fn handshake_done(&self) -> bool {
        !self.tls.is_handshaking()
    }

    /// Takes the next NUL-terminated text message from the cleartext.
    pub fn take_text(&mut self) -> Option<String> {
        let end = self.cleartext.iter().position(|&b| b == 0)?;
        let msg = String::from_utf8_lossy(&self.cleartext[..end]).into_owned();
        self.cleartext.drain(..=end);
        Some(msg)
    }

    /// Exports 256 bytes of keying material for the data channel (tls-ekm). OpenVPN
    /// passes no context at all, which differs from an empty context under TLS 1.2.
    pub fn export_data_keys(&self, label: &[u8]) -> Result<[u8; 256], ChannelError> {
        let mut out = [0u8; 256];
        match &self.tls {
            rustls::Connection::Server(c) => c.export_keying_material(&mut out, label, None),
            rustls::Connection::Client(c) => c.export_keying_material(&mut out, label, None),
        }
        .map_err(|e| ChannelError::Tls(e.to_string()))?;
        Ok(out)
    }
}
