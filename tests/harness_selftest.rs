//! Proves the end-to-end harness itself works, without the gateway: namespaces and veths pass
//! traffic, the gw namespace forwards, process guards and logs behave, and everything is cleaned
//! up, also after a panic. Needs root.

mod common;

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    CLIENT_IFNAME, Netns, OpenVpnClient, Topology, VNET_HOST_ADDR, VNET_SUBNET, harness_prefix_for, iperf3_client,
    iperf3_server, parse_iperf3_json, parse_ping_summary, ping, run_with_timeout, sweep_leftovers, tun_counters,
    wait_until,
};

const PING_INTERVAL: Duration = Duration::from_millis(200);

/// Namespaces currently listed by `ip netns list` (first word of each line).
fn listed_namespaces() -> HashSet<String> {
    let output = run_with_timeout(Command::new("ip").args(["netns", "list"]), Duration::from_secs(10))
        .expect("ip netns list runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Whether `pid` is gone (or only a zombie awaiting its parent).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain spaces.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// Starts a `sleep` that daemonises inside `ns`, outside any `Proc` guard, and returns its PID.
fn start_untracked_sleeper(ns: &Netns) -> u32 {
    let pid = ns.exec_ok(&["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"]);
    pid.trim().parse().expect("sh prints the background PID")
}

/// Routes between client 0 and the vnet host through the gateway's plain IP forwarding.
fn add_underlay_routes(topology: &Topology) {
    topology.client(0).ip(&["route", "add", VNET_SUBNET, "via", &topology.gateway_addr_for(0)]);
    // The vnet host only routes the VPN pool back by default; the underlay needs its own route.
    topology.vnet().ip(&["route", "add", "192.168.100.0/24", "via", common::VNET_GW_ADDR]);
}

#[test]
fn clients_reach_the_gateway_and_through_it_the_vnet_host() {
    let topology = Topology::new(2);
    for k in 0..2 {
        let result = ping(topology.client(k), &topology.gateway_addr_for(k), 3, PING_INTERVAL);
        assert!(result.all_received(), "client {k} -> gateway: {result:?}");
        assert_eq!(result.loss_pct, 0.0);
    }

    let without_route = ping(topology.client(0), VNET_HOST_ADDR, 1, PING_INTERVAL);
    assert_eq!(without_route.received, 0, "clients must not reach the vnet without a route: {without_route:?}");

    add_underlay_routes(&topology);
    let (rx_before, tx_before) = tun_counters(topology.client(0), CLIENT_IFNAME);
    let result = ping(topology.client(0), VNET_HOST_ADDR, 3, PING_INTERVAL);
    assert!(result.all_received(), "client 0 -> vnet host: {result:?}");
    let (rx_after, tx_after) = tun_counters(topology.client(0), CLIENT_IFNAME);
    // Three 84-byte ICMP packets plus Ethernet headers each way.
    assert!(rx_after - rx_before >= 3 * 98 && tx_after - tx_before >= 3 * 98, "counters did not move enough");

    // Client 1 has no route to the vnet; forwarding for client 0 must not leak to it.
    assert_eq!(ping(topology.client(1), VNET_HOST_ADDR, 1, PING_INTERVAL).received, 0);
}

#[test]
fn ping_reports_loss_when_nobody_answers() {
    let topology = Topology::new(1);
    // An unused address on client 0's subnet: ARP gets no answer.
    let result = ping(topology.client(0), "192.168.100.99", 2, PING_INTERVAL);
    assert_eq!((result.sent, result.received, result.loss_pct), (2, 0, 100.0), "{result:?}");
}

#[test]
fn iperf3_moves_bytes_both_ways_between_client_and_vnet_host() {
    let topology = Topology::new(1);
    add_underlay_routes(&topology);
    for reverse in [false, true] {
        let server = iperf3_server(topology.vnet(), VNET_HOST_ADDR);
        let result = iperf3_client(topology.client(0), VNET_HOST_ADDR, 1, reverse);
        assert!(
            result.sent_bytes > 0 && result.received_bytes > 0 && result.bits_per_second > 0.0,
            "reverse={reverse}: {result:?}"
        );
        let status = server.wait_exit(Duration::from_secs(10)).expect("one-off iperf3 server exits after the test");
        assert!(status.success(), "iperf3 server: {status}");
    }
}

#[test]
fn dropping_the_topology_kills_its_processes_and_deletes_its_namespaces() {
    let topology = Topology::new(2);
    let names = topology.namespace_names();
    assert_eq!(names.len(), 4);
    let listed = listed_namespaces();
    assert!(names.iter().all(|name| listed.contains(name)), "{names:?} not all in {listed:?}");
    let tracked = topology.gw().spawn(&["sleep", "600"], "sleep");
    let untracked_pid = start_untracked_sleeper(topology.client(1));
    let log_dir = topology.temp_dir().to_owned();
    assert!(log_dir.join("gw-sleep.log").exists());

    // The process guard outlives the topology here: its process dies with the namespace.
    drop(topology);
    let listed = listed_namespaces();
    assert!(names.iter().all(|name| !listed.contains(name)), "{names:?} still in {listed:?}");
    assert!(wait_until(Duration::from_secs(5), Duration::from_millis(20), || process_gone(untracked_pid)));
    assert_eq!(tracked.kill().and_then(|status| status.signal()), Some(libc::SIGKILL));
    drop(tracked);
    assert!(!log_dir.exists(), "a passing test's log directory is removed");
}

#[test]
fn a_panic_midway_still_cleans_up_everything() {
    let mut names = Vec::new();
    let mut pids = Vec::new();
    let mut log_dir = None;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let topology = Topology::new(2);
        names = topology.namespace_names();
        log_dir = Some(topology.temp_dir().to_owned());
        let server = topology.vnet().spawn(&["sleep", "600"], "sleeper");
        pids = vec![server.pid(), start_untracked_sleeper(topology.gw())];
        panic!("deliberate panic inside the test body");
    }));
    assert!(outcome.is_err());
    assert_eq!(names.len(), 4);
    let listed = listed_namespaces();
    assert!(names.iter().all(|name| !listed.contains(name)), "{names:?} still in {listed:?}");
    for pid in pids {
        assert!(wait_until(Duration::from_secs(5), Duration::from_millis(20), || { process_gone(pid) }), "pid {pid}");
    }
    // Logs of a failed test are kept for inspection; this one was deliberate, so tidy up.
    let log_dir = log_dir.expect("topology was built");
    assert!(log_dir.join("vnet-sleeper.log").exists(), "logs are kept after a panic");
    std::fs::remove_dir_all(log_dir).expect("remove kept log dir");
}

