//! IKEv2 and ESP in a worker.
//!
//! Every worker runs its own IKE responder, whose SPIs start with the worker's index.
//! The SO_REUSEPORT steering programs (dataplane/reuseport.rs) bring IKE messages and ESP
//! to the worker named by the gateway's SPI. Where that fails (no program, or sockets of
//! a group out of worker order), a worker that receives an IKE message for an SA another
//! worker owns passes it there by mailbox, counted. ESP needs no such detour: its inbound SAs are in the
//! shared table by SPI and any worker opens them; outbound, any worker seals a TUN packet
//! with the session's outbound SA and sends it from its own NAT-T socket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tracing::{debug, info, warn};

use super::super::buffers::BufId;
use super::super::counters::DropReason;
use super::super::gso::{Datagram, Destination};
use super::super::table::{EspInbound, EspOutbound, SessionShared, Transport};
use super::super::{ControlEvent, LocalHandle, SessionKind, UdpRole, sys};
use super::Worker;
use crate::proto::esp::{
    self, HEADROOM as ESP_HEADROOM, InboundSa, NEXT_HEADER_IPV4, NO_NEXT_HEADER, OpenError, OutboundSa, Port4500, SaKey,
};
use crate::proto::ike::{
    Authorization, ChildSa, CloseReason as IkeCloseReason, EapReply, Event, Responder, ResponderConfig, SessionId,
    Transmit,
};
use crate::proto::openvpn::data::HEADROOM;
use crate::proto::openvpn::session::CloseReason;

/// The worker's IKE responder and what it knows of each IKE session.
pub(super) struct IkeEndpoint {
    responder: Responder,
    sessions: HashMap<SessionId, IkeSession>,
    by_peer_id: HashMap<u32, SessionId>,
}

#[derive(Default)]
struct IkeSession {
    remote: Option<SocketAddr>,
    /// Published once the control plane admitted the client.
    shared: Option<Arc<SessionShared>>,
    /// Inbound SPIs of the CHILD SAs installed in the shared table.
    inbound_spis: Vec<u32>,
    /// Why we ended it (administrative disconnect, revocation, shutdown).
    closing: Option<String>,
}

impl IkeEndpoint {
    pub(super) fn new(config: Arc<ResponderConfig>) -> IkeEndpoint {
        IkeEndpoint { responder: Responder::new(config), sessions: HashMap::new(), by_peer_id: HashMap::new() }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.responder.poll_timeout()
    }

    pub(super) fn has_sessions(&self) -> bool {
        !self.sessions.is_empty()
    }
}

fn handle_of(worker: usize, id: SessionId) -> LocalHandle {
    LocalHandle { worker, kind: SessionKind::Ike, slot: id.0 as u32, generation: (id.0 >> 32) as u32 }
}

fn session_of(handle: LocalHandle) -> SessionId {
    SessionId(u64::from(handle.slot) | (u64::from(handle.generation) << 32))
}

fn close_reason(reason: IkeCloseReason, ours: Option<String>) -> CloseReason {
    match reason {
        IkeCloseReason::PeerDeleted => CloseReason::ClientExit,
        IkeCloseReason::LocalDeleted => CloseReason::Local(ours.unwrap_or_else(|| "closed by the gateway".into())),
        IkeCloseReason::PeerUnresponsive => CloseReason::Local("no packet from the client (liveness check)".into()),
        IkeCloseReason::AuthenticationFailed(why) => CloseReason::AuthFailed(why),
        IkeCloseReason::AuthorizationTimeout => CloseReason::Local("authorization did not finish in time".into()),
    }
}

impl Worker {
    /// A datagram on an IKE (500) or NAT-T (4500) socket, in `bufs[b][..len]`.
    pub(super) fn on_ike_socket(
        &mut self,
        now: Instant,
        listener: usize,
        peer: SocketAddr,
        pktinfo: Option<IpAddr>,
        b: BufId,
        len: usize,
    ) {
        let role = self.io.udp_roles[listener];
        let local_of = |bound: SocketAddr| SocketAddr::new(pktinfo.unwrap_or(bound.ip()), bound.port());
        match role {
            UdpRole::Ike(bound) => {
                let data = self.bufs.get(b)[..len].to_vec();
                self.bufs.release(b);
                self.route_ike(now, local_of(bound), peer, data);
            }
            UdpRole::NatT(bound) => match esp::classify_port_4500(&self.bufs.get(b)[..len]) {
                Ok(Port4500::Esp { spi }) => self.on_esp(spi, b, len),
                Ok(Port4500::Ike(message)) => {
                    let data = message.to_vec();
                    self.bufs.release(b);
                    self.route_ike(now, local_of(bound), peer, data);
                }
                Ok(Port4500::NatKeepalive) => self.bufs.release(b),
                Err(_) => {
                    self.bufs.release(b);
                    self.count_drop(DropReason::Malformed);
                }
            },
            UdpRole::OpenVpn => self.bufs.release(b),
        }
    }

