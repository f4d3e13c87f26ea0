//! End to end: IKEv2 with the real strongSwan client (charon with kernel-libipsec, ESP in
//! userspace as on these machines) in client namespaces, through p2sgw to the vnet host.
//! The client's settings come from the gateway's own client package where the scenario
//! allows (certificates); EAP-MSCHAPv2 and EAP-TLS are checked by a real FreeRADIUS. Needs root (run
//! through `tests/run`).

mod common;

use std::io::Read as _;
use std::time::Duration;

use common::strongswan::{Charon, ClientOptions, IkePki, KeyType, client_conf};
use common::*;

/// The connection and CHILD SA name in the gateway's strongSwan profile.
const PACKAGE_CONNECTION: &str = "p2sgw";

/// A gateway with IKEv2 and two workers (a client's IKE and ESP steered to the one that
/// owns its SA; see `assert_steered`).
fn ikev2_gateway(topo: &Topology, pki_key: &'static str, extra: &str) -> Gateway {
    Gateway::start(
        topo,
        GatewayOptions {
            pki_key,
            extra: format!("[dataplane]\nworkers = 2\n\n[ikev2]\nenabled = true\ndpd_secs = 2\n\n{extra}"),
            ..Default::default()
        },
    )
}

/// No IKE message had to be passed to its SA's worker by mailbox: the SO_REUSEPORT
/// programs brought every one there (an IKE_SA_INIT request, whose responder SPI is not
/// chosen yet, goes where the kernel's hash puts it, and that worker becomes the owner).
fn assert_steered(gw: &Gateway) {
    let metrics = gw.metrics();
    assert_eq!(metric_sum(&metrics, "p2sgw_worker_ike_mailbox_passes_total"), 0, "{metrics}");
}

/// Issues `name` and starts a charon in client namespace `k` loaded with the strongSwan
/// files of the gateway's client package for `name`.
fn client_from_package(topo: &Topology, gw: &Gateway, k: usize, name: &str) -> Charon {
    gw.issue(name);
    let zip_path = topo.temp_dir().join(format!("{name}-package.zip"));
    p2sgw(&["client-package", "--config", path(&gw.config_path), "--name", name, "--out", path(&zip_path)]);
    let charon = Charon::start(topo.client(k), topo.temp_dir(), name);
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&zip_path).expect("package")).expect("a zip");
    let mut conf = None;
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).expect("zip entry");
        let Some(relative) = file.name().strip_prefix("strongSwan/").map(str::to_string) else { continue };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).expect("read zip entry");
        let target = charon.swanctl_dir().join(&relative);
        std::fs::create_dir_all(target.parent().expect("a directory")).expect("mkdir");
        std::fs::write(&target, bytes).expect("write profile file");
        if relative == "swanctl.conf" {
            conf = Some(target);
        }
    }
    let conf = conf.expect("the package has strongSwan/swanctl.conf");
    charon.swanctl_ok(&["--load-all", "--file", path(&conf)]).unwrap_or_else(|e| panic!("{e}\n{}", charon.log()));
    charon
}

fn cert_options(gw: &Gateway, topo: &Topology, k: usize, name: &str) -> ClientOptions {
    gw.issue(name);
    let clients = gw.pki_dir().join("clients");
    ClientOptions::certificate(
        &topo.gateway_addr_for(k),
        &gw.pki_dir().join("ca.crt"),
        &clients.join(format!("{name}.crt")),
        &clients.join(format!("{name}.key")),
    )
}

fn start_client(topo: &Topology, k: usize, name: &str, opts: &ClientOptions) -> Charon {
    let charon = Charon::start(topo.client(k), topo.temp_dir(), name);
    charon.load_swanctl(&client_conf(opts));
    charon
}

fn wait_for(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    assert!(wait_until(timeout, Duration::from_millis(200), done), "timed out after {timeout:?} waiting for {what}");
}

fn ping_vnet(topo: &Topology, k: usize) -> bool {
    ping(topo.client(k), VNET_HOST_ADDR, 3, Duration::from_millis(200)).all_received()
}

