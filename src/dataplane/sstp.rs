//! SSTP connections in a worker: rustls on the TCP stream, the sans-IO [`SstpServer`]
//! on the bytes inside TLS. The worker classifies a connection as SSTP by its first byte
//! (a TLS handshake record) and then owns it like any TCP connection: packets for its
//! tunnel address read by other workers are handed to it. EAP-TLS sign-ins run here
//! too (a second TLS handshake, inside PPP); the control plane admits the certificate.
//!
//! Allocation: inbound, TLS plaintext is read into the worker's scratch buffer and each
//! IPv4 packet copied once into a pool buffer for the TUN, with no allocation. Outbound,
//! a packet goes into the SSTP server's reused output buffer and from there through TLS
//! into the connection's reused send buffers; only rustls's buffered API allocates, one
//! `Vec` per TLS record (its unbuffered API would avoid that).

use std::sync::Arc;
use std::time::Instant;

use super::table::SessionShared;
use super::{SstpGrant, SstpListener};
use crate::proto::eap::tls::{self as eap_tls, EapTlsServer, ServerStep};
use crate::proto::openvpn::session::CloseReason;
use crate::proto::ppp::{self, EapResult, SessionKeys};
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
    pub eap: EapTls,
}

/// Where the client's EAP-TLS sign-in stands.
pub enum EapTls {
    /// No EAP Response yet (the first is the client's Identity).
    NotStarted,
    Running(Box<EapTlsServer>),
    /// The certificate is with the control plane; the MSK waits for its verdict.
    Admitting {
        msk: Vec<u8>,
    },
    Done,
}

/// What an EAP Response led to.
#[derive(Debug, PartialEq, Eq)]
pub enum EapProgress {
    /// The next Request went out.
    Continue,
    /// The handshake verified this certificate (DER): ask the control plane to admit it.
    Admit { certificate: Vec<u8>, version: &'static str },
    /// EAP-Failure went out, for this reason.
    Refused(String),
}

impl SstpConn {
    pub fn new(listener: Arc<SstpListener>) -> Result<SstpConn, rustls::Error> {
        let mut tls = rustls::ServerConnection::new(listener.tls.clone())?;
        // Whatever is written into TLS moves at once into the connection's queue, whose
        // own limit (MAX_QUEUED_OUTPUT) bounds memory; rustls's limit would only refuse
        // part of a write.
        tls.set_buffer_limit(None);
        Ok(SstpConn { tls, listener, server: None, session: None, reported: false, eap: EapTls::NotStarted })
    }

    /// An EAP Response from the client: the first (its Identity) starts EAP-TLS with
    /// `tls` (the gateway's certificate, client certificates checked against the trust
    /// store), the next ones carry the handshake.
    pub fn on_eap_response(
        &mut self,
        now: Instant,
        packet: &[u8],
        tls: impl FnOnce() -> Arc<rustls::ServerConfig>,
    ) -> EapProgress {
        let Some(server) = self.server.as_mut() else { return EapProgress::Continue };
        let step = match &mut self.eap {
            EapTls::NotStarted => {
                // Fragments fit the smaller of both MRUs (PPP frames carry EAP whole).
                let mru = usize::from(server.peer_mru().unwrap_or(1500).min(1500));
                match EapTlsServer::new(tls(), mru.saturating_sub(eap_tls::OVERHEAD)) {
                    Ok(mut eap) => {
                        let start = eap.start(packet.get(1).copied().unwrap_or_default());
                        self.eap = EapTls::Running(Box::new(eap));
                        ServerStep::Request(start)
                    }
                    Err(e) => ServerStep::Failure(format!("cannot start TLS: {e}")),
                }
            }
            EapTls::Running(eap) => eap.handle_response(packet),
            EapTls::Admitting { .. } | EapTls::Done => return EapProgress::Continue,
        };
        match step {
            ServerStep::Request(request) => {
                // Refused only when the link is closing, which reports itself.
                let _ = server.eap_to_peer(now, &request);
                EapProgress::Continue
            }
            ServerStep::Success(success) => {
                self.eap = EapTls::Admitting { msk: success.msk };
                EapProgress::Admit { certificate: success.peer_certificate, version: success.version }
            }
            ServerStep::Failure(reason) => {
                self.eap = EapTls::Done;
                server.eap_result(now, EapResult::Failure { packet: None });
                EapProgress::Refused(reason)
            }
        }
    }

    /// The control plane's decision on the EAP-TLS certificate: EAP-Success with the MSK
    /// (the crypto binding's HLAK comes from it) and the tunnel's addresses, or
    /// EAP-Failure.
    pub fn on_certificate_verdict(&mut self, now: Instant, grant: Option<&SstpGrant>) {
        let eap = std::mem::replace(&mut self.eap, EapTls::Done);
        let Some(server) = self.server.as_mut() else { return };
        match (eap, grant) {
            (EapTls::Admitting { msk }, Some(grant)) => {
                server.eap_result(now, EapResult::Success { keys: SessionKeys::Msk(msk), packet: None });
                server.assign_network(now, grant.network);
            }
            _ => server.eap_result(now, EapResult::Failure { packet: None }),
        }
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
