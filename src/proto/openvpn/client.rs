//! The client side of the OpenVPN protocol, sans-IO. It drives the same packet codec,
//! envelope, reliability layer and key-method code as the server; the in-memory
//! protocol tests and the load generator use it to speak to any OpenVPN server.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;

use super::channel::KeyChannel;
use super::data::DataKey;
use super::key_method::{ClientKeyMethod2, KeyMethodError, ServerKeyMethod2};
use super::keys::{EKM_LABEL, Key2, Role};
use super::packet::{MAX_ACKS, Opcode, SessionId};
use super::reliable::Timing;
use super::wrap::{UnwrapError, Wrap};
use crate::crypto::AeadAlgorithm;

/// ACKs per packet for servers that may be SoftEther (see [`ClientSession::max_acks`]).
const SOFTETHER_MAX_ACKS: usize = 4;

pub struct ClientSettings {
    pub tls: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    pub username: String,
    pub password: String,
    /// `IV_...=...` lines; IV_PROTO decides what the server may push.
    pub peer_info: String,
    pub options: String,
    pub reliable: Timing,
}

/// The options of a PUSH_REPLY the client acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushed {
    pub options: Vec<String>,
    pub address: Option<Ipv4Addr>,
    pub netmask: Option<Ipv4Addr>,
    pub peer_id: Option<u32>,
    pub cipher: Option<AeadAlgorithm>,
    pub ekm: bool,
}

impl Pushed {
    pub fn parse(reply: &str) -> Pushed {
        let mut p = Pushed::default();
        for opt in reply.trim_start_matches("PUSH_REPLY").split(',').filter(|o| !o.is_empty()) {
            let mut words = opt.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("ifconfig"), Some(a), Some(m)) => {
                    p.address = a.parse().ok();
                    p.netmask = m.parse().ok();
                }
                (Some("peer-id"), Some(id), _) => p.peer_id = id.parse().ok(),
                (Some("cipher"), Some(c), _) => p.cipher = c.parse().ok(),
                (Some("key-derivation"), Some("tls-ekm"), _) => p.ekm = true,
                (Some("protocol-flags"), ..) => p.ekm |= opt.split_whitespace().any(|w| w == "tls-ekm"),
                _ => {}
            }
            p.options.push(opt.to_string());
        }
        p
    }
}

#[derive(Debug)]
pub enum ClientEvent {
    /// PUSH_REPLY received and the first data keys derived.
    Connected {
        pushed: Pushed,
        key: Arc<DataKey>,
    },
    /// A renegotiation finished: new data keys.
    Rekeyed {
        key: Arc<DataKey>,
    },
    AuthFailed(String),
    /// Another message from the server (RESTART, HALT, INFO…).
    Message(String),
    Closed(String),
}

struct ClientKey {
    chan: KeyChannel,
    sent_km2: Option<ClientKeyMethod2>,
    server_km2: Option<ServerKeyMethod2>,
    done: bool,
}

pub struct ClientSession {
    settings: Arc<ClientSettings>,
    local_sid: SessionId,
    remote_sid: Option<SessionId>,
    wrap: Wrap,
    keys: Vec<ClientKey>,
    pushed: Option<Pushed>,
    push_parts: String,
    events: VecDeque<ClientEvent>,
    closed: bool,
    scratch: Vec<u8>,
}