fn bytes(session: &serde_json::Value, key: &str) -> u64 {
    session[key].as_u64().unwrap_or_else(|| panic!("{key} in {session}"))
}

fn certificate_client_reaches_the_vnet(pki_key: &'static str) {
    let topo = Topology::new(1);
    let gw = ikev2_gateway(&topo, pki_key, "");
    let alice = client_from_package(&topo, &gw, 0, "alice");
    alice.initiate(PACKAGE_CONNECTION, PACKAGE_CONNECTION).unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
    let address = alice.virtual_ip().expect("a virtual IP");
    assert!(address.to_string().starts_with("172.16.201."), "{address} is from the pool");
    assert!(ping_vnet(&topo, 0), "ping through the tunnel\n{}\n{}", alice.log(), gw.log());

    // Bulk traffic both ways, counted by the client's ESP SAs and by the gateway.
    for reverse in [false, true] {
        let _server = iperf3_server(topo.vnet(), VNET_HOST_ADDR);
        let result = iperf3_client(topo.client(0), VNET_HOST_ADDR, 2, reverse);
        assert!(result.received_bytes > 1_000_000, "iperf3 (reverse: {reverse}): {result:?}");
    }
    let esp = alice.esp_counters(PACKAGE_CONNECTION).expect("ESP counters");
    assert!(esp.in_bytes > 1_000_000 && esp.out_bytes > 1_000_000, "{esp:?}");

    let sessions = gw.sessions();
    let session = session_of(&sessions, "alice").expect("alice in the session list");
    assert_eq!(session["protocol"], "ikev2");
    assert_eq!(session["auth"], "certificate");
    assert_eq!(session["virtual_address"], address.to_string());
    assert!(bytes(session, "bytes_in") > 1_000_000 && bytes(session, "bytes_out") > 1_000_000, "{session}");
    assert_steered(&gw);

    // The client leaves: its session ends at once and the address is free again.
    alice.terminate(PACKAGE_CONNECTION).unwrap();
    wait_for("the session to end", Duration::from_secs(10), || gw.sessions().is_empty());
    gw.wait_for_line(&["client disconnected", "alice", "reason=client disconnected"], Duration::from_secs(5)).unwrap();
}

#[test]
fn ecdsa_certificate_from_the_client_package_reaches_the_vnet() {
    certificate_client_reaches_the_vnet("ecdsa-p256");
}

#[test]
fn rsa_certificate_from_the_client_package_reaches_the_vnet() {
    certificate_client_reaches_the_vnet("rsa-2048");
}