    /// Handles an IKE message here, or passes it to the worker that owns its SA.
    fn route_ike(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: Vec<u8>) {
        let owner = Responder::our_spi(&data).map_or(self.index, |spi| usize::from(spi[0]));
        if owner != self.index {
            match self.shared.inboxes.get(owner) {
                Some(inbox) => {
                    inbox.send(super::super::WorkerCommand::IkeDatagram { local, remote, data });
                    self.counters().ike_mailbox_passes.fetch_add(1, Ordering::Relaxed);
                }
                None => self.count_drop(DropReason::UnknownSession),
            }
            return;
        }
        self.handle_ike(now, local, remote, &data);
    }

    pub(super) fn handle_ike(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        let Some(ike) = self.ike.as_mut() else { return };
        if let Err(e) = ike.responder.handle_datagram(now, local, remote, data) {
            debug!(worker = self.index, %remote, reason = %e, "IKE message dropped");
            self.count_drop(DropReason::ControlRefused);
        }
        self.drive_ike(now);
    }

    /// Sends what the responder has to send and acts on its events.
    pub(super) fn drive_ike(&mut self, now: Instant) {
        loop {
            let Some(ike) = self.ike.as_mut() else { return };
            if let Some(t) = ike.responder.poll_transmit() {
                self.send_ike(&t);
            } else if let Some(event) = ike.responder.poll_event() {
                self.on_ike_event(now, event);
            } else {
                return;
            }
        }
    }

    /// IKE messages go out with a plain sendmsg: they are few, and may be larger than a
    /// ring buffer.
    fn send_ike(&mut self, t: &Transmit) {
        let Some((listener, from)) = self.ike_socket_for(t.local) else {
            warn!(worker = self.index, local = %t.local, "no IKE socket for this local address");
            return;
        };
        let fd = self.io.udp[listener].as_raw_fd();
        let result = if matches!(self.io.udp_roles[listener], UdpRole::NatT(_)) {
            sys::send_datagram(fd, &esp::with_non_esp_marker(&t.message), &t.remote, from)
        } else {
            sys::send_datagram(fd, &t.message, &t.remote, from)
        };
        if let Err(e) = result {
            debug!(worker = self.index, remote = %t.remote, error = %e, "IKE send failed");
        }
    }

    /// The socket bound to `local` (or to the wildcard address on its port), and the
    /// source address to give a wildcard-bound socket.
    fn ike_socket_for(&self, local: SocketAddr) -> Option<(usize, Option<IpAddr>)> {
        self.io.udp_roles.iter().enumerate().find_map(|(i, role)| {
            let (UdpRole::Ike(bound) | UdpRole::NatT(bound)) = role else { return None };
            if bound.port() != local.port() || bound.is_ipv4() != local.is_ipv4() {
                return None;
            }
            if bound.ip() == local.ip() {
                Some((i, None))
            } else {
                bound.ip().is_unspecified().then_some((i, Some(local.ip())))
            }
        })
    }

