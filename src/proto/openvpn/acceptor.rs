//! The first exchange with a new client, answered without keeping state.
//!
//! A client's HARD_RESET_CLIENT_V2 is answered with a HARD_RESET_SERVER_V2 whose
//! session id is an HMAC "cookie" over a time slot, the client's address and its
//! session id. State is created only when a later packet echoes that cookie, so
//! spoofed resets cost no memory (what OpenVPN 2.6 does too). With tls-crypt, packets
//! that fail authentication are dropped before anything else is looked at.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::hmac;

use super::packet::{AckList, Opcode, SessionId};
use super::session::{ServerSession, ServerSettings};
use super::tls_crypt::TlsCrypt;
use super::wrap::{UnwrapError, Wrap, open_stateless};

/// Cookies are valid for the current and the previous slot of this many seconds.
const COOKIE_SLOT_SECS: u64 = 30;

/// Why a packet from an unknown peer was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Malformed(#[from] UnwrapError),
    #[error("tls-crypt-v2 is not supported")]
    TlsCryptV2,
    #[error("unexpected {0:?} from an unknown peer")]
    Unexpected(Opcode),
    #[error("session cookie does not match")]
    BadCookie,
    #[error("key id {0} in a first packet")]
    NonZeroKeyId(u8),
    #[error("cannot start TLS: {0}")]
    Tls(String),
}

pub enum Accepted {
    /// Send this reply; keep nothing.
    Reply(Vec<u8>),
    /// The client echoed a valid cookie: a new session, which has already processed
    /// the packet.
    Session(Box<ServerSession>),
}

pub struct Acceptor {
    cookie_key: hmac::Key,
    tls_crypt: Option<Arc<TlsCrypt>>,
}

impl Acceptor {
    /// `tls_crypt`: the gateway's tls-crypt key (server role), or None for plain
    /// control packets.
    pub fn new(tls_crypt: Option<Arc<TlsCrypt>>) -> Self {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).expect("the system RNG works");
        Acceptor { cookie_key: hmac::Key::new(hmac::HMAC_SHA256, &secret), tls_crypt }
    }

    /// Handles a control packet from a peer without a session. `unix_time` is the wall
    /// clock in seconds (cookie slots and tls-crypt replay times).
    pub fn handle(
        &self,
        now: Instant,
        unix_time: u64,
        peer: SocketAddr,
        packet: &[u8],
        settings: &Arc<ServerSettings>,
    ) -> Result<Accepted, Refusal> {
        let mut scratch = Vec::new();
        let (header, body) = open_stateless(self.tls_crypt.as_deref(), packet, &mut scratch)?;
        if header.key_id != 0 {
            return Err(Refusal::NonZeroKeyId(header.key_id));
        }
        let slot = unix_time / COOKIE_SLOT_SECS;
        match header.opcode {
            Opcode::HardResetClientV2 => {
                let cookie = self.cookie(slot, peer, &header.session_id);
                let mut acks = AckList::default();
                acks.push(body.message_id.unwrap_or(0));
                let mut wrap = self.wrap(1, unix_time);
                Ok(Accepted::Reply(wrap.seal(
                    Opcode::HardResetServerV2,
                    0,
                    cookie,
                    header.session_id,
                    acks,
                    Some(0),
                    &[],
                    &mut Vec::new(),
                )))
            }
            Opcode::HardResetClientV3 | Opcode::ControlWkcV1 => Err(Refusal::TlsCryptV2),
            Opcode::ControlV1 | Opcode::AckV1 => {
                let echoed = body.remote_session_id.filter(|_| body.acks.contains(0)).ok_or(Refusal::BadCookie)?;
                let valid = [slot, slot.saturating_sub(1)].iter().any(|&s| {
                    aws_lc_rs::constant_time::verify_slices_are_equal(
                        &self.cookie(s, peer, &header.session_id),
                        &echoed,
                    )
                    .is_ok()
                });
                if !valid {
                    return Err(Refusal::BadCookie);
                }
                // Our reset used replay id 1; the session continues from 2.
                let mut session =
                    ServerSession::new(settings.clone(), echoed, header.session_id, self.wrap(2, unix_time), now)
                        .map_err(|e| Refusal::Tls(e.to_string()))?;
                // Replay and decryption were checked above; errors here are only the
                // session's own (a packet with nothing for it yet), so ignore them.
                let _ = session.handle_packet(now, packet);
                Ok(Accepted::Session(Box::new(session)))
            }
            other => Err(Refusal::Unexpected(other)),
        }
    }

    fn wrap(&self, first_id: u32, unix_time: u64) -> Wrap {
        match &self.tls_crypt {
            Some(k) => Wrap::tls_crypt(k.clone(), first_id, unix_time as u32),
            None => Wrap::Plain,
        }
    }

    fn cookie(&self, slot: u64, peer: SocketAddr, client_sid: &SessionId) -> SessionId {
        let mut ctx = hmac::Context::with_key(&self.cookie_key);
        ctx.update(&slot.to_be_bytes());
        match peer {
            SocketAddr::V4(a) => ctx.update(&a.ip().octets()),
            SocketAddr::V6(a) => ctx.update(&a.ip().octets()),
        }
        ctx.update(&peer.port().to_be_bytes());
        ctx.update(client_sid);
        let tag = ctx.sign();
        tag.as_ref()[..8].try_into().expect("HMAC-SHA256 is 32 bytes")
    }
}