#[test]
fn revoked_certificate_is_refused_and_its_session_cut() {
    let topo = Topology::new(1);
    let gw = ikev2_gateway(&topo, "ecdsa-p256", "");
    let opts = cert_options(&gw, &topo, 0, "mallory");
    let mallory = start_client(&topo, 0, "mallory", &opts);
    mallory.initiate(&opts.child, &opts.conn).unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
    assert!(ping_vnet(&topo, 0));

    gw.revoke("mallory");
    // The gateway cuts the live session within seconds (it deletes the IKE SA).
    wait_for("the revoked session to be cut", Duration::from_secs(15), || gw.sessions().is_empty());
    wait_for("the client to see its SA deleted", Duration::from_secs(15), || mallory.has_no_sas());

    // And refuses the certificate from then on.
    let again = mallory.initiate(&opts.child, &opts.conn);
    assert!(again.is_err(), "a revoked certificate connected");
    assert!(mallory.log().contains("AUTHENTICATION_FAILED"), "{}", mallory.log());
    gw.wait_for_line(
        &["authentication refused", "certificate of CN=mallory refused", "Revoked"],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(gw.sessions().is_empty());
}

#[test]
fn child_and_ike_sas_rekey_under_traffic() {
    let topo = Topology::new(1);
    let gw = ikev2_gateway(&topo, "ecdsa-p256", "");
    let mut opts = cert_options(&gw, &topo, 0, "rekey");
    // Hard lifetimes well past the rekey times (iperf3 keeps both CPUs busy, and a CHILD SA
    // that expires before its rekey is done is closed and recreated instead), but by less
    // than the rekey time: strongSwan subtracts up to (life - rekey) at random from it.
    opts.rekey_time = Some(Duration::from_secs(4));
    opts.life_time = Some(Duration::from_secs(6));
    opts.ike_rekey_time = Some(Duration::from_secs(7));
    opts.ike_over_time = Some(Duration::from_secs(30));
    let client = start_client(&topo, 0, "rekey", &opts);
    client.initiate(&opts.child, &opts.conn).unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));

    let _server = iperf3_server(topo.vnet(), VNET_HOST_ADDR);
    let args = ["iperf3", "--client", VNET_HOST_ADDR, "--time", "12", "--json", "--connect-timeout", "5000"];
    let run = topo.client(0).exec_with_timeout(&args, Duration::from_secs(40));
    let result = run.as_ref().ok().and_then(|out| parse_iperf3_json(&String::from_utf8_lossy(&out.stdout)).ok());
    let Some(result) = result else {
        panic!("iperf3 through the rekeys failed: {run:?}\nclient:\n{}\ngateway:\n{}", client.log(), gw.log())
    };
    assert!(result.received_bytes > 10_000_000, "through the rekeys: {result:?}");

    let log = client.log();
    let child_sas = log.lines().filter(|l| l.contains("CHILD_SA net{") && l.contains("established")).count();
    assert!(log.contains("rekeyed between"), "an IKE rekey:\n{log}");
    assert!(child_sas >= 3, "the first CHILD SA and 2 rekeys:\n{log}");
    assert!(!log.contains("closing expired CHILD_SA"), "every CHILD SA was rekeyed in time:\n{log}");
    let sessions = gw.sessions();
    assert_eq!(sessions.len(), 1, "still one session: {sessions:?}");
    assert!(ping_vnet(&topo, 0));
    assert_steered(&gw);
}

#[test]
fn killed_client_is_freed_after_liveness_checks() {
    let topo = Topology::new(1);
    let gw = ikev2_gateway(&topo, "ecdsa-p256", "");
    let opts = cert_options(&gw, &topo, 0, "bob");
    let bob = start_client(&topo, 0, "bob", &opts);
    bob.initiate(&opts.child, &opts.conn).unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
    let address = bob.virtual_ip().expect("a virtual IP");
    bob.kill();
    // dpd_secs = 2: checks at 0.5, 1, 2, 4 and 8 s after 2 s of silence.
    wait_for("the dead client's session to end", Duration::from_secs(40), || gw.sessions().is_empty());
    gw.wait_for_line(&["client disconnected", "bob", "liveness check"], Duration::from_secs(5)).unwrap();

    // The address went back to the pool: the next client gets it.
    let bob = start_client(&topo, 0, "bob-again", &opts);
    bob.initiate(&opts.child, &opts.conn).unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
    assert_eq!(bob.virtual_ip(), Some(address));
}