impl ClientSession {
    /// Starts a session: the first transmit is the HARD_RESET_CLIENT_V2.
    pub fn new(settings: Arc<ClientSettings>, wrap: Wrap, now: Instant) -> Result<Self, rustls::Error> {
        let mut sid = [0u8; 8];
        aws_lc_rs::rand::fill(&mut sid).expect("the system RNG works");
        let tls = rustls::ClientConnection::new(settings.tls.clone(), settings.server_name.clone())?;
        let mut chan = KeyChannel::new_with_timing(0, tls.into(), settings.reliable, now);
        chan.reliable.send(Opcode::HardResetClientV2, Vec::new());
        Ok(ClientSession {
            settings,
            local_sid: sid,
            remote_sid: None,
            wrap,
            keys: vec![ClientKey { chan, sent_km2: None, server_km2: None, done: false }],
            pushed: None,
            push_parts: String::new(),
            events: VecDeque::new(),
            closed: false,
            scratch: Vec::new(),
        })
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Processes a control packet from the server.
    pub fn handle_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), UnwrapError> {
        if self.closed {
            return Ok(());
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let r = self.handle_inner(now, packet, &mut scratch);
        self.scratch = scratch;
        r
    }

    fn handle_inner(&mut self, now: Instant, packet: &[u8], scratch: &mut Vec<u8>) -> Result<(), UnwrapError> {
        let (header, body) = self.wrap.open(packet, self.remote_sid, scratch)?;
        match self.remote_sid {
            None if header.opcode == Opcode::HardResetServerV2 => self.remote_sid = Some(header.session_id),
            Some(sid) if sid == header.session_id => {}
            _ => return Ok(()),
        }
        let idx = match self.keys.iter().position(|k| k.chan.key_id == header.key_id) {
            Some(i) => i,
            None if header.opcode == Opcode::SoftResetV1 => {
                let tls =
                    match rustls::ClientConnection::new(self.settings.tls.clone(), self.settings.server_name.clone()) {
                        Ok(t) => t,
                        Err(e) => {
                            self.close(format!("cannot start TLS: {e}"));
                            return Ok(());
                        }
                    };
                let mut chan = KeyChannel::new_with_timing(header.key_id, tls.into(), self.settings.reliable, now);
                chan.reliable.send(Opcode::SoftResetV1, Vec::new());
                chan.flush_tls();
                // Keep the active key and this one.
                if self.keys.len() >= 2 {
                    self.keys.remove(0);
                }
                self.keys.push(ClientKey { chan, sent_km2: None, server_km2: None, done: false });
                self.keys.len() - 1
            }
            None => return Ok(()),
        };
        let k = &mut self.keys[idx];
        k.chan.reliable.on_acks(body.acks.as_slice());
        if let Some(id) = body.message_id {
            k.chan.reliable.receive(id, header.opcode, body.payload);
        }
        if let Err(e) = k.chan.deliver() {
            self.close(e.to_string());
            return Ok(());
        }
        self.progress(idx);
        Ok(())
    }

    fn progress(&mut self, idx: usize) {
        let settings = self.settings.clone();
        let Some(remote_sid) = self.remote_sid else { return };
        let local_sid = self.local_sid;
        let k = &mut self.keys[idx];
        if k.chan.handshake_done() && k.sent_km2.is_none() {
            let mut r = [0u8; 112];
            aws_lc_rs::rand::fill(&mut r).expect("the system RNG works");
            let km2 = ClientKeyMethod2 {
                pre_master: r[..48].try_into().expect("48 bytes"),
                random1: r[48..80].try_into().expect("32 bytes"),
                random2: r[80..].try_into().expect("32 bytes"),
                options: settings.options.clone(),
                username: settings.username.clone(),
                password: settings.password.clone(),
                peer_info: settings.peer_info.clone(),
            };
            k.chan.write_message(&km2.encode());
            k.sent_km2 = Some(km2);
        }
        if k.server_km2.is_none() && k.sent_km2.is_some() {
            match ServerKeyMethod2::parse(&k.chan.cleartext) {
                Ok((m, used)) => {
                    k.chan.cleartext.drain(..used);
                    k.server_km2 = Some(m);
                    if k.chan.key_id == 0 {
                        k.chan.write_text("PUSH_REQUEST");
                    }
                }
                Err(KeyMethodError::Incomplete) => {}
                Err(e) => {
                    let msg = format!("bad key-method message: {e}");
                    self.close(msg);
                    return;
                }
            }
        }
        let k = &mut self.keys[idx];
        k.chan.flush_tls();
        while let Some(msg) = self.keys[idx].chan.take_text() {
            self.on_message(&msg, idx, local_sid, remote_sid);
        }
        // Renegotiated keys use what the first PUSH_REPLY settled.
        if let Some(pushed) = &self.pushed {
            let k = &mut self.keys[idx];
            if k.chan.key_id != 0
                && !k.done
                && k.server_km2.is_some()
                && let Some(key) = derive(k, pushed, local_sid, remote_sid)
            {
                k.done = true;
                self.events.push_back(ClientEvent::Rekeyed { key });
            }
        }
        self.keys[idx].chan.flush_tls();
    }

    fn on_message(&mut self, msg: &str, idx: usize, local_sid: SessionId, remote_sid: SessionId) {
        if let Some(rest) = msg.strip_prefix("PUSH_REPLY") {
            self.push_parts.push_str(rest);
            if rest.ends_with(",push-continuation 2") {
                return;
            }
            let pushed = Pushed::parse(&std::mem::take(&mut self.push_parts));
            let k = &mut self.keys[idx];
            match derive(k, &pushed, local_sid, remote_sid) {
                Some(key) => {
                    k.done = true;
                    self.pushed = Some(pushed.clone());
                    self.events.push_back(ClientEvent::Connected { pushed, key });
                }
                None => self.close("PUSH_REPLY without a usable cipher".into()),
            }
        } else if let Some(reason) = msg.strip_prefix("AUTH_FAILED") {
            self.events.push_back(ClientEvent::AuthFailed(reason.trim_start_matches(',').to_string()));
            self.close("authentication failed".into());
        } else {
            self.events.push_back(ClientEvent::Message(msg.to_string()));
        }
    }

    fn close(&mut self, reason: String) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(ClientEvent::Closed(reason));
        }
    }

    /// Sends a text control message (e.g. "EXIT") on the newest key.
    pub fn send_message(&mut self, text: &str) {
        if let Some(k) = self.keys.last_mut() {
            k.chan.write_text(text);
            k.chan.flush_tls();
        }
    }

    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let (local, remote) = (self.local_sid, self.remote_sid.unwrap_or_default());
        let max_acks = self.max_acks();
        for k in &mut self.keys {
            k.chan.max_acks = max_acks;
        }
        for bare_ack in [false, true] {
            for k in &mut self.keys {
                if let Some(p) = k.chan.poll_packet(now, bare_ack, &mut self.wrap, local, remote, &mut self.scratch) {
                    return Some(p);
                }
            }
        }
        None
    }

    /// Without tls-auth/tls-crypt and tls-ekm, OpenVPN clients put at most 4 ACKs in a
    /// packet: SoftEther servers drop packets with more (ssl_pkt.c write_control_auth).
    fn max_acks(&self) -> usize {
        let ekm = self.pushed.as_ref().is_some_and(|p| p.ekm);
        if matches!(self.wrap, Wrap::Plain) && !ekm { SOFTETHER_MAX_ACKS } else { MAX_ACKS }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.keys.iter().filter_map(|k| k.chan.reliable.next_timeout()).min()
    }
}

fn derive(k: &ClientKey, pushed: &Pushed, local_sid: SessionId, remote_sid: SessionId) -> Option<Arc<DataKey>> {
    let cipher = pushed.cipher?;
    let (ours, theirs) = (k.sent_km2.as_ref()?, k.server_km2.as_ref()?);
    let key2 = if pushed.ekm {
        Key2::from_ekm(k.chan.export_data_keys(EKM_LABEL).ok()?)
    } else {
        Key2::from_openvpn_prf(
            &ours.pre_master,
            &ours.random1,
            &theirs.random1,
            &ours.random2,
            &theirs.random2,
            &local_sid,
            &remote_sid,
        )
    };
    DataKey::new(k.chan.key_id, &key2.direction_keys(cipher, Role::Client)).ok().map(Arc::new)
}
