//! One worker thread: its share of the clients, each a [`ClientSession`] on its own UDP
//! socket, driven through handshakes, the traffic phase and the hold, all from one epoll loop.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::proto::openvpn::client::{ClientEvent, ClientSession, ClientSettings, Pushed};
use crate::proto::openvpn::data::{OPCODE_P_DATA_V1, OPCODE_P_DATA_V2, Payload, classify};
use crate::proto::openvpn::tls_crypt::TlsCrypt;
use crate::proto::openvpn::wrap::Wrap;

use super::packet::{Probe, parse_udp_packet};
use super::report::{HandshakeStats, TrafficStats};
use super::sys::{BATCH, DATAGRAM_CAPACITY, Epoll, RecvBatch, send_batch};
use super::traffic::{Tunnel, Window, packets_due, share, until_next_due};

/// After the traffic phase, how long echoes still in flight are waited for.
pub const DRAIN: Duration = Duration::from_secs(1);
/// Without a `ping` in the PUSH_REPLY, OpenVPN's usual 10 s.
const DEFAULT_PING: Duration = Duration::from_secs(10);
/// How often the worker looks for keepalives that are due.
const PING_SCAN_EVERY: Duration = Duration::from_millis(250);
/// Flat out: probes per loop turn, between looks at the sockets for echoes.
const FLAT_OUT_BURST: u64 = 4 * BATCH as u64;
/// Probe source ports start here (one per client, so flows differ).
const PROBE_PORT_BASE: u16 = 10_000;

/// Who a client is: its TLS settings (certificate) and control-channel key.
pub struct Identity {
    pub settings: Arc<ClientSettings>,
    pub tls_crypt: Option<Arc<TlsCrypt>>,
}

/// What every worker reads.
pub struct Plan {
    /// Client `id` uses identity `id % len` (one per profile).
    pub identities: Vec<Identity>,
    pub remote: SocketAddr,
    pub sink: Option<SocketAddrV4>,
    /// Inner IP packet length of a probe.
    pub packet_len: usize,
    /// Total probes per second over all clients; 0 = as fast as possible.
    pub rate_pps: u64,
    /// Flat out: unanswered probes allowed at once over all clients (0 = no limit).
    pub window: u64,
    pub duration: Duration,
    pub hold: Duration,
    pub handshake_timeout: Duration,
    /// A handshake still unfinished after this starts over (new socket, new session).
    pub handshake_restart: Option<Duration>,
    pub workers: usize,
    /// Handshakes in flight at once, over all workers.
    pub concurrency: usize,
    /// Probe send times are nanoseconds since this.
    pub epoch: Instant,
}

/// What the workers coordinate through.
#[derive(Default)]
pub struct Shared {
    in_flight: AtomicUsize,
    finished_handshakes: AtomicUsize,
    /// When the phase after the handshakes started (the same for all workers).
    phase_start: OnceLock<Instant>,
}

impl Shared {
    fn try_start_handshake(&self, limit: usize) -> bool {
        self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).is_ok()
    }

    fn handshake_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct WorkerResult {
    pub handshakes: HandshakeStats,
    pub traffic: Option<TrafficStats>,
}

enum State {
    Waiting,
    Handshaking { started: Instant, deadline: Instant, restart_at: Instant },
    Connected { tunnel: Tunnel, ping_every: Duration, next_ping: Instant },
    Done,
}

struct Client {
    id: u32,
    socket: Option<UdpSocket>,
    session: Option<ClientSession>,
    state: State,
}

pub struct Worker<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    index: usize,
    clients: Vec<Client>,
    waiting: VecDeque<usize>,
    handshaking: Vec<usize>,
    epoll: Epoll,
    recv: RecvBatch,
    send_buffers: Vec<[u8; DATAGRAM_CAPACITY]>,
    handshakes: HandshakeStats,
    traffic: Option<TrafficStats>,
    traffic_start: Instant,
    /// Flat out with a window only.
    window: Option<Window>,
    next_ping_scan: Instant,
}

