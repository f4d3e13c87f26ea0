//! Counters the workers keep, their sum, and the report (JSON, a table, a per-second CSV).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Round-trip times are recorded in microseconds, up to a minute, to 3 significant digits.
const RTT_MAX_US: u64 = 60_000_000;

pub fn new_rtt_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, RTT_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// How the handshakes went on one worker (or all, once merged).
#[derive(Debug, Default)]
pub struct HandshakeStats {
    pub connected: u64,
    pub failed: u64,
    /// Sessions the server closed after they connected.
    pub disconnected: u64,
    /// Stalled handshakes started over.
    pub restarts: u64,
    pub first_start: Option<Instant>,
    pub last_connected: Option<Instant>,
    /// How long each successful handshake took, HARD_RESET to PUSH_REPLY.
    pub durations: Vec<Duration>,
    /// Failure reason → count, to tell the operator why.
    pub failures: BTreeMap<String, u64>,
}

impl HandshakeStats {
    pub fn merge(&mut self, other: HandshakeStats) {
        self.connected += other.connected;
        self.failed += other.failed;
        self.disconnected += other.disconnected;
        self.restarts += other.restarts;
        self.first_start = min_some(self.first_start, other.first_start);
        self.last_connected = self.last_connected.max(other.last_connected);
        self.durations.extend(other.durations);
        for (reason, n) in other.failures {
            *self.failures.entry(reason).or_default() += n;
        }
    }

    pub fn record_failure(&mut self, reason: String) {
        self.failed += 1;
        *self.failures.entry(reason).or_default() += 1;
    }