#[test]
fn process_logs_can_be_awaited_and_failures_carry_the_log_tail() {
    let ns = Netns::new("t");
    let talker = ns.spawn(&["sh", "-c", "echo first line; echo ready; exec sleep 600"], "talker");
    talker.wait_for_log("ready", Duration::from_secs(5)).expect("ready is logged");
    assert!(talker.log_text().starts_with("first line\nready\n"));

    let started = Instant::now();
    let error = talker.wait_for_log("never printed", Duration::from_millis(300)).expect_err("times out");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(error.contains("did not log") && error.contains("first line"), "{error}");

    let quitter = ns.spawn(&["sh", "-c", "echo giving up >&2; exit 3"], "quitter");
    let started = Instant::now();
    let error = quitter.wait_for_log("never printed", Duration::from_secs(30)).expect_err("exits first");
    assert!(started.elapsed() < Duration::from_secs(5), "an exit must end the wait early");
    assert!(error.contains("exit code 3") && error.contains("giving up"), "{error}");

    assert!(talker.is_running());
    assert_eq!(talker.kill().and_then(|status| status.signal()), Some(libc::SIGTERM));
    assert!(!talker.is_running());
}

#[test]
fn kill_escalates_to_sigkill_when_sigterm_is_ignored() {
    let ns = Netns::new("t");
    let stubborn = ns.spawn(
        &[
            "python3",
            "-c",
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ignoring', flush=True)\ntime.sleep(600)",
        ],
        "stubborn",
    );
    stubborn.wait_for_log("ignoring", Duration::from_secs(10)).expect("python starts");
    assert_eq!(stubborn.kill().and_then(|status| status.signal()), Some(libc::SIGKILL));
}

#[test]
fn sweep_removes_only_namespaces_whose_creator_is_gone() {
    /// Deletes a hand-made namespace even if an assertion fails.
    struct HandMade(String);
    impl Drop for HandMade {
        fn drop(&mut self) {
            if Path::new("/run/netns").join(&self.0).exists() {
                let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
            }
        }
    }
    let add = |name: String| {
        let status = Command::new("ip").args(["netns", "add", &name]).status().expect("ip runs");
        assert!(status.success(), "ip netns add {name}");
        HandMade(name)
    };
    let mut exited = Command::new("true").spawn().expect("true starts");
    let dead_pid = exited.id();
    exited.wait().expect("true exits");
    // The role carries our PID so that concurrent runs of this test do not collide.
    let role = format!("sweeptest{}", std::process::id());
    let orphan = add(format!("{}-{role}", harness_prefix_for(dead_pid, 0)));
    let alive = add(format!("{}-{role}", harness_prefix_for(1, 0)));

    let removed = sweep_leftovers();
    assert!(!removed.contains(&alive.0), "{removed:?}");
    // A concurrently running harness process may have swept the orphan first.
    let listed = listed_namespaces();
    assert!(!listed.contains(&orphan.0), "{} survived the sweep", orphan.0);
    assert!(listed.contains(&alive.0), "{} was swept", alive.0);
}