    fn on_ike_event(&mut self, now: Instant, event: Event) {
        let index = self.index;
        let Some(ike) = self.ike.as_mut() else { return };
        match event {
            Event::AuthRequest { session, request } => {
                let entry = ike.sessions.entry(session).or_default();
                entry.remote = Some(request.remote);
                let _ = self.shared.to_control.send(ControlEvent::AuthorizeIke {
                    handle: handle_of(index, session),
                    peer: request.remote,
                    request: Box::new(request),
                });
            }
            Event::EapMessage { session, identity, message, remote } => {
                ike.sessions.entry(session).or_default().remote = Some(remote);
                let _ = self.shared.to_control.send(ControlEvent::IkeEap {
                    handle: handle_of(index, session),
                    peer: remote,
                    identity,
                    message,
                });
            }
            Event::IkeSaEstablished { session, remote, .. } => {
                ike.sessions.entry(session).or_default().remote = Some(remote);
            }
            Event::ChildSaEstablished(child) => self.install_child(now, child, None),
            Event::ChildSaRekeyed { old_inbound_spi, new } => self.install_child(now, new, Some(old_inbound_spi)),
            Event::ChildSaDeleted { session, inbound_spi, .. } => {
                self.shared.table.remove_inbound_sa(inbound_spi);
                if let Some(s) = ike.sessions.get_mut(&session) {
                    s.inbound_spis.retain(|&spi| spi != inbound_spi);
                }
            }
            Event::PeerAddressChanged { session, local, remote } => self.move_esp(session, local, remote),
            Event::IkeSaRekeyed { .. } => {}
            Event::AuthenticationFailed { remote, reason } => {
                warn!(peer = %remote, transport = "ikev2", %reason, "authentication refused");
            }
            Event::SessionClosed { session, reason } => {
                let Some(s) = ike.sessions.remove(&session) else { return };
                for spi in &s.inbound_spis {
                    self.shared.table.remove_inbound_sa(*spi);
                }
                let (peer_id, address, traffic) = match &s.shared {
                    Some(shared) => {
                        self.shared.table.remove(shared);
                        ike.by_peer_id.remove(&shared.peer_id);
                        (Some(shared.peer_id), Some(shared.address), Some(shared.stats.snapshot()))
                    }
                    None => (None, None, None),
                };
                let _ = self.shared.to_control.send(ControlEvent::Closed {
                    handle: handle_of(index, session),
                    peer: s.remote.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                    peer_id,
                    address,
                    traffic,
                    reason: close_reason(reason, s.closing),
                });
            }
        }
    }

    /// Publishes a CHILD SA: its inbound half by SPI, its outbound half on the session
    /// (replacing the one it rekeys), and the session's address route with the first.
    fn install_child(&mut self, now: Instant, child: ChildSa, replaces: Option<u32>) {
        let Some(ike) = self.ike.as_mut() else { return };
        let Some(session) = ike.sessions.get_mut(&child.session) else { return };
        let Some(shared) = session.shared.clone() else {
            warn!(worker = self.index, "a CHILD SA for a session the gateway has not admitted");
            ike.responder.close(now, child.session);
            return;
        };
        let sas = child.algorithm.aead().ok_or_else(|| "not an AEAD cipher".to_string()).and_then(|algorithm| {
            let key = |k: &[u8]| SaKey::from_keymat(algorithm, k).map_err(|e| e.to_string());
            let inbound = InboundSa::new(child.inbound_spi, key(&child.inbound_key.0)?).map_err(|e| e.to_string())?;
            let outbound =
                OutboundSa::new(child.outbound_spi, key(&child.outbound_key.0)?).map_err(|e| e.to_string())?;
            Ok((inbound, outbound))
        });
        let (inbound, outbound) = match sas {
            Ok(pair) => pair,
            Err(e) => {
                warn!(worker = self.index, error = %e, "cannot install the CHILD SA; closing the session");
                ike.responder.close(now, child.session);
                return;
            }
        };
        let Some((listener, local)) = self.nat_t_socket_for(child.local) else {
            warn!(worker = self.index, local = %child.local, "no NAT-T socket for the CHILD SA; closing the session");
            if let Some(ike) = self.ike.as_mut() {
                ike.responder.close(now, child.session);
            }
            return;
        };
        if !child.udp_encapsulation {
            // Raw ESP (IP protocol 50) is not served: only clients behind NAT, or that
            // force UDP encapsulation (strongSwan's kernel-libipsec, Windows, macOS) work.
            debug!(worker = self.index, "client did not ask for UDP encapsulation; sending ESP in UDP anyway");
        }
        let Some(ike) = self.ike.as_mut() else { return };
        let Some(session) = ike.sessions.get_mut(&child.session) else { return };
        self.shared.table.insert_inbound_sa(
            child.inbound_spi,
            Arc::new(EspInbound { session: shared.clone(), sa: Mutex::new(inbound) }),
        );
        session.inbound_spis.push(child.inbound_spi);
        shared.esp.store(Some(Arc::new(EspOutbound {
            sa: Arc::new(outbound),
            inbound_spi: child.inbound_spi,
            listener,
            peer: child.remote,
            local,
        })));
        if replaces.is_none() {
            shared.stats.last_rx.store(self.now_secs, Ordering::Relaxed);
            self.shared.table.insert(shared);
        }
    }

