//! End to end: operating a running gateway through its admin API and the CLI verbs that
//! call it, with real OpenVPN clients connected. Needs root (run through `tests/run`).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const CONNECT: Duration = Duration::from_secs(30);

fn connect(topo: &Topology, k: usize, profile: &std::path::Path) -> OpenVpnClient {
    let client = OpenVpnClient::start(topo.client(k), profile, &[]);
    if let Err(e) = client.wait_connected(CONNECT) {
        panic!("client {k} did not connect: {e}");
    }
    client
}

/// `p2sgw ARGS --config <the gateway's>`, which must succeed.
fn cli(gw: &Gateway, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--config", path(&gw.config_path)]);
    p2sgw(&all)
}

/// `p2sgw ARGS --config <the gateway's>`, which must fail; returns its stderr.
fn cli_fails(gw: &Gateway, args: &[&str]) -> String {
    let out = Command::new(P2SGW).args(args).args(["--config", path(&gw.config_path)]).output().expect("run p2sgw");
    assert!(!out.status.success(), "p2sgw {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn sessions_are_listed_disconnected_and_revoked_at_once() {
    let topo = Topology::new(2);
    let gw = Gateway::start(&topo, GatewayOptions::default());
    gw.issue("alice");
    let bob_thumbprint = gw.issue("bob");
    let alice = connect(&topo, 0, &gw.profile("alice", "udp"));
    let bob = connect(&topo, 1, &gw.profile("bob", "tcp"));
    // Written now: a revoked certificate gets no profile.
    let bob_udp_profile = gw.profile("bob", "udp");

    let before = gw.sessions();
    assert_eq!(before.len(), 2, "{before:?}");
    let a = session_of(&before, "alice").expect("alice listed");
    assert_eq!(a["protocol"], "openvpn-udp");
    assert_eq!(a["auth"], "certificate");
    assert_eq!(a["cipher"], "AES-256-GCM");
    assert!(a["virtual_address"].as_str().unwrap().starts_with("172.16.201."), "{a}");
    assert!(a["public_address"].as_str().unwrap().starts_with(&topo.client_addr_for(0)), "{a}");
    assert_eq!(session_of(&before, "bob").unwrap()["protocol"], "openvpn-tcp");
    assert_eq!(session_of(&before, "bob").unwrap()["thumbprint"], bob_thumbprint.as_str());

    let p = ping(topo.client(0), VNET_HOST_ADDR, 5, Duration::from_millis(100));
    assert!(p.all_received(), "{}", p.output);
    let after = gw.sessions();
    let (a0, a1) = (a, session_of(&after, "alice").unwrap());
    for counter in ["bytes_in", "bytes_out", "packets_in", "packets_out"] {
        assert!(a1[counter].as_u64() > a0[counter].as_u64(), "{counter} grew: {a0} → {a1}");
    }
    let table = cli(&gw, &["sessions"]);
    assert!(table.contains("alice") && table.contains("bob") && table.contains("2 session(s)"), "{table}");

    // Disconnect alice: her client is told, her address goes back to the pool.
    let id = a1["id"].as_u64().unwrap().to_string();
    let out = cli(&gw, &["disconnect", &id]);
    assert!(out.contains(&id), "{out}");
    // Connected clients: wait for the notice itself (wait_failed stops at "connected").
    alice.wait_for_log("disconnected by the administrator", Duration::from_secs(5)).expect("alice's client is told");
    gw.wait_for_line(&["client disconnected", "user=alice"], Duration::from_secs(5)).unwrap();
    assert!(session_of(&gw.sessions(), "alice").is_none());
    let err = cli_fails(&gw, &["disconnect", &id]);
    assert!(err.contains(&format!("no session {id}")), "{err}");
    let metrics = gw.metrics();
    assert!(metrics.contains("p2sgw_pool_addresses{state=\"in_use\"} 1"), "alice's address is free: {metrics}");

    // Revoke bob by thumbprint: his live session is cut within 2 s.
    let started = Instant::now();
    let out = cli(&gw, &["revoke", &bob_thumbprint]);
    assert!(out.contains("sessions cut: 1"), "{out}");
    bob.wait_for_log("AUTH_FAILED", Duration::from_secs(2)).expect("bob's client is cut");
    assert!(wait_until(Duration::from_secs(2), Duration::from_millis(20), || gw.sessions().is_empty()));
    eprintln!("revocation cut the session in {:?}", started.elapsed());
    let bob_again = OpenVpnClient::start(topo.client(1), &bob_udp_profile, &[]);
    bob_again.wait_failed("TLS Error", CONNECT).expect("a revoked certificate is refused");
}

#[test]
fn metrics_parse_and_the_https_api_demands_its_token() {
    let topo = Topology::new(1);
    let token_file = topo.temp_dir().join("admin-token");
    let token = "0123456789abcdef0123456789abcdef-test-token";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let gw = Gateway::start(
        &topo,
        GatewayOptions {
            extra: format!("[admin]\ntcp = \"127.0.0.1:9443\"\ntoken_file = \"{}\"\n", token_file.display()),
            ..GatewayOptions::default()
        },
    );
    gw.issue("alice");
    let _alice = connect(&topo, 0, &gw.profile("alice", "udp"));
    let p = ping(topo.client(0), VNET_HOST_ADDR, 3, Duration::from_millis(100));
    assert!(p.all_received(), "{}", p.output);

    // Parsed by the Prometheus project's own OpenMetrics parser (Debian's python3-prometheus-client).
    let text = gw.metrics();
    let parsed = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
             for f in parse(sys.stdin.read()):\n    for s in f.samples: print(s.name, s.labels, s.value)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().expect("stdin").write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run the parser");
    let samples = String::from_utf8_lossy(&parsed.stdout);
    assert!(
        parsed.status.success(),
        "the OpenMetrics parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    for expected in [
        "p2sgw_sessions {'protocol': 'openvpn-udp', 'auth': 'certificate'} 1",
        "p2sgw_handshakes_total {'protocol': 'openvpn-udp', 'auth': 'certificate'} 1",
        "p2sgw_handshake_duration_seconds_count {} 1",
        "p2sgw_drops_total {'reason': 'decrypt'} 0",
        "p2sgw_pool_addresses {'state': 'in_use'} 1",
    ] {
        assert!(samples.contains(expected), "{expected:?} not in:\n{samples}");
    }
    let bytes_from_clients = samples
        .lines()
        .find(|l| l.starts_with("p2sgw_tunnel_bytes_total {'direction': 'from_clients'}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("tunnel bytes");
    assert!(bytes_from_clients >= 3.0 * 84.0, "three pings counted: {bytes_from_clients}");

    // Over HTTPS (inside the gateway's namespace): no token, a wrong one, the right one.
    let curl = |extra: &[&str]| {
        let mut args = vec!["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(extra);
        args.push("https://127.0.0.1:9443/v1/sessions");
        String::from_utf8_lossy(&topo.gw().exec(&args).stdout).into_owned()
    };
    assert_eq!(curl(&[]), "401");
    assert_eq!(curl(&["-H", "Authorization: Bearer not-the-token-0000000000000000000000"]), "401");
    let authorization = format!("Authorization: Bearer {token}");
    assert_eq!(curl(&["-H", &authorization]), "200");
}

#[test]
fn reload_adds_a_route_keeps_sessions_flowing_and_refuses_a_bad_config() {
    let topo = Topology::new(2);
    let gw = Gateway::start(&topo, GatewayOptions::default());
    gw.issue("alice");
    gw.issue("bob");
    let alice = connect(&topo, 0, &gw.profile("alice", "udp"));
    let _bob = connect(&topo, 1, &gw.profile("bob", "udp"));
    assert!(!alice.log_text().contains("10.60.0.0"), "the new route is not there yet");

    // Bob pings throughout while the configuration changes under him.
    let pinger = topo.client(1).spawn(&["ping", "-n", "-c", "200", "-i", "0.04", VNET_HOST_ADDR], "ping");
    std::thread::sleep(Duration::from_millis(1500));
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let good = config.replace(r#"routes = ["10.50.0.0/24"]"#, r#"routes = ["10.50.0.0/24", "10.60.0.0/24"]"#);
    assert_ne!(good, config, "the test edits the routes line");
    std::fs::write(&gw.config_path, &good).unwrap();
    let out = cli(&gw, &["reload"]);
    assert!(out.contains("network"), "{out}");

    // A broken file is refused with its line, and the running configuration stays.
    std::fs::write(&gw.config_path, good.replace(r#"pool = "172.16.201.0/24""#, r#"pool = "172.16.201.0/33""#))
        .unwrap();
    let err = cli_fails(&gw, &["reload"]);
    assert!(err.contains("gw.toml:") && err.contains("pool"), "{err}");
    std::fs::write(&gw.config_path, &good).unwrap();
    // SIGHUP reloads too (systemd's ExecReload).
    gw.process.signal(libc::SIGHUP);
    gw.wait_for_line(&["configuration reloaded"], Duration::from_secs(5)).unwrap();

    pinger.wait_exit(Duration::from_secs(20)).expect("ping finishes");
    let summary = parse_ping_summary(&pinger.log_text());
    let lost = summary.sent - summary.received;
    assert!(summary.sent == 200 && lost <= 1, "bob lost {lost} of {} pings across the reloads", summary.sent);
    assert_eq!(gw.sessions().len(), 2, "both sessions survived");

    // Alice reconnects and receives the new route.
    alice.kill();
    let alice = connect(&topo, 0, &gw.profile("alice", "udp"));
    assert!(alice.log_text().contains("route 10.60.0.0 255.255.255.0"), "the new route is pushed");
}

#[test]
fn the_client_package_is_used_as_is() {
    let topo = Topology::new(1);
    // With IKEv2 on, the package also holds the strongSwan, Mac and Windows profiles (the
    // strongSwan one connects in tests/ikev2.rs).
    let gw = Gateway::start(&topo, GatewayOptions { extra: "[ikev2]\nenabled = true\n".into(), ..Default::default() });
    gw.issue("alice");
    let zip = topo.temp_dir().join("alice.zip");
    let out = cli(&gw, &["client-package", "--name", "alice", "--out", path(&zip)]);
    assert!(out.contains("wrote"), "{out}");
    let unpacked = topo.temp_dir().join("alice-package");
    let unzip = Command::new("/usr/bin/python3")
        .args(["-m", "zipfile", "-e", path(&zip), path(&unpacked)])
        .output()
        .expect("run python3 -m zipfile");
    assert!(unzip.status.success(), "{}", String::from_utf8_lossy(&unzip.stderr));

    // The OpenVPN profile connects as it is.
    let client = connect(&topo, 0, &unpacked.join("OpenVPN/vpnconfig.ovpn"));
    let p = ping(topo.client(0), VNET_HOST_ADDR, 3, Duration::from_millis(100));
    assert!(p.all_received(), "{}", p.output);
    drop(client);

    // The settings parse as XML and say what the gateway pushes; the root is the PKI's CA.
    let settings = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as ET\nr = ET.parse(sys.argv[1]).getroot()\n\
             print(r.tag, r.findtext('VpnServer'), [e.text for e in r.iter('Route')], [e.text for e in r.iter('DnsServer')], r.findtext('ServerCertRootThumbprint'))",
            path(&unpacked.join("Generic/VpnSettings.xml")),
        ])
        .output()
        .expect("run python3");
    let parsed = String::from_utf8_lossy(&settings.stdout);
    assert!(settings.status.success(), "{}", String::from_utf8_lossy(&settings.stderr));
    assert!(parsed.starts_with(&format!("VpnProfile {GATEWAY_NAME} ['10.50.0.0/24'] ['10.50.0.53']")), "{parsed}");
    let der = std::fs::read(unpacked.join("Generic/VpnServerRoot.cer")).unwrap();
    let fingerprint = Command::new("openssl")
        .args([
            "x509",
            "-inform",
            "DER",
            "-noout",
            "-fingerprint",
            "-sha1",
            "-in",
            path(&unpacked.join("Generic/VpnServerRoot.cer")),
        ])
        .output()
        .expect("run openssl");
    let fingerprint = String::from_utf8_lossy(&fingerprint.stdout).to_uppercase().replace(':', "");
    assert!(
        !der.is_empty() && fingerprint.contains(parsed.split_whitespace().last().unwrap()),
        "{fingerprint} / {parsed}"
    );

    // The Mac profile is a plist with the IKEv2, root CA and identity payloads.
    let mac = unpacked.join(format!("Mac/{GATEWAY_NAME}.mobileconfig"));
    let plist = python(
        "import plistlib, sys\np = plistlib.load(open(sys.argv[1], 'rb'))\n\
         kinds = sorted(c['PayloadType'] for c in p['PayloadContent'])\n\
         vpn = next(c for c in p['PayloadContent'] if c['PayloadType'] == 'com.apple.vpn.managed')\n\
         print(kinds, vpn['VPNType'], vpn['IKEv2']['RemoteAddress'], vpn['IKEv2']['AuthenticationMethod'])",
        &[path(&mac)],
    );
    assert_eq!(
        plist.trim(),
        format!(
            "['com.apple.security.pkcs12', 'com.apple.security.root', 'com.apple.vpn.managed'] IKEv2 {GATEWAY_NAME} \
             Certificate"
        )
    );

    // No PowerShell on Debian: the Windows script is checked by a tokenizer that follows the
    // PowerShell language specification's quoting rules (single-quoted strings with '' inside,
    // double-quoted with ` escapes, comments, here-strings) and needs every string closed and
    // every bracket matched, and the cmdlets it must call.
    let script = unpacked.join("WindowsAmd64/p2sgw-vpn.ps1");
    let checked = python(POWERSHELL_CHECK, &[path(&script)]);
    assert_eq!(checked.trim(), "ok", "{checked}");
    let text = std::fs::read_to_string(&script).unwrap();
    for cmdlet in
        ["Import-Certificate", "Add-VpnConnection", "Set-VpnConnectionIPsecConfiguration", "Add-VpnConnectionRoute"]
    {
        assert!(text.contains(cmdlet), "{cmdlet} in\n{text}");
    }

    // The same package from the admin API; an unknown user gets a reason, not a zip.
    let socket = gw.state_dir.join("admin.sock");
    let fetch = |query: &str| {
        Command::new("curl")
            .args(["-sS", "--unix-socket", path(&socket), &format!("http://p2sgw/v1/client-package{query}")])
            .output()
            .expect("run curl")
            .stdout
    };
    let zip_bytes = fetch("?name=alice");
    assert!(zip_bytes.starts_with(b"PK\x03\x04"), "a zip");
    assert!(zip_bytes.windows(22).any(|w| w == b"OpenVPN/vpnconfig.ovpn"), "with the OpenVPN profile");
    let refusal = String::from_utf8_lossy(&fetch("?name=mallory")).into_owned();
    assert!(refusal.contains("no client certificate named"), "{refusal}");

    // The running gateway says nothing about stale packages until the settings change.
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        config.replace(r#"dns_servers = ["10.50.0.53"]"#, r#"dns_servers = ["10.50.0.54"]"#),
    )
    .unwrap();
    assert!(!gw.log().contains("regenerate them"));
    cli(&gw, &["reload"]);
    gw.wait_for_line(&["client packages were made", "regenerate them"], Duration::from_secs(5)).unwrap();
}

fn python(program: &str, args: &[&str]) -> String {
    let out = Command::new("/usr/bin/python3").arg("-c").arg(program).args(args).output().expect("run python3");
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PowerShell tokenizer for the syntax check: strings, comments and brackets.
const POWERSHELL_CHECK: &str = r#"
import sys
text = open(sys.argv[1], encoding='utf-8-sig').read()
closers = {')': '(', '}': '{', ']': '['}
stack, i, n = [], 0, len(text)
def fail(why):
    line = text.count('\n', 0, i) + 1
    print(f'line {line}: {why}'); sys.exit(0)
while i < n:
    c = text[i]
    if text.startswith("@'", i) or text.startswith('@"', i):
        end = text.find('\n' + text[i + 1] + '@', i)
        if end < 0: fail('unterminated here-string')
        i = end + 3
    elif text.startswith('<#', i):
        end = text.find('#>', i)
        if end < 0: fail('unterminated block comment')
        i = end + 2
    elif c == '#':
        end = text.find('\n', i)
        i = n if end < 0 else end
    elif c in "'\u2018\u2019":
        i += 1
        while True:
            if i >= n: fail('unterminated single-quoted string')
            if text[i] in "'\u2018\u2019":
                if i + 1 < n and text[i + 1] in "'\u2018\u2019": i += 2; continue
                i += 1; break
            i += 1
    elif c == '"':
        i += 1
        while True:
            if i >= n: fail('unterminated double-quoted string')
            if text[i] == '`': i += 2; continue
            if text[i] == '"':
                if i + 1 < n and text[i + 1] == '"': i += 2; continue
                i += 1; break
            i += 1
    elif c == '`':
        i += 2
    else:
        if c in '({[': stack.append(c)
        elif c in ')}]':
            if not stack or stack.pop() != closers[c]: fail(f'unmatched {c}')
        i += 1
if stack: fail(f'unclosed {stack[-1]}')
print('ok')
"#;