    /// The `q` quantile (0..=1) of the handshake durations, in milliseconds.
    fn duration_quantile_ms(&self, q: f64) -> f64 {
        let mut sorted = self.durations.clone();
        sorted.sort_unstable();
        match sorted.len() {
            0 => 0.0,
            n => sorted[((n - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3,
        }
    }

    /// From the first HARD_RESET to the last PUSH_REPLY.
    pub fn elapsed(&self) -> Duration {
        match (self.first_start, self.last_connected) {
            (Some(start), Some(end)) => end.saturating_duration_since(start),
            _ => Duration::ZERO,
        }
    }
}

fn min_some(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Echoes received in one second of the traffic phase.
pub struct Second {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rtt_us: Histogram<u64>,
}

/// Traffic counters; bytes are tunnel-inner IP packet bytes.
pub struct TrafficStats {
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub received_packets: u64,
    pub received_bytes: u64,
    pub rtt_us: Histogram<u64>,
    pub seconds: Vec<Second>,
}

impl TrafficStats {
    pub fn new(duration_secs: u64) -> TrafficStats {
        TrafficStats {
            sent_packets: 0,
            sent_bytes: 0,
            received_packets: 0,
            received_bytes: 0,
            rtt_us: new_rtt_histogram(),
            seconds: (0..duration_secs.max(1))
                .map(|_| Second { rx_packets: 0, rx_bytes: 0, rtt_us: new_rtt_histogram() })
                .collect(),
        }
    }

    /// An echo of `bytes` that came back after `rtt`, `since_start` into the traffic phase
    /// (echoes of the final drain count towards the last second).
    pub fn record_echo(&mut self, bytes: usize, rtt: Duration, since_start: Duration) {
        let rtt_us = (rtt.as_micros() as u64).clamp(1, RTT_MAX_US);
        self.received_packets += 1;
        self.received_bytes += bytes as u64;
        self.rtt_us.saturating_record(rtt_us);
        let last = self.seconds.len() - 1;
        let second = &mut self.seconds[(since_start.as_secs() as usize).min(last)];
        second.rx_packets += 1;
        second.rx_bytes += bytes as u64;
        second.rtt_us.saturating_record(rtt_us);
    }

    pub fn merge(&mut self, other: &TrafficStats) {
        self.sent_packets += other.sent_packets;
        self.sent_bytes += other.sent_bytes;
        self.received_packets += other.received_packets;
        self.received_bytes += other.received_bytes;
        // Same bounds everywhere, so adding cannot fail.
        let _ = self.rtt_us.add(&other.rtt_us);
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.rx_packets += theirs.rx_packets;
            mine.rx_bytes += theirs.rx_bytes;
            let _ = mine.rtt_us.add(&theirs.rtt_us);
        }
    }

    /// `t_secs,mbit_per_s,pps,rtt_p50_us` per second, of the echoes received.
    pub fn timeline_csv(&self) -> String {
        let mut out = String::from("t_secs,mbit_per_s,pps,rtt_p50_us\n");
        for (t, s) in self.seconds.iter().enumerate() {
            let p50 = if s.rx_packets == 0 { 0 } else { s.rtt_us.value_at_quantile(0.5) };
            let _ = writeln!(out, "{},{:.3},{},{}", t + 1, s.rx_bytes as f64 * 8.0 / 1e6, s.rx_packets, p50);
        }
        out
    }
}

/// The result of a run; field names are the JSON keys.
#[derive(Debug, Serialize, PartialEq)]
pub struct Report {
    pub clients: u64,
    pub connected: u64,
    pub failed: u64,
    pub disconnected: u64,
    pub handshake_secs: f64,
    pub handshakes_per_sec: f64,
    pub handshake_p50_ms: f64,
    pub handshake_p99_ms: f64,
    pub handshake_max_ms: f64,
    pub handshake_restarts: u64,
    pub duration_secs: f64,
    pub sent_packets: u64,
    pub received_packets: u64,
    pub lost_packets: u64,
    pub loss_ratio: f64,
    pub tx_pps: f64,
    pub rx_pps: f64,
    pub tx_mbit_per_s: f64,
    pub rx_mbit_per_s: f64,
    pub rtt_p50_us: u64,
    pub rtt_p99_us: u64,
    pub rtt_max_us: u64,
}

impl Report {
    /// `traffic` and `duration` are None in connect-only mode.
    pub fn new(clients: u64, handshakes: &HandshakeStats, traffic: Option<(&TrafficStats, Duration)>) -> Report {
        let handshake_secs = handshakes.elapsed().as_secs_f64();
        let handshakes_per_sec = if handshake_secs > 0.0 { handshakes.connected as f64 / handshake_secs } else { 0.0 };
        let mut report = Report {
            clients,
            connected: handshakes.connected,
            failed: handshakes.failed,
            disconnected: handshakes.disconnected,
            handshake_secs,
            handshakes_per_sec,
            handshake_p50_ms: handshakes.duration_quantile_ms(0.5),
            handshake_p99_ms: handshakes.duration_quantile_ms(0.99),
            handshake_max_ms: handshakes.duration_quantile_ms(1.0),
            handshake_restarts: handshakes.restarts,
            duration_secs: 0.0,
            sent_packets: 0,
            received_packets: 0,
            lost_packets: 0,
            loss_ratio: 0.0,
            tx_pps: 0.0,
            rx_pps: 0.0,
            tx_mbit_per_s: 0.0,
            rx_mbit_per_s: 0.0,
            rtt_p50_us: 0,
            rtt_p99_us: 0,
            rtt_max_us: 0,
        };
        if let Some((t, duration)) = traffic {
            let secs = duration.as_secs_f64().max(f64::MIN_POSITIVE);
            report.duration_secs = duration.as_secs_f64();
            report.sent_packets = t.sent_packets;
            report.received_packets = t.received_packets;
            report.lost_packets = t.sent_packets.saturating_sub(t.received_packets);
            if t.sent_packets > 0 {
                report.loss_ratio = report.lost_packets as f64 / t.sent_packets as f64;
            }
            report.tx_pps = t.sent_packets as f64 / secs;
            report.rx_pps = t.received_packets as f64 / secs;
            report.tx_mbit_per_s = t.sent_bytes as f64 * 8.0 / secs / 1e6;
            report.rx_mbit_per_s = t.received_bytes as f64 * 8.0 / secs / 1e6;
            if t.received_packets > 0 {
                report.rtt_p50_us = t.rtt_us.value_at_quantile(0.5);
                report.rtt_p99_us = t.rtt_us.value_at_quantile(0.99);
                report.rtt_max_us = t.rtt_us.max();
            }
        }
        report
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a report of numbers serializes")
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |name: &str, value: String| {
            let _ = writeln!(out, "{name:<22} {value}");
        };
        row("clients", format!("{} ({} connected, {} failed)", self.clients, self.connected, self.failed));
        if self.handshake_restarts > 0 {
            row("stalled, started over", self.handshake_restarts.to_string());
        }
        if self.disconnected > 0 {
            row("disconnected by server", self.disconnected.to_string());
        }
        row("handshakes", format!("{:.2} s, {:.1}/s", self.handshake_secs, self.handshakes_per_sec));
        row(
            "handshake p50/p99/max",
            format!("{:.1} / {:.1} / {:.1} ms", self.handshake_p50_ms, self.handshake_p99_ms, self.handshake_max_ms),
        );
        if self.duration_secs > 0.0 {
            row("traffic", format!("{:.1} s", self.duration_secs));
            row(
                "sent",
                format!("{} packets, {:.0} pps, {:.1} Mbit/s", self.sent_packets, self.tx_pps, self.tx_mbit_per_s),
            );
            row(
                "echoed",
                format!("{} packets, {:.0} pps, {:.1} Mbit/s", self.received_packets, self.rx_pps, self.rx_mbit_per_s),
            );
            row("lost", format!("{} ({:.3}%)", self.lost_packets, self.loss_ratio * 100.0));
            row("rtt p50 / p99 / max", format!("{} / {} / {} us", self.rtt_p50_us, self.rtt_p99_us, self.rtt_max_us));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_agreed_keys() {
        let report = Report::new(3, &HandshakeStats::default(), None);
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        for key in [
            "clients",
            "connected",
            "failed",
            "handshake_secs",
            "handshakes_per_sec",
            "duration_secs",
            "sent_packets",
            "received_packets",
            "lost_packets",
            "loss_ratio",
            "tx_pps",
            "rx_pps",
            "tx_mbit_per_s",
            "rx_mbit_per_s",
            "rtt_p50_us",
            "rtt_p99_us",
            "rtt_max_us",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert_eq!(json["clients"], 3);
    }

    #[test]
    fn rates_loss_and_percentiles_come_from_the_counters() {
        let start = Instant::now();
        let mut handshakes = HandshakeStats::default();
        handshakes.merge(HandshakeStats {
            connected: 4,
            first_start: Some(start + Duration::from_millis(500)),
            last_connected: Some(start + Duration::from_secs(1)),
            durations: [40, 10, 30, 20].map(Duration::from_millis).to_vec(),
            ..Default::default()
        });
        let mut other = HandshakeStats {
            connected: 4,
            first_start: Some(start),
            durations: [50, 60, 70, 2000].map(Duration::from_millis).to_vec(),
            ..Default::default()
        };
        other.record_failure("timeout".into());
        handshakes.merge(other);
        assert_eq!(handshakes.elapsed(), Duration::from_secs(1));

        let mut a = TrafficStats::new(2);
        let mut b = TrafficStats::new(2);
        a.sent_packets = 100;
        a.sent_bytes = 100 * 1000;
        b.sent_packets = 100;
        b.sent_bytes = 100 * 1000;
        for i in 0..90u64 {
            a.record_echo(1000, Duration::from_micros(100 + i), Duration::from_millis(500));
        }
        for _ in 0..100 {
            b.record_echo(1000, Duration::from_micros(2000), Duration::from_millis(1500));
        }
        // After the end: counted in the last second.
        b.record_echo(1000, Duration::from_micros(2000), Duration::from_secs(7));
        a.merge(&b);
        let r = Report::new(9, &handshakes, Some((&a, Duration::from_secs(2))));
        assert_eq!((r.connected, r.failed), (8, 1));
        assert_eq!(r.handshakes_per_sec, 8.0);
        // Sorted: 10 20 30 40 50 60 70 2000; the median rounds to the 5th (index 3.5 → 4).
        assert_eq!((r.handshake_p50_ms, r.handshake_p99_ms, r.handshake_max_ms), (50.0, 2000.0, 2000.0));
        assert_eq!((r.sent_packets, r.received_packets, r.lost_packets), (200, 191, 9));
        assert!((r.loss_ratio - 0.045).abs() < 1e-12);
        assert_eq!(r.tx_pps, 100.0);
        assert_eq!(r.tx_mbit_per_s, 200.0 * 1000.0 * 8.0 / 2.0 / 1e6);
        // Values up to 2048 are exact at 3 significant digits.
        assert_eq!(r.rtt_p50_us, 2000);
        assert_eq!(r.rtt_max_us, 2000);
        let csv = a.timeline_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "t_secs,mbit_per_s,pps,rtt_p50_us");
        assert_eq!(lines[1], "1,0.720,90,144");
        assert_eq!(lines[2], "2,0.808,101,2000");
    }
}