    /// The client's address changed: its ESP goes to the new one, and the control plane's
    /// session record (the session list, accounting) says where it is.
    fn move_esp(&mut self, session: SessionId, local: SocketAddr, remote: SocketAddr) {
        let Some(entry) = self.ike.as_mut().and_then(|ike| ike.sessions.get_mut(&session)) else { return };
        entry.remote = Some(remote);
        let Some(shared) = entry.shared.clone() else { return };
        let Some((listener, from)) = self.nat_t_socket_for(local) else { return };
        // The same outbound SA (its sequence numbers go on), on the new route.
        let Some(current) = shared.esp.load_full() else { return };
        let moved = EspOutbound {
            sa: current.sa.clone(),
            inbound_spi: current.inbound_spi,
            listener,
            peer: remote,
            local: from,
        };
        info!(worker = self.index, %remote, "IKEv2 client moved");
        shared.esp.store(Some(Arc::new(moved)));
        let handle = handle_of(self.index, session);
        let _ =
            self.shared.to_control.send(ControlEvent::ClientMoved { handle, peer_id: shared.peer_id, peer: remote });
    }

    fn nat_t_socket_for(&self, local: SocketAddr) -> Option<(usize, Option<IpAddr>)> {
        let nat_t = SocketAddr::new(local.ip(), 4500);
        self.ike_socket_for(nat_t).filter(|(i, _)| matches!(self.io.udp_roles[*i], UdpRole::NatT(_)))
    }

    /// An ESP packet in `bufs[b][..len]`: opened in place and written to the TUN.
    fn on_esp(&mut self, spi: u32, b: BufId, len: usize) {
        let Some(inbound) = self.shared.table.inbound_sa(spi) else {
            self.bufs.release(b);
            self.count_drop(DropReason::UnknownSession);
            return;
        };
        let opened = inbound.sa.lock().unwrap_or_else(PoisonError::into_inner).open(&mut self.bufs.get_mut(b)[..len]);
        let session = &inbound.session;
        let verdict = match opened {
            Ok(o) if o.next_header == NEXT_HEADER_IPV4 => {
                let packet = &self.bufs.get(b)[o.inner.clone()];
                if packet.len() < 20 || packet[0] >> 4 != 4 {
                    Err(DropReason::NotIpv4)
                } else if packet[12..16] != session.address.octets() {
                    Err(DropReason::SpoofedSource)
                } else {
                    Ok(Some(o.inner))
                }
            }
            // A dummy packet (traffic flow confidentiality): proof of life, nothing to forward.
            Ok(o) if o.next_header == NO_NEXT_HEADER => Ok(None),
            Ok(_) => Err(DropReason::NotIpv4),
            Err(OpenError::Replay(_)) => Err(DropReason::Replay),
            Err(OpenError::Authentication) => Err(DropReason::Decrypt),
            Err(_) => Err(DropReason::Malformed),
        };
        match verdict {
            Ok(inner) => {
                session.stats.received(len, self.now_secs);
                match inner {
                    Some(range) => self.write_tun(b, range.start, range.end),
                    None => self.bufs.release(b),
                }
                // The session's owner tells its responder the client is alive, from
                // the receive clock (ike_tick).
            }
            Err(reason) => {
                self.bufs.release(b);
                self.count_drop(reason);
            }
        }
    }

    /// Seals the TUN packet at `bufs[b][HEADROOM..HEADROOM + len]` with the session's
    /// outbound SA and sends it; false (buffer not consumed) when it has none.
    pub(super) fn send_esp(&mut self, session: &SessionShared, b: BufId, len: usize) -> Result<(), DropReason> {
        let esp = session.esp.load();
        let out = esp.as_ref().ok_or(DropReason::NotEstablished)?;
        // The ESP header and IV go in the headroom in front of the inner packet.
        let start = HEADROOM - ESP_HEADROOM;
        let sealed =
            out.sa.seal(&mut self.bufs.get_mut(b)[start..], len, NEXT_HEADER_IPV4).map_err(|_| DropReason::Overload)?;
        session.stats.sent(sealed.len, self.now_secs);
        let (listener, peer, local) = (out.listener, out.peer, out.local);
        drop(esp);
        // Like OpenVPN data: into the GSO batch for this client (IKE stays out of it).
        let to = Destination { listener, peer, local };
        self.send_udp_data(to, Datagram { id: b, start, end: start + sealed.len });
        Ok(())
    }