impl<'a> Worker<'a> {
    /// A worker for the clients with these ids.
    pub fn new(plan: &'a Plan, shared: &'a Shared, index: usize, ids: Vec<u32>) -> io::Result<Worker<'a>> {
        let now = Instant::now();
        Ok(Worker {
            plan,
            shared,
            index,
            waiting: (0..ids.len()).collect(),
            clients: ids
                .into_iter()
                .map(|id| Client { id, socket: None, session: None, state: State::Waiting })
                .collect(),
            handshaking: Vec::new(),
            epoll: Epoll::new()?,
            recv: RecvBatch::new(),
            send_buffers: vec![[0u8; DATAGRAM_CAPACITY]; BATCH],
            handshakes: HandshakeStats::default(),
            traffic: None,
            traffic_start: now,
            window: None,
            next_ping_scan: now,
        })
    }

    pub fn run(mut self) -> io::Result<WorkerResult> {
        while !(self.waiting.is_empty() && self.handshaking.is_empty()) {
            self.step(10)?;
        }
        // Keep the connected sessions alive while the other workers finish theirs.
        self.shared.finished_handshakes.fetch_add(1, Ordering::AcqRel);
        while self.shared.finished_handshakes.load(Ordering::Acquire) < self.plan.workers {
            self.step(10)?;
        }
        let phase_start = *self.shared.phase_start.get_or_init(Instant::now);
        let mut hold_from = phase_start;
        if let Some(sink) = self.plan.sink {
            self.run_traffic(phase_start, sink)?;
            hold_from = phase_start + self.plan.duration + DRAIN;
        }
        while Instant::now() < hold_from + self.plan.hold {
            self.step(100)?;
        }
        self.say_goodbye();
        Ok(WorkerResult { handshakes: self.handshakes, traffic: self.traffic })
    }

    /// One turn: read what arrived (waiting up to `timeout_ms`), then timers and new handshakes.
    fn step(&mut self, timeout_ms: i32) -> io::Result<()> {
        let ready: Vec<u64> = self.epoll.wait(timeout_ms)?.collect();
        for token in ready {
            self.drain_socket(token as usize)?;
        }
        let now = Instant::now();
        self.handshake_timers(now);
        self.start_handshakes(now);
        if now >= self.next_ping_scan {
            self.next_ping_scan = now + PING_SCAN_EVERY;
            self.send_due_pings(now);
        }
        Ok(())
    }

    fn drain_socket(&mut self, idx: usize) -> io::Result<()> {
        loop {
            let Some(socket) = &self.clients[idx].socket else { return Ok(()) };
            let n = self.recv.receive(socket.as_raw_fd())?;
            let now = Instant::now();
            for i in 0..n {
                self.on_datagram(idx, i, now);
            }
            if n < BATCH {
                return Ok(());
            }
        }
    }

    fn on_datagram(&mut self, idx: usize, i: usize, now: Instant) {
        let datagram = self.recv.datagram(i);
        let Some(&first) = datagram.first() else { return };
        let client = &mut self.clients[idx];
        if matches!(first >> 3, OPCODE_P_DATA_V1 | OPCODE_P_DATA_V2) {
            let State::Connected { tunnel, .. } = &client.state else { return };
            let Some(key) = tunnel.key_for(first) else { return };
            // Replays are not checked: a replayed echo would only count twice, and the
            // server has no reason to send one.
            let Ok((_, inner)) = key.open(datagram) else { return };
            let payload = &datagram[inner];
            if classify(payload) != Payload::Ip {
                return;
            }
            if let Some(traffic) = &mut self.traffic
                && let Ok(udp) = parse_udp_packet(payload)
                && let Some(probe) = Probe::decode(udp.payload)
                && probe.client == client.id
            {
                if let Some(window) = &mut self.window {
                    window.on_echo(probe.sent_ns);
                }
                let sent = self.plan.epoch + Duration::from_nanos(probe.sent_ns);
                traffic.record_echo(payload.len(), now.saturating_duration_since(sent), now - self.traffic_start);
            }
            return;
        }
        let Some(session) = &mut client.session else { return };
        // Packets that do not open (stray, replayed) are simply dropped, as a client does.
        let _ = session.handle_packet(now, datagram);
        self.after_session_input(idx, now);
    }

    /// Acts on the session's events and sends what it wants sent.
    fn after_session_input(&mut self, idx: usize, now: Instant) {
        while let Some(event) = self.clients[idx].session.as_mut().and_then(ClientSession::poll_event) {
            match event {
                ClientEvent::Connected { pushed, key } => self.on_connected(idx, pushed, key, now),
                ClientEvent::Rekeyed { key } => {
                    if let State::Connected { tunnel, .. } = &mut self.clients[idx].state {
                        tunnel.previous_key = Some(std::mem::replace(&mut tunnel.key, key));
                    }
                }
                ClientEvent::AuthFailed(reason) => self.end(idx, format!("AUTH_FAILED {reason}")),
                ClientEvent::Closed(reason) => self.end(idx, reason),
                ClientEvent::Message(text) if text.starts_with("RESTART") || text.starts_with("HALT") => {
                    self.end(idx, format!("server sent {text}"))
                }
                ClientEvent::Message(_) => {}
            }
        }
        self.flush(idx, now);
    }

    fn on_connected(
        &mut self,
        idx: usize,
        pushed: Pushed,
        key: Arc<crate::proto::openvpn::data::DataKey>,
        now: Instant,
    ) {
        let Some(address) = pushed.address else {
            self.end(idx, "PUSH_REPLY without an ifconfig address".into());
            return;
        };
        let client = &mut self.clients[idx];
        if let State::Handshaking { started, .. } = client.state {
            self.handshakes.durations.push(now - started);
        }
        let ping_every = ping_interval(&pushed);
        let port = PROBE_PORT_BASE + (client.id % u32::from(u16::MAX - PROBE_PORT_BASE)) as u16;
        let tunnel = Tunnel {
            key,
            previous_key: None,
            peer_id: pushed.peer_id,
            source: SocketAddrV4::new(address, port),
            next_sequence: 0,
        };
        client.state = State::Connected { tunnel, ping_every, next_ping: now + ping_every };
        self.handshaking.retain(|&i| i != idx);
        self.shared.handshake_ended();
        self.handshakes.connected += 1;
        self.handshakes.last_connected = Some(now);
    }

    /// A handshake failed or the server ended a connected session.
    fn end(&mut self, idx: usize, reason: String) {
        let client = &mut self.clients[idx];
        match std::mem::replace(&mut client.state, State::Done) {
            State::Handshaking { .. } => {
                self.handshaking.retain(|&i| i != idx);
                self.shared.handshake_ended();
                self.handshakes.record_failure(reason);
            }
            State::Connected { .. } => self.handshakes.disconnected += 1,
            State::Waiting | State::Done => {}
        }
        // Closing the socket also takes it off the epoll set.
        client.socket = None;
        client.session = None;
    }

    fn flush(&mut self, idx: usize, now: Instant) {
        let client = &mut self.clients[idx];
        let (Some(session), Some(socket)) = (&mut client.session, &client.socket) else { return };
        while let Some(packet) = session.poll_transmit(now) {
            // A full socket buffer loses the packet as the network could; the reliability
            // layer sends it again.
            let _ = socket.send(&packet);
        }
    }

    fn handshake_timers(&mut self, now: Instant) {
        for idx in self.handshaking.clone() {
            let State::Handshaking { started, deadline, restart_at } = self.clients[idx].state else { continue };
            if now >= deadline {
                let secs = self.plan.handshake_timeout.as_secs();
                self.end(idx, format!("no connection within {secs} s (handshake timeout)"));
            } else if now >= restart_at {
                // What a real client does when its handshake stalls: start over. (A lost
                // packet can stall one for good: an OpenVPN 2.6 server drops control packets
                // that carry no ACK with its cookie session id, and this client core does not
                // repeat old ACKs in retransmissions.)
                let client = &mut self.clients[idx];
                client.socket = None;
                client.session = None;
                match self.open_session(idx, now, started, deadline) {
                    Ok(()) => {
                        self.handshakes.restarts += 1;
                        self.flush(idx, now);
                    }
                    Err(reason) => self.end(idx, reason),
                }
            } else if self.clients[idx].session.as_ref().and_then(ClientSession::poll_timeout).is_some_and(|t| t <= now)
            {
                self.flush(idx, now);
            }
        }
    }

    fn start_handshakes(&mut self, now: Instant) {
        while !self.waiting.is_empty() && self.shared.try_start_handshake(self.plan.concurrency) {
            let idx = self.waiting.pop_front().expect("the queue is not empty");
            match self.open_session(idx, now, now, now + self.plan.handshake_timeout) {
                Ok(()) => {
                    self.handshaking.push(idx);
                    self.handshakes.first_start.get_or_insert(now);
                    self.flush(idx, now);
                }
                Err(reason) => {
                    self.shared.handshake_ended();
                    self.clients[idx].state = State::Done;
                    self.handshakes.record_failure(reason);
                }
            }
        }
    }

    /// A fresh socket and session for client `idx`, in a handshake begun at `started`.
    fn open_session(&mut self, idx: usize, now: Instant, started: Instant, deadline: Instant) -> Result<(), String> {
        let unspecified: SocketAddr = match self.plan.remote {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(unspecified).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        socket.connect(self.plan.remote).map_err(|e| format!("cannot reach {}: {e}", self.plan.remote))?;
        socket.set_nonblocking(true).map_err(|e| format!("socket: {e}"))?;
        self.epoll.add(socket.as_raw_fd(), idx as u64).map_err(|e| format!("epoll: {e}"))?;
        let identity = &self.plan.identities[self.clients[idx].id as usize % self.plan.identities.len()];
        let wrap = match &identity.tls_crypt {
            Some(key) => {
                let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                Wrap::tls_crypt(key.clone(), 1, unix_now as u32)
            }
            None => Wrap::Plain,
        };
        let session = ClientSession::new(identity.settings.clone(), wrap, now).map_err(|e| format!("TLS: {e}"))?;
        let client = &mut self.clients[idx];
        client.socket = Some(socket);
        client.session = Some(session);
        let restart_at = self.plan.handshake_restart.map_or(deadline, |after| now + after);
        client.state = State::Handshaking { started, deadline, restart_at };
        Ok(())
    }

    fn send_due_pings(&mut self, now: Instant) {
        let buf = &mut self.send_buffers[0];
        for client in &mut self.clients {
            let (State::Connected { tunnel, ping_every, next_ping }, Some(socket)) =
                (&mut client.state, &client.socket)
            else {
                continue;
            };
            if now < *next_ping {
                continue;
            }
            *next_ping = now + *ping_every;
            if let Ok(range) = tunnel.seal_ping(buf) {
                let _ = socket.send(&buf[range]);
            }
        }
    }

    /// Sends probes to `sink` for the plan's duration, then waits for the last echoes.
    fn run_traffic(&mut self, start: Instant, sink: SocketAddrV4) -> io::Result<()> {
        let seconds = self.plan.duration.as_secs_f64().ceil() as u64;
        self.traffic = Some(TrafficStats::new(seconds));
        self.traffic_start = start;
        let senders: Vec<usize> =
            (0..self.clients.len()).filter(|&i| matches!(self.clients[i].state, State::Connected { .. })).collect();
        let rate = share(self.plan.rate_pps, self.plan.workers, self.index);
        let paced = self.plan.rate_pps > 0;
        if !paced && self.plan.window > 0 {
            self.window = Some(Window::new(share(self.plan.window, self.plan.workers, self.index).max(1)));
        }
        let end = start + self.plan.duration;
        let mut next_sender = 0;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let sent = self.traffic.as_ref().map_or(0, |t| t.sent_packets);
            let budget = if senders.is_empty() || (paced && rate == 0) {
                0
            } else if paced {
                packets_due(rate, now - start, sent).min(FLAT_OUT_BURST)
            } else {
                let now_ns = now.saturating_duration_since(self.plan.epoch).as_nanos() as u64;
                self.window.as_mut().map_or(FLAT_OUT_BURST, |w| w.allowance(now_ns).min(FLAT_OUT_BURST))
            };
            let mut left = budget;
            // Round robin, a few probes per client per turn.
            let per_client = budget.div_ceil(senders.len().max(1) as u64).clamp(1, BATCH as u64);
            let mut stalled = 0;
            while left > 0 && stalled < senders.len() {
                let idx = senders[next_sender % senders.len()];
                next_sender += 1;
                let want = per_client.min(left);
                let sent_now = self.send_probes(idx, sink, want as usize, now)?;
                left -= sent_now as u64;
                stalled = if sent_now == 0 { stalled + 1 } else { 0 };
            }
            let wait = if senders.is_empty() {
                10
            } else if !paced {
                // A full window waits for echoes (epoll wakes up for them).
                if budget == 0 { 1 } else { 0 }
            } else {
                // Sleep at least a millisecond and send what came due meanwhile as a burst:
                // spinning for finer pacing would take the CPU the server under test needs.
                let sent = self.traffic.as_ref().map_or(0, |t| t.sent_packets);
                until_next_due(rate, Instant::now() - start, sent).as_millis().clamp(1, 10) as i32
            };
            self.step(wait)?;
        }
        let drain_end = end + DRAIN;
        while Instant::now() < drain_end {
            if self.traffic.as_ref().is_some_and(|t| t.received_packets >= t.sent_packets) {
                break;
            }
            self.step(5)?;
        }
        Ok(())
    }

    /// Seals and sends up to `count` probes of client `idx`; returns how many went out.
    fn send_probes(&mut self, idx: usize, sink: SocketAddrV4, count: usize, now: Instant) -> io::Result<usize> {
        let client = &mut self.clients[idx];
        let (State::Connected { tunnel, .. }, Some(socket)) = (&mut client.state, &client.socket) else { return Ok(0) };
        let sent_ns = now.saturating_duration_since(self.plan.epoch).as_nanos() as u64;
        let mut ranges = Vec::with_capacity(count);
        for buf in self.send_buffers.iter_mut().take(count) {
            match tunnel.seal_probe(buf, client.id, sink, self.plan.packet_len, sent_ns) {
                Ok(range) => ranges.push(range),
                // Only a key whose 2^32 packet-ids are used up refuses: nothing more to send.
                Err(_) => break,
            }
        }
        let datagrams: Vec<&[u8]> = ranges.iter().zip(&self.send_buffers).map(|(r, b)| &b[r.clone()]).collect();
        let sent = send_batch(socket.as_raw_fd(), &datagrams)?;
        if let Some(window) = &mut self.window {
            window.on_sent(sent_ns, sent as u64);
        }
        if let Some(traffic) = &mut self.traffic {
            traffic.sent_packets += sent as u64;
            traffic.sent_bytes += (sent * self.plan.packet_len) as u64;
        }
        Ok(sent)
    }

    /// Tells the server each session is over (OCC explicit-exit-notify), as UDP clients do.
    fn say_goodbye(&mut self) {
        let buf = &mut self.send_buffers[0];
        for client in &self.clients {
            if let (State::Connected { tunnel, .. }, Some(socket)) = (&client.state, &client.socket)
                && let Ok(range) = tunnel.seal_exit(buf)
            {
                let _ = socket.send(&buf[range]);
            }
        }
    }
}

/// The `ping N` a server pushed, else OpenVPN's default.
fn ping_interval(pushed: &Pushed) -> Duration {
    pushed
        .options
        .iter()
        .find_map(|o| o.strip_prefix("ping ").and_then(|n| n.trim().parse::<u64>().ok()))
        .filter(|&secs| secs > 0)
        .map_or(DEFAULT_PING, Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_interval_comes_from_the_push_reply() {
        let pushed = Pushed::parse("PUSH_REPLY,route-gateway 172.16.201.1,ping 3,ping-restart 60,peer-id 0");
        assert_eq!(ping_interval(&pushed), Duration::from_secs(3));
        assert_eq!(ping_interval(&Pushed::parse("PUSH_REPLY,ping-restart 60")), DEFAULT_PING);
    }
}
