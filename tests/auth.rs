//! End to end: authentication beyond certificates, with the real OpenVPN 2.6 client, a
//! real FreeRADIUS 3.2 (in the vnet namespace, reached through the gateway's VNet side)
//! and an OIDC issuer served over HTTPS. Needs root (run through `tests/run`).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const CONNECT: Duration = Duration::from_secs(30);

fn radius_section(servers: &[&str], extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[radius]\nservers = [{}]\nsecrets = [{DEFAULT_RADIUS_SECRET:?}]\ntimeout_secs = 2\ntries = 2\n{extra}\n",
        servers.join(", ")
    )
}

/// A file with a username and password, as `--auth-user-pass FILE` reads it.
fn credentials(topo: &Topology, name: &str, user: &str, password: &str) -> PathBuf {
    let path = topo.temp_dir().join(format!("{name}.creds"));
    std::fs::write(&path, format!("{user}\n{password}\n")).unwrap();
    path
}

fn connect_with(topo: &Topology, k: usize, profile: &Path, creds: &Path) -> OpenVpnClient {
    let client = OpenVpnClient::start(topo.client(k), profile, &["--auth-user-pass", path(creds)]);
    if let Err(e) = client.wait_connected(CONNECT) {
        panic!("client {k} did not connect: {e}");
    }
    client
}

fn refused(topo: &Topology, k: usize, profile: &Path, creds: &Path, reason: &str) -> String {
    let client =
        OpenVpnClient::start(topo.client(k), profile, &["--auth-user-pass", path(creds), "--auth-retry", "none"]);
    client.wait_failed("AUTH_FAILED", CONNECT).expect("refused with AUTH_FAILED");
    let log = client.log_text();
    assert!(log.contains(reason), "expected {reason:?} in the AUTH_FAILED:\n{}", client.log_tail(20));
    log
}

fn ping_vnet(topo: &Topology, k: usize) {
    let p = ping(topo.client(k), VNET_HOST_ADDR, 3, Duration::from_millis(200));
    assert!(p.all_received(), "client {k}: {}", p.output);
}

#[test]
fn radius_password_framed_ip_class_and_accounting() {
    let topo = Topology::new(2);
    let mut bob = RadiusUser::new("bob", "hello");
    bob.framed_ip = Some("172.16.201.77".parse().unwrap());
    bob.class = Some(b"cls-bob".to_vec());
    bob.extra_reply = vec!["Acct-Interim-Interval = 10".to_string()];
    let radius = FreeRadius::start(topo.vnet(), RadiusOptions { users: vec![bob], ..Default::default() });
    let gw = Gateway::start(
        &topo,
        GatewayOptions {
            extra: format!("[auth]\nrequire = [\"radius\"]\n{}", radius_section(&["10.50.0.2:1812"], "")),
            ..Default::default()
        },
    );
    let profile = gw.profile("anyone", "udp");
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.contains("auth-user-pass") && !text.contains("<cert>"), "a password profile without a certificate");

    let client = connect_with(&topo, 0, &profile, &credentials(&topo, "bob", "bob", "hello"));
    assert_eq!(pushed_address(&client.log_text()).as_deref(), Some("172.16.201.77"), "Framed-IP-Address honoured");
    ping_vnet(&topo, 0);
    gw.wait_for_line(&["client connected", "user=bob", "method=\"radius\""], Duration::from_secs(1)).unwrap();

    let start = radius.wait_for_accounting(|r| r.status_type == "Start", Duration::from_secs(10)).unwrap();
    assert_eq!(start.user_name.as_deref(), Some("bob"));
    assert_eq!(start.framed_ip, Some("172.16.201.77".parse().unwrap()));
    assert_eq!(start.class.as_deref(), Some(&b"cls-bob"[..]), "Class echoed");
    let interim = radius
        .wait_for_accounting(
            |r| r.status_type == "Interim-Update" && r.input_octets.unwrap_or(0) > 0,
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(interim.session_id, start.session_id);
    drop(client); // SIGTERM: the client says goodbye
    let stop = radius.wait_for_accounting(|r| r.status_type == "Stop", Duration::from_secs(15)).unwrap();
    assert_eq!(stop.session_id, start.session_id);
    assert!(
        stop.input_octets.unwrap_or(0) > 0 && stop.output_octets.unwrap_or(0) > 0,
        "octets counted both ways: {stop:?}"
    );
    assert_eq!(stop.terminate_cause.as_deref(), Some("User-Request"));

    // Wrong password: refused with a reason, nothing else changes.
    refused(&topo, 1, &profile, &credentials(&topo, "bad", "bob", "wrong"), "AUTH_FAILED");
    gw.wait_for_line(&["authentication refused", "user=bob", "radius_reject"], Duration::from_secs(5)).unwrap();
}

