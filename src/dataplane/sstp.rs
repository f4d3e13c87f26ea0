//! SSTP connections in a worker: rustls on the TCP stream, the sans-IO [`SstpServer`]
//! on the bytes inside TLS. The worker classifies a connection as SSTP by its first byte
//! (a TLS handshake record) and then owns it like any TCP connection: packets for its
//! tunnel address read by other workers are handed to it.
//!
//! Allocation: inbound, TLS plaintext is read into the worker's scratch buffer and each
//! IPv4 packet copied once into a pool buffer for the TUN, with no allocation. Outbound,
//! a packet goes into the SSTP server's reused output buffer and from there through TLS
//! into the connection's reused send buffers; only rustls's buffered API allocates, one
//! `Vec` per TLS record (its unbuffered API would avoid that).

use std::sync::Arc;

use super::SstpListener;
use super::table::SessionShared;
use crate::proto::openvpn::session::CloseReason;
use crate::proto::ppp;
use crate::proto::sstp::{self, SstpServer};

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

pub struct SstpConn {
    pub tls: rustls::ServerConnection,
    pub listener: Arc<SstpListener>,
    /// Created when the TLS handshake is done.
    pub server: Option<SstpServer>,
    /// The published session, once the control plane admitted the client.
    pub session: Option<Arc<SessionShared>>,
    /// The end was reported to the control plane.
    pub reported: bool,
}

impl SstpConn {
    pub fn new(listener: Arc<SstpListener>) -> Result<SstpConn, rustls::Error> {
        let mut tls = rustls::ServerConnection::new(listener.tls.clone())?;
        // Whatever is written into TLS moves at once into the connection's queue, whose
        // own limit (MAX_QUEUED_OUTPUT) bounds memory; rustls's limit would only refuse
        // part of a write.
        tls.set_buffer_limit(None);
        Ok(SstpConn { tls, listener, server: None, session: None, reported: false })
    }

    /// Moves what SSTP has to send through TLS into `out` (the socket's queue).
    pub fn flush(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        if let Some(server) = &mut self.server {
            server.write_transmit(&mut self.tls.writer())?;
        }
        while self.tls.wants_write() {
            self.tls.write_tls(out)?;
        }
        Ok(())
    }
}

/// How an SSTP connection's end reads in the session log and accounting.
pub fn close_reason(reason: &sstp::CloseReason) -> CloseReason {
    match reason {
        sstp::CloseReason::PeerDisconnected
        | sstp::CloseReason::PeerAborted(_)
        | sstp::CloseReason::Ppp(ppp::CloseReason::PeerTerminated) => CloseReason::ClientExit,
        sstp::CloseReason::Ppp(ppp::CloseReason::AuthFailed(why)) => CloseReason::AuthFailed(why.clone()),
        sstp::CloseReason::Ppp(ppp::CloseReason::Local(why)) | sstp::CloseReason::Local(why) => {
            CloseReason::Local(why.clone())
        }
        // Worded for terminate_cause: a silent client is a lost carrier.
        sstp::CloseReason::HelloTimeout => CloseReason::Local("no packet from the client (SSTP echo)".into()),
        sstp::CloseReason::NegotiationTimeout | sstp::CloseReason::Ppp(ppp::CloseReason::EstablishTimeout) => {
            CloseReason::HandshakeTimeout
        }
        other => CloseReason::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_map_to_accounting_causes() {
        assert_eq!(close_reason(&sstp::CloseReason::PeerDisconnected), CloseReason::ClientExit);
        assert_eq!(
            close_reason(&sstp::CloseReason::Ppp(ppp::CloseReason::AuthFailed("E=691".into()))),
            CloseReason::AuthFailed("E=691".into())
        );
        assert_eq!(close_reason(&sstp::CloseReason::Local("admin".into())), CloseReason::Local("admin".into()));
        assert!(
            matches!(close_reason(&sstp::CloseReason::HelloTimeout), CloseReason::Local(r) if r.contains("no packet"))
        );
        assert_eq!(close_reason(&sstp::CloseReason::NegotiationTimeout), CloseReason::HandshakeTimeout);
    }
}
