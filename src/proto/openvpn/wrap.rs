//! The control-channel envelope: plain, or tls-crypt with its replay protection.
//! Builds and opens whole control packets for one session.

use std::sync::Arc;

use super::packet::{AckList, ControlBody, ControlHeader, Opcode, PacketError, SessionId};
use super::tls_crypt::{TlsCrypt, TlsCryptError};
use crate::crypto::ReplayWindow;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    #[error(transparent)]
    Packet(#[from] PacketError),
    #[error("tls-crypt: {0}")]
    TlsCrypt(#[from] TlsCryptError),
    #[error("replayed or too old control packet")]
    Replay,
    /// Authentic, but from another session of this key (a client that restarted).
    #[error("packet from another session")]
    OtherSession,
}

/// The per-session envelope state.
pub enum Wrap {
    Plain,
    TlsCrypt(TlsCryptState),
}

pub struct TlsCryptState {
    key: Arc<TlsCrypt>,
    /// Next replay packet-id to send (starts at 1).
    send_id: u32,
    /// The time field of our long-form packet ids, fixed when the session starts.
    send_time: u32,
    recv_time: u32,
    recv_window: ReplayWindow,
}

impl Wrap {
    /// tls-crypt state whose first packet will carry replay id `first_send_id`.
    pub fn tls_crypt(key: Arc<TlsCrypt>, first_send_id: u32, unix_time: u32) -> Wrap {
        Wrap::TlsCrypt(TlsCryptState {
            key,
            send_id: first_send_id,
            send_time: unix_time,
            recv_time: 0,
            recv_window: ReplayWindow::new(),
        })
    }

    /// Encodes a whole control packet.
    #[allow(clippy::too_many_arguments)]
    pub fn seal(
        &mut self,
        opcode: Opcode,
        key_id: u8,
        local: SessionId,
        remote: SessionId,
        acks: AckList,
        message_id: Option<u32>,
        payload: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Vec<u8> {
        let header = ControlHeader { opcode, key_id, session_id: local }.to_bytes();
        let body = ControlBody { acks, remote_session_id: Some(remote), message_id, payload };
        match self {
            Wrap::Plain => {
                let mut out =
                    Vec::with_capacity(9 + ControlBody::encoded_len(acks.as_slice().len(), true, payload.len()));
                out.extend_from_slice(&header);
                body.encode(&mut out);
                out
            }
            Wrap::TlsCrypt(st) => {
                scratch.clear();
                body.encode(scratch);
                let mut out = Vec::with_capacity(9 + 40 + scratch.len());
                st.key.wrap(&header, st.send_id, st.send_time, scratch, &mut out);
                st.send_id = st.send_id.wrapping_add(1);
                out
            }
        }
    }

    /// Opens a control packet from `sender` into its header and the body bytes (copied
    /// into `scratch` when they had to be decrypted), checking tls-crypt replay ids. A
    /// packet from another session is refused before it can touch the replay window,
    /// which belongs to this sender alone.
    pub fn open<'a>(
        &mut self,
        packet: &'a [u8],
        sender: Option<SessionId>,
        scratch: &'a mut Vec<u8>,
    ) -> Result<(ControlHeader, ControlBody<'a>), UnwrapError> {
        let header = ControlHeader::parse(packet)?;
        let from_other = sender.is_some_and(|s| s != header.session_id);
        match self {
            Wrap::Plain if from_other => Err(UnwrapError::OtherSession),
            Wrap::Plain => Ok((header, ControlBody::parse(header.opcode, &packet[ControlHeader::LEN..])?)),
            Wrap::TlsCrypt(st) => {
                scratch.clear();
                let h = st.key.unwrap(packet, scratch)?;
                if from_other {
                    return Err(UnwrapError::OtherSession);
                }
                let seq = u64::from(h.packet_id);
                // Long-form ids: a newer time starts a new sequence; an older one is a replay.
                if h.net_time < st.recv_time {
                    return Err(UnwrapError::Replay);
                }
                if h.net_time > st.recv_time {
                    st.recv_time = h.net_time;
                    st.recv_window = ReplayWindow::new();
                }
                st.recv_window.check(seq).map_err(|_| UnwrapError::Replay)?;
                let body = ControlBody::parse(header.opcode, scratch)?;
                st.recv_window.update(seq);
                Ok((header, body))
            }
        }
    }
}

/// Opens a packet with a tls-crypt key but no session state (no replay check): for the
/// stateless first exchange.
pub fn open_stateless<'a>(
    key: Option<&TlsCrypt>,
    packet: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<(ControlHeader, ControlBody<'a>), UnwrapError> {
    let header = ControlHeader::parse(packet)?;
    match key {
        None => Ok((header, ControlBody::parse(header.opcode, &packet[ControlHeader::LEN..])?)),
        Some(k) => {
            scratch.clear();
            k.unwrap(packet, scratch)?;
            Ok((header, ControlBody::parse(header.opcode, scratch)?))
        }
    }
}