/// Runs the real client on a pseudo-terminal whose input is a FIFO, as a user would
/// type at its prompt.
struct Interactive {
    client: Proc,
    input: std::fs::File,
}

impl Interactive {
    fn start(topo: &Topology, k: usize, profile: &Path, creds: &Path) -> Interactive {
        let fifo = topo.temp_dir().join(format!("tty-c{k}"));
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        let command = format!(
            "script -qfec 'openvpn --cd {dir} --config {profile} --auth-user-pass {creds} --auth-retry interact --verb 4' /dev/null < {fifo}",
            dir = path(profile.parent().unwrap()),
            profile = path(profile),
            creds = path(creds),
            fifo = path(&fifo),
        );
        let client = topo.client(k).spawn(&["sh", "-c", &command], "openvpn-tty");
        let input = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        Interactive { client, input }
    }

    fn answer(&mut self, text: &str) {
        self.input.write_all(format!("{text}\n").as_bytes()).unwrap();
    }
}

#[test]
fn mfa_challenge_is_answered_at_the_real_clients_prompt() {
    let topo = Topology::new(2);
    let mut carol = RadiusUser::new("carol", "hello");
    carol.one_time_code = Some("123456".into());
    let radius = FreeRadius::start(topo.vnet(), RadiusOptions { users: vec![carol], ..Default::default() });
    let gw = Gateway::start(
        &topo,
        GatewayOptions {
            extra: format!("[auth]\nrequire = [\"radius\"]\n{}", radius_section(&["10.50.0.2:1812"], "")),
            ..Default::default()
        },
    );
    let profile = gw.profile("carol", "udp");
    let creds = credentials(&topo, "carol", "carol", "hello");
    let mut typing = Interactive::start(&topo, 0, &profile, &creds);
    typing.client.wait_for_log(&format!("CHALLENGE: {MFA_PROMPT}"), CONNECT).expect("the client shows the prompt");
    typing.answer("123456");
    typing.client.wait_for_log(OPENVPN_CONNECTED_MARKER, CONNECT).expect("connected with the one-time code");
    ping_vnet(&topo, 0);
    assert!(radius.count_in_log("Access-Challenge") >= 1, "FreeRADIUS sent the challenge");

    // A wrong code is refused.
    let mut wrong = Interactive::start(&topo, 1, &profile, &creds);
    wrong.client.wait_for_log(&format!("CHALLENGE: {MFA_PROMPT}"), CONNECT).unwrap();
    wrong.answer("000000");
    wrong.client.wait_for_log(MFA_WRONG_CODE, CONNECT).expect("the RADIUS Reply-Message reaches the client");
    gw.wait_for_line(&["authentication refused", "user=carol"], Duration::from_secs(5)).unwrap();
}

#[test]
fn groups_from_filter_id_and_azure_policy_choose_the_pool() {
    let topo = Topology::new(3);
    let mut eng = RadiusUser::new("erin", "pw");
    eng.filter_id = Some("engineering".into());
    let mut azure = RadiusUser::new("ada", "pw");
    azure.ms_azure_policy_id = Some(vec![0x6a, 0xd1, 0xbd, 0x01, 0x02]);
    let plain = RadiusUser::new("paul", "pw");
    let _radius =
        FreeRadius::start(topo.vnet(), RadiusOptions { users: vec![eng, azure, plain], ..Default::default() });
    let gw = Gateway::start(
        &topo,
        GatewayOptions {
            group_pools: vec!["engineering=172.16.202.0/24".into(), "6ad1bd0102=172.16.203.0/24".into()],
            extra: format!("[auth]\nrequire = [\"radius\"]\n{}", radius_section(&["10.50.0.2:1812"], "")),
            ..Default::default()
        },
    );
    let profile = gw.profile("any", "udp");
    let expected = [("erin", "172.16.202.2"), ("ada", "172.16.203.2"), ("paul", "172.16.201.2")];
    let mut clients = Vec::new();
    for (k, (user, address)) in expected.iter().enumerate() {
        let c = connect_with(&topo, k, &profile, &credentials(&topo, user, user, "pw"));
        assert_eq!(pushed_address(&c.log_text()).as_deref(), Some(*address), "{user}'s pool");
        ping_vnet(&topo, k);
        clients.push(c);
    }
}