#[test]
fn ping_and_iperf3_output_parsers() {
    let lossy = parse_ping_summary(
        "PING 10.50.0.2 (10.50.0.2) 56(84) bytes of data.\n\n--- 10.50.0.2 ping statistics ---\n\
         5 packets transmitted, 3 received, +2 errors, 40% packet loss, time 4005ms\n",
    );
    assert_eq!((lossy.sent, lossy.received, lossy.loss_pct), (5, 3, 40.0));
    let unreachable = parse_ping_summary("ping: connect: Network is unreachable\n");
    assert_eq!((unreachable.sent, unreachable.received, unreachable.loss_pct), (0, 0, 100.0));

    // Shape of iperf3 3.12 `--json` output (tabs as iperf3 prints them), trimmed.
    let json = "{\n\t\"intervals\":\t[{\"sum\":\t{\"bytes\":\t7}}],\n\t\"end\":\t{\n\t\t\"sum_sent\":\t{\n\
                \t\t\t\"start\":\t0,\n\t\t\t\"bytes\":\t2659450880,\n\t\t\t\"bits_per_second\":\t2.1274245488e10,\n\
                \t\t\t\"sender\":\ttrue\n\t\t},\n\t\t\"sum_received\":\t{\n\t\t\t\"bytes\":\t2654076928,\n\
                \t\t\t\"bits_per_second\":\t21230237637.384617\n\t\t}\n\t}\n}\n";
    let result = parse_iperf3_json(json).expect("summary present");
    assert_eq!((result.sent_bytes, result.received_bytes), (2_659_450_880, 2_654_076_928));
    assert_eq!(result.bits_per_second, 21_230_237_637.384617);
    let refused = "{\n\t\"end\":\t{\n\t},\n\t\"error\":\t\"unable to connect to server: Connection refused\"\n}";
    assert_eq!(parse_iperf3_json(refused), Err("unable to connect to server: Connection refused".to_owned()));
}

/// OpenVPN's static-key point-to-point mode stands in for the gateway: it needs no PKI, so the
/// client helper, tun devices inside namespaces and the log waits can be checked without p2sgw.
#[test]
fn openvpn_client_helper_connects_and_reports_failures() {
    let topology = Topology::new(2);
    let key = topology.temp_dir().join("static.key");
    let key_arg = key.to_str().expect("temp paths are UTF-8");
    topology.gw().exec_ok(&["openvpn", "--genkey", "secret", key_arg]);
    let static_key_options = ["--secret", key_arg, "--cipher", "AES-256-CBC", "--auth", "SHA256", "--ping", "1"];
    let gateway = topology.gateway_addr_for(0);
    let mut peer_args = vec!["openvpn", "--dev", "tun", "--local", &gateway, "--ifconfig", "10.9.0.1", "10.9.0.2"];
    peer_args.extend(static_key_options);
    let _peer = topology.gw().spawn(&peer_args, "openvpn-peer");

    // The key is referenced relative to the profile's directory.
    let write_profile = |name: &str, transport: &str| {
        let path = topology.temp_dir().join(name);
        let profile = format!(
            "dev tun\n{transport}\nnobind\nifconfig 10.9.0.2 10.9.0.1\nsecret static.key\n\
             cipher AES-256-CBC\nauth SHA256\nping 1\n"
        );
        std::fs::write(&path, profile).expect("write profile");
        path
    };
    let profile = write_profile("client.ovpn", &format!("remote {gateway} 1194"));
    let client = OpenVpnClient::start(topology.client(0), &profile, &[]);
    client.wait_connected(Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    let result = ping(topology.client(0), "10.9.0.1", 3, PING_INTERVAL);
    assert!(result.all_received(), "ping through the tunnel: {result:?}");
    let (rx, tx) = tun_counters(topology.client(0), "tun0");
    assert!(rx >= 3 * 84 && tx >= 3 * 84, "tun0 counters rx={rx} tx={tx}");

    // Nobody listens on TCP: the client keeps retrying and logs the refusal.
    let tcp_remote = format!("proto tcp-client\nremote {} 1194", topology.gateway_addr_for(1));
    let refused = OpenVpnClient::start(topology.client(1), &write_profile("refused.ovpn", &tcp_remote), &[]);
    refused.wait_failed("Connection refused", Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    let error = refused.wait_connected(Duration::from_millis(200)).expect_err("never connects");
    assert!(error.contains("Connection refused"), "the error carries the log tail: {error}");
}