    /// Once a second, for the sessions this worker's responder owns: ESP heard counts as
    /// liveness, and a CHILD SA near the end of its sequence numbers is rekeyed.
    pub(super) fn ike_tick(&mut self, now: Instant) {
        let now_secs = self.now_secs;
        let epoch = self.shared.epoch;
        let Some(ike) = self.ike.as_mut() else { return };
        for (&id, s) in &ike.sessions {
            let Some(shared) = &s.shared else { continue };
            let last_rx = shared.stats.last_rx.load(Ordering::Relaxed);
            if last_rx + 1 >= now_secs {
                ike.responder.note_activity(id, epoch + std::time::Duration::from_secs(last_rx));
            }
            if let Some(out) = shared.esp.load().as_ref()
                && out.sa.rekey_needed()
            {
                ike.responder.rekey_child(now, id, out.inbound_spi);
            }
        }
        self.drive_ike(now);
    }

    pub(super) fn ike_timeout(&mut self, now: Instant) {
        let due = self.ike.as_ref().and_then(IkeEndpoint::poll_timeout).is_some_and(|t| t <= now);
        if due {
            if let Some(ike) = self.ike.as_mut() {
                ike.responder.handle_timeout(now);
            }
            self.drive_ike(now);
        }
    }

    pub(super) fn on_ike_authorization(
        &mut self,
        now: Instant,
        handle: LocalHandle,
        decision: Authorization,
        peer_id: Option<u32>,
    ) {
        let index = self.index;
        let id = session_of(handle);
        let Some(ike) = self.ike.as_mut() else { return };
        let live = ike.sessions.contains_key(&id);
        let decision = match (decision, peer_id) {
            (Authorization::Accept(grant), Some(peer_id)) => match grant.virtual_ipv4.filter(|_| live) {
                Some(address) => {
                    let session = ike.sessions.get_mut(&id).expect("the session is live (checked above)");
                    let shared = SessionShared::new(peer_id, address, index, Transport::Esp, false);
                    session.shared = Some(Arc::new(shared));
                    ike.by_peer_id.insert(peer_id, id);
                    Authorization::Accept(grant)
                }
                None => {
                    // The session ended while the control plane was deciding: give back the grant.
                    let _ = self.shared.to_control.send(ControlEvent::Closed {
                        handle,
                        peer: SocketAddr::from(([0, 0, 0, 0], 0)),
                        peer_id: Some(peer_id),
                        address: grant.virtual_ipv4,
                        traffic: None,
                        reason: CloseReason::Local("closed before authorization finished".into()),
                    });
                    Authorization::Reject
                }
            },
            (decision, _) => decision,
        };
        if !live {
            return;
        }
        if let Some(ike) = self.ike.as_mut() {
            ike.responder.authorize(now, id, decision);
        }
        self.drive_ike(now);
    }

    pub(super) fn on_ike_eap_reply(&mut self, now: Instant, handle: LocalHandle, reply: EapReply) {
        if let Some(ike) = self.ike.as_mut() {
            ike.responder.eap_reply(now, session_of(handle), reply);
        }
        self.drive_ike(now);
    }

    /// Closes the IKE session of `peer_id`, if this worker's responder owns it.
    pub(super) fn close_ike(&mut self, now: Instant, peer_id: u32, reason: &str) {
        let Some(ike) = self.ike.as_mut() else { return };
        let Some(&id) = ike.by_peer_id.get(&peer_id) else { return };
        if let Some(s) = ike.sessions.get_mut(&id) {
            s.closing = Some(reason.to_string());
        }
        ike.responder.close(now, id);
        self.drive_ike(now);
    }

    /// At shutdown: every client is sent a Delete.
    pub(super) fn close_all_ike(&mut self, now: Instant) {
        let Some(ike) = self.ike.as_mut() else { return };
        let ids: Vec<SessionId> = ike.sessions.keys().copied().collect();
        for id in ids {
            if let Some(s) = ike.sessions.get_mut(&id) {
                s.closing = Some("gateway shutting down".into());
            }
            ike.responder.close(now, id);
        }
        self.drive_ike(now);
    }
}