#[test]
fn second_radius_server_answers_when_the_first_is_down_and_both_down_is_a_clear_refusal() {
    let topo = Topology::new(3);
    // Only the second server runs; the first address has nobody listening.
    let second = FreeRadius::start(
        topo.vnet(),
        RadiusOptions {
            auth_port: 11812,
            acct_port: 11813,
            users: vec![RadiusUser::new("bob", "hello")],
            ..Default::default()
        },
    );
    let gw = Gateway::start(
        &topo,
        GatewayOptions {
            extra: format!(
                "[auth]\nrequire = [\"certificate\", \"radius\"]\n{}",
                radius_section(
                    &["10.50.0.2:1812", "10.50.0.2:11812"],
                    "accounting_servers = [\"10.50.0.2:1813\", \"10.50.0.2:11813\"]"
                )
            ),
            ..Default::default()
        },
    );
    gw.issue("alice");
    let password_profile = gw.profile("bob", "udp");
    let started = Instant::now();
    let _bob = connect_with(&topo, 0, &password_profile, &credentials(&topo, "bob", "bob", "hello"));
    eprintln!("connected through the second RADIUS server after {:?}", started.elapsed());
    ping_vnet(&topo, 0);

    // A certificate user keeps working while no RADIUS server answers.
    let alice = OpenVpnClient::start(topo.client(1), &gw.profile("alice", "udp"), &[]);
    alice.wait_connected(CONNECT).unwrap();
    second.stop();
    let pinger = topo.client(1).spawn(&["ping", "-c", "40", "-i", "0.2", VNET_HOST_ADDR], "ping");
    refused(
        &topo,
        2,
        &password_profile,
        &credentials(&topo, "bob2", "bob", "hello"),
        "no authentication server answered",
    );
    pinger.wait_exit(Duration::from_secs(30)).unwrap();
    let p = parse_ping_summary(&pinger.log_text());
    assert!(p.sent >= 40 && p.received == p.sent, "alice's traffic while RADIUS was down: {}", p.output);
    gw.wait_for_line(&["RADIUS authentication failed", "10.50.0.2:1812", "10.50.0.2:11812"], Duration::from_secs(1))
        .unwrap();
}

#[test]
fn certificate_and_radius_both_required() {
    let topo = Topology::new(2);
    let _radius = FreeRadius::start(
        topo.vnet(),
        RadiusOptions { users: vec![RadiusUser::new("alice", "pw")], ..Default::default() },
    );
    let gw = Gateway::start(
        &topo,
        GatewayOptions {
            extra: format!("[auth]\nrequire = [\"certificate+radius\"]\n{}", radius_section(&["10.50.0.2:1812"], "")),
            ..Default::default()
        },
    );
    gw.issue("alice");
    let profile = gw.profile("alice", "udp");
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.contains("<cert>") && text.contains("auth-user-pass"));
    let _ok = connect_with(&topo, 0, &profile, &credentials(&topo, "ok", "alice", "pw"));
    ping_vnet(&topo, 0);
    gw.wait_for_line(&["client connected", "user=alice", "method=\"radius\"", "thumbprint="], Duration::from_secs(1))
        .unwrap();
    refused(&topo, 1, &profile, &credentials(&topo, "bad", "alice", "nope"), "AUTH_FAILED");
}

// ---- tokens ----

const AUDIENCE: &str = "api://p2sgw-test";

fn token_gateway(topo: &Topology, oidc: &OidcServer, token_extra: &str, reneg_secs: u32) -> Gateway {
    Gateway::start(
        topo,
        GatewayOptions {
            reneg_secs,
            group_pools: vec!["vpn-admins=172.16.204.0/24".into()],
            extra: format!(
                "[auth]\nrequire = [\"token\"]\n\n[token]\nissuers = [{:?}]\naudiences = [{AUDIENCE:?}]\nca_files = [{:?}]\n{token_extra}\n",
                oidc.issuer_url(),
                path(oidc.ca_cert_path()),
            ),
            ..Default::default()
        },
    )
}

fn token_creds(topo: &Topology, name: &str, token: &str) -> PathBuf {
    credentials(topo, name, "token", token)
}