/// A client behind a NAT whose public address changes (a home router's new lease, a
/// carrier's NAT): its next IKE request from the new address (here a liveness check, as the
/// gateway's answers stop reaching it) moves the IKE SA and the ESP there (RFC 7296 §2.23),
/// traffic flows again on the same session, and the session list shows the new address.
#[test]
fn a_client_whose_nat_address_changes_keeps_its_session() {
    let topo = Topology::new(1);
    let lan = topo.behind_nat(0);
    let gw = ikev2_gateway(&topo, "ecdsa-p256", "");
    let mut opts = cert_options(&gw, &topo, 0, "roamer");
    opts.dpd_delay = Some(Duration::from_secs(1));
    let client = Charon::start(&lan, topo.temp_dir(), "roamer");
    client.load_swanctl(&client_conf(&opts));
    client.initiate(&opts.child, &opts.conn).unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
    let address = client.virtual_ip().expect("a virtual IP");
    assert!(ping(&lan, VNET_HOST_ADDR, 3, Duration::from_millis(200)).all_received(), "{}", gw.log());
    let before = session_of(&gw.sessions(), "roamer").cloned().expect("roamer's session");
    let home = topo.client_addr_for(0);
    assert!(before["public_address"].as_str().unwrap().starts_with(&format!("{home}:")), "{before}");

    let pinger = lan.spawn(&["ping", "-c", "50", "-i", "0.2", VNET_HOST_ADDR], "ping");
    std::thread::sleep(Duration::from_secs(2));
    let roamed = "192.168.100.3";
    topo.renumber_nat(0, roamed);
    pinger.wait_exit(Duration::from_secs(30)).expect("ping finishes");
    let across = parse_ping_summary(&pinger.log_text());
    eprintln!("ping loss {:.1}% across the move", across.loss_pct);
    let after_move = ping(&lan, VNET_HOST_ADDR, 5, Duration::from_millis(200));
    assert!(after_move.all_received(), "after the move: {}\n{}\n{}", after_move.output, client.log(), gw.log());

    let moved = format!("new_peer={roamed}:");
    gw.wait_for_line(&["client moved to a new address", "user=roamer", &moved], Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
    let after = session_of(&gw.sessions(), "roamer").cloned().expect("roamer's session after the move");
    assert_eq!((&after["id"], &after["virtual_address"]), (&before["id"], &before["virtual_address"]), "{after}");
    assert!(after["public_address"].as_str().unwrap().starts_with(&format!("{roamed}:")), "{after}");
    assert_eq!(client.virtual_ip(), Some(address), "the same tunnel address");
    assert_eq!(
        client.log().matches("established between").count(),
        1,
        "the IKE SA was never re-established:\n{}",
        client.log()
    );
}

#[test]
fn eap_mschapv2_through_freeradius_reaches_the_vnet() {
    let topo = Topology::new(2);
    let radius = FreeRadius::start(
        topo.vnet(),
        RadiusOptions { users: vec![RadiusUser::new("carol", "s3cret-Pass")], ..Default::default() },
    );
    let extra = format!(
        "[auth]\nrequire = [\"certificate\", \"radius\"]\n\n\
         [radius]\nservers = [\"{VNET_HOST_ADDR}:1812\"]\nsecrets = [{DEFAULT_RADIUS_SECRET:?}]\ntimeout_secs = 2\ntries = 2\n"
    );
    let gw = ikev2_gateway(&topo, "ecdsa-p256", &extra);
    let ca = gw.pki_dir().join("ca.crt");
    let opts = ClientOptions::eap_mschapv2(&topo.gateway_addr_for(0), &ca, "carol", "s3cret-Pass");
    let carol = start_client(&topo, 0, "carol", &opts);
    carol.initiate(&opts.child, &opts.conn).unwrap_or_else(|e| panic!("{e}\n{}\n{}", carol.log(), gw.log()));
    assert!(ping_vnet(&topo, 0), "{}", gw.log());
    let sessions = gw.sessions();
    let session = session_of(&sessions, "carol").expect("carol in the session list");
    assert_eq!((session["protocol"].as_str(), session["auth"].as_str()), (Some("ikev2"), Some("radius")));
    radius.wait_for_accounting(|r| r.status_type == "Start", Duration::from_secs(10)).unwrap();

    // A wrong password is refused by RADIUS, and the client is told.
    let mut wrong = ClientOptions::eap_mschapv2(&topo.gateway_addr_for(1), &ca, "carol", "wrong-Pass");
    wrong.gateway_id = GATEWAY_NAME.to_string();
    let intruder = start_client(&topo, 1, "intruder", &wrong);
    assert!(intruder.initiate(&wrong.child, &wrong.conn).is_err(), "a wrong password connected");
    assert!(
        intruder.log().contains("EAP_FAILURE") || intruder.log().contains("EAP method EAP_MSCHAPV2 failed"),
        "{}",
        intruder.log()
    );
    // Refusals name the client's real address (also sent to RADIUS as Calling-Station-Id).
    let intruder_address = format!("peer={}:", topo.client_addr_for(1));
    gw.wait_for_line(&["authentication refused", &intruder_address, "user=carol"], Duration::from_secs(5)).unwrap();
    assert_eq!(gw.sessions().len(), 1);
}

#[test]
fn eap_tls_through_freeradius_reaches_the_vnet() {
    // FreeRADIUS's certificate and the users' certificates come from a PKI of their own, not the gateway's.
    const RADIUS_TLS_NAME: &str = "radius.p2sgw.test";
    let topo = Topology::new(2);
    let eap_pki = IkePki::generate(&topo.temp_dir().join("eap-pki"), RADIUS_TLS_NAME, KeyType::EcdsaP256);
    let server = eap_pki.server();
    let radius = FreeRadius::start(
        topo.vnet(),
        RadiusOptions::default().with_eap_tls(&server.cert, &server.key, eap_pki.ca_cert()),
    );
    let extra = format!(
        "[auth]\nrequire = [\"certificate\", \"radius\"]\n\n\
         [radius]\nservers = [\"{VNET_HOST_ADDR}:1812\"]\nsecrets = [{DEFAULT_RADIUS_SECRET:?}]\n\
         timeout_secs = 2\ntries = 2\n"
    );
    let gw = ikev2_gateway(&topo, "ecdsa-p256", &extra);
    let ca = gw.pki_dir().join("ca.crt");

    let dave_cert = eap_pki.issue_email_client("dave@example.org", KeyType::EcdsaP256);
    let opts = ClientOptions::eap_tls(
        &topo.gateway_addr_for(0),
        &ca,
        &dave_cert,
        "dave@example.org",
        RADIUS_TLS_NAME,
        eap_pki.ca_cert(),
    );
    let dave = start_client(&topo, 0, "dave", &opts);
    dave.initiate(&opts.child, &opts.conn).unwrap_or_else(|e| panic!("{e}\n{}\n{}", radius.log_text(), gw.log()));
    // The client asked for TLS instead of the server's default method, and got it.
    assert!(dave.log().contains("EAP method EAP_TLS succeeded"), "{}", dave.log());
    let address = dave.virtual_ip().expect("a virtual IP");
    assert!(address.to_string().starts_with("172.16.201."), "{address} is from the pool");
    assert!(ping_vnet(&topo, 0), "{}", gw.log());
    let sessions = gw.sessions();
    let session = session_of(&sessions, "dave@example.org").expect("dave in the session list");
    assert_eq!((session["protocol"].as_str(), session["auth"].as_str()), (Some("ikev2"), Some("radius")));
    assert_eq!(session["virtual_address"], address.to_string());

    // A certificate from a CA FreeRADIUS does not know is refused, and the client is told.
    let stranger_pki = IkePki::generate(&topo.temp_dir().join("stranger-pki"), "stranger.invalid", KeyType::EcdsaP256);
    let eve_cert = stranger_pki.issue_email_client("eve@example.org", KeyType::EcdsaP256);
    let mut stranger = ClientOptions::eap_tls(
        &topo.gateway_addr_for(1),
        &ca,
        &eve_cert,
        "eve@example.org",
        RADIUS_TLS_NAME,
        eap_pki.ca_cert(),
    );
    stranger.gateway_id = GATEWAY_NAME.to_string();
    let eve = start_client(&topo, 1, "eve", &stranger);
    assert!(eve.initiate(&stranger.child, &stranger.conn).is_err(), "an unknown CA's certificate connected");
    assert!(eve.log().contains("EAP_FAILURE") || eve.log().contains("EAP method EAP_TLS failed"), "{}", eve.log());
    gw.wait_for_line(&["authentication refused", "eve@example.org"], Duration::from_secs(5)).unwrap();
    assert_eq!(gw.sessions().len(), 1);
}