#[test]
fn tokens_of_each_algorithm_connect_and_bad_tokens_are_refused() {
    let topo = Topology::new(2);
    let mut issuer = Issuer::new();
    let oidc = OidcServer::start(topo.vnet(), OidcOptions::default(), &issuer.jwks_json());
    let gw = token_gateway(&topo, &oidc, "required_claims = [\"amr=mfa\"]\nmin_key_refresh_secs = 2", 3600);
    let profile = gw.profile("token-user", "udp");
    let claims = |sub: &str, valid: i64| {
        let mut c = standard_claims(oidc.issuer_url(), AUDIENCE, sub, valid);
        c["amr"] = json!(["pwd", "mfa"]);
        c["upn"] = json!(format!("{sub}@example.test"));
        c
    };
    for (k, alg) in JwsAlg::ALL.iter().enumerate() {
        let token = issuer.mint(*alg, &claims(&format!("user-{}", alg.name()), 600));
        let client = connect_with(&topo, 0, &profile, &token_creds(&topo, &format!("t{k}"), &token));
        ping_vnet(&topo, 0);
        drop(client);
        gw.wait_for_line(
            &["client connected", "method=\"token\"", &format!("user-{}@example.test", alg.name())],
            Duration::from_secs(5),
        )
        .unwrap();
    }
    // Refusals, each with its reason.
    let expired = issuer.mint(JwsAlg::Rs256, &claims("late", -600));
    refused(&topo, 1, &profile, &token_creds(&topo, "expired", &expired), "token expired");
    let mut wrong_aud = claims("x", 600);
    wrong_aud["aud"] = json!("api://someone-else");
    refused(&topo, 1, &profile, &token_creds(&topo, "aud", &issuer.mint(JwsAlg::Es256, &wrong_aud)), "audience");
    let mut no_mfa = claims("y", 600);
    no_mfa["amr"] = json!(["pwd"]);
    refused(&topo, 1, &profile, &token_creds(&topo, "mfa", &issuer.mint(JwsAlg::Rs256, &no_mfa)), "amr");

    // Key rotation: a token signed with a new key is accepted once the issuer serves it
    // (the unknown key id makes the gateway fetch the keys again).
    issuer.rotate();
    oidc.set_jwks(&issuer.jwks_json());
    let rotated = issuer.mint(JwsAlg::Rs256, &claims("rotated", 600));
    let client = connect_with(&topo, 0, &profile, &token_creds(&topo, "rotated", &rotated));
    ping_vnet(&topo, 0);
    drop(client);
    gw.wait_for_line(&["unknown signing key: fetching"], Duration::from_secs(1)).unwrap();

    // A key the issuer never published is refused, after at most one more fetch.
    std::thread::sleep(Duration::from_secs(2)); // min_key_refresh_secs
    let stranger = Issuer::new().mint(JwsAlg::Rs256, &claims("z", 600));
    refused(&topo, 1, &profile, &token_creds(&topo, "stranger", &stranger), "unknown signing key");
}

#[test]
fn token_groups_choose_the_pool_and_an_expired_token_ends_the_session_at_renegotiation() {
    let topo = Topology::new(1);
    let issuer = Issuer::new();
    let oidc = OidcServer::start(topo.vnet(), OidcOptions::default(), &issuer.jwks_json());
    let gw = token_gateway(&topo, &oidc, "clock_skew_secs = 0", 10);
    let profile = gw.profile("admin", "udp");
    let mut claims = standard_claims(oidc.issuer_url(), AUDIENCE, "admin-1", 15);
    claims["groups"] = json!(["vpn-admins"]);
    let token = issuer.mint(JwsAlg::Es256, &claims);
    let client = connect_with(&topo, 0, &profile, &token_creds(&topo, "admin", &token));
    assert_eq!(pushed_address(&client.log_text()).as_deref(), Some("172.16.204.2"), "group pool from the token");
    ping_vnet(&topo, 0);
    // Renegotiations every 10 s; the token expires 15 s after issue.
    client.wait_for_log("AUTH_FAILED", Duration::from_secs(40)).expect("cut at the renegotiation after expiry");
    gw.wait_for_line(&["authentication refused", "token expired"], Duration::from_secs(5)).unwrap();
}

#[test]
fn radius_session_timeout_ends_the_session_and_accounting_says_why() {
    let topo = Topology::new(1);
    let mut dave = RadiusUser::new("dave", "pw");
    dave.session_timeout = Some(4);
    let radius = FreeRadius::start(topo.vnet(), RadiusOptions { users: vec![dave], ..Default::default() });
    let gw = Gateway::start(
        &topo,
        GatewayOptions {
            extra: format!("[auth]\nrequire = [\"radius\"]\n{}", radius_section(&["10.50.0.2:1812"], "")),
            ..Default::default()
        },
    );
    let client = connect_with(&topo, 0, &gw.profile("dave", "udp"), &credentials(&topo, "dave", "dave", "pw"));
    let connected = Instant::now();
    client
        .wait_for_log("Connection reset command was pushed by server", Duration::from_secs(10))
        .expect("told to reconnect");
    let after = connected.elapsed();
    assert!(after >= Duration::from_secs(3), "not before its time: {after:?}");
    gw.wait_for_line(&["session time limit reached", "user=dave"], Duration::from_secs(1)).unwrap();
    let stop = radius.wait_for_accounting(|r| r.status_type == "Stop", Duration::from_secs(10)).unwrap();
    assert_eq!(stop.terminate_cause.as_deref(), Some("Session-Timeout"));
}
