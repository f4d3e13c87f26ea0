//! Proves the identity-provider rigs work, without the gateway: FreeRADIUS (PAP, the one-time
//! code challenge, reply attributes, MS-CHAPv2, EAP, accounting, Message-Authenticator, two
//! servers) driven with radclient, radtest and eapol_test, and the OIDC server and token minter
//! checked with curl and openssl. Servers run in the vnet namespace or on the gateway namespace's
//! loopback and are queried from the gateway namespace, as the gateway will. Needs root.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::PublicKeyComponents;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use common::*;

const SECRET: &str = DEFAULT_RADIUS_SECRET;
const MA: &str = "Message-Authenticator = 0x00";
/// The 16-byte MS-CHAPv2 Authenticator Challenge, Peer Challenge and NT-Response of RFC 2759
/// §9.2 (user "User", password "clientPass").
const RFC2759_AUTH_CHALLENGE: &str = "5B5D7C7D7B3F2F3E3C2C602132262628";
const RFC2759_PEER_CHALLENGE: &str = "21402324255E262A28295F2B3A337C7E";
const RFC2759_NT_RESPONSE: &str = "82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF";
/// RFC 2759 §9.2 AuthenticatorResponse for the values above.
const RFC2759_AUTHENTICATOR_RESPONSE: &str = "S=407A5589115FD0D6209F510FE9C04566932CDA56";
/// RFC 3079 §3.5 (same inputs): the server's send key (Magic3) and receive key (Magic2).
const RFC3079_SERVER_SEND_KEY: &str = "0x8b7cdc149b993a1ba118cb153f56dccb";
const RFC3079_SERVER_RECV_KEY: &str = "0xd5f0e9521e3ea9589645e86051c82226";

const BOB_ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 16, 201, 50);
const BOB_CLASS: &[u8] = b"class-bob";
const AZURE_POLICY: &[u8] = &[0x01, 0x02, 0xaa, 0xbb, 0xff];
const ONE_TIME_CODE: &str = "123456";

fn bob() -> RadiusUser {
    RadiusUser {
        framed_ip: Some(BOB_ADDRESS),
        session_timeout: Some(3600),
        class: Some(BOB_CLASS.to_vec()),
        filter_id: Some("vpn-users".to_owned()),
        ms_azure_policy_id: Some(AZURE_POLICY.to_vec()),
        extra_reply: vec!["Acct-Interim-Interval = 60".to_owned()],
        ..RadiusUser::new("bob", "hello")
    }
}

fn carol_with_code() -> RadiusUser {
    RadiusUser {
        one_time_code: Some(ONE_TIME_CODE.to_owned()),
        framed_ip: Some(Ipv4Addr::new(172, 16, 201, 60)),
        ..RadiusUser::new("carol", "s3cret")
    }
}

/// FreeRADIUS on the vnet host with the default options (clients: loopback and the vnet subnet).
fn vnet_radius(topology: &Topology, users: Vec<RadiusUser>) -> FreeRadius {
    FreeRadius::start(topology.vnet(), RadiusOptions { users, ..RadiusOptions::default() })
}

/// An Access-Request from the gateway namespace to the vnet server.
fn auth(radius: &FreeRadius, topology: &Topology, attributes: &[&str]) -> Option<RadiusReply> {
    radius.radclient(topology.gw(), VNET_HOST_ADDR, RadclientCommand::Auth, SECRET, attributes)
}

fn pap(radius: &FreeRadius, topology: &Topology, user: &str, password: &str) -> RadiusReply {
    let name = format!("User-Name = \"{user}\"");
    let password = format!("User-Password = \"{password}\"");
    auth(radius, topology, &[&name, &password, MA]).expect("the server answers a PAP request")
}

#[test]
fn radius_pap_accepts_with_reply_attributes_and_rejects_bare() {
    let topology = Topology::new(0);
    let radius = vnet_radius(&topology, vec![bob()]);

    let accept = pap(&radius, &topology, "bob", "hello");
    assert_eq!(accept.code, "Access-Accept", "{accept:?}");
    assert_eq!(accept.get("Framed-IP-Address"), Some("172.16.201.50"));
    assert_eq!(accept.get("Session-Timeout"), Some("3600"));
    assert_eq!(accept.get("Filter-Id"), Some("vpn-users"));
    assert_eq!(accept.get("Acct-Interim-Interval"), Some("60"));
    assert_eq!(parse_hex_octets(accept.get("Class").expect("Class")), BOB_CLASS);
    // Vendor 311, type 65, raw octets: named through the rig's local dictionary.
    assert_eq!(parse_hex_octets(accept.get("MS-Azure-Policy-ID").expect("MS-Azure-Policy-ID")), AZURE_POLICY);
    // radclient checks a reply's Message-Authenticator against the secret and drops bad ones.
    assert!(accept.has("Message-Authenticator"), "replies are signed: {accept:?}");

    for (user, password) in [("bob", "wrong"), ("nobody", "hello")] {
        let reject = pap(&radius, &topology, user, password);
        assert_eq!(reject.code, "Access-Reject", "{user}/{password}: {reject:?}");
        let names: Vec<&str> = reject.attributes.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["Message-Authenticator"], "a reject carries no user attributes");
    }

    // Without the local dictionary the same VSA shows up by number, proving its wire identity.
    let raw = topology.gw().exec(&[
        "sh",
        "-c",
        &format!(
            "printf 'User-Name = \"bob\"\\nUser-Password = \"hello\"\\n{MA}\\n' | \
             radclient -x -r 1 -t 2 {VNET_HOST_ADDR}:{} auth {SECRET}",
            radius.auth_port()
        ),
    ]);
    let raw = parse_radclient_output(&String::from_utf8_lossy(&raw.stdout)).expect("reply without local dictionary");
    let vsa_name = format!("Attr-26.{MS_VENDOR_ID}.{MS_AZURE_POLICY_ID_TYPE}");
    assert_eq!(parse_hex_octets(raw.get(&vsa_name).expect("numbered VSA")), AZURE_POLICY, "{raw:?}");

    let log = radius.log_text();
    assert_eq!(radius.count_in_log("Sent Access-Accept"), 2, "two accepts in the log");
    assert!(log.contains("Login incorrect") && log.contains("[bob/wrong]"), "the wrong password is logged");
    assert!(log.contains("from client c1"), "requests came from the vnet-subnet client (10.50.0.1)");
}

#[test]
fn radius_drops_access_requests_without_message_authenticator() {
    let topology = Topology::new(0);
    let radius = vnet_radius(&topology, vec![bob()]);
    let bare = auth(&radius, &topology, &["User-Name = \"bob\"", "User-Password = \"hello\""]);
    assert_eq!(bare, None, "a request without Message-Authenticator must be dropped");
    radius
        .wait_for_log("Packet does not contain required Message-Authenticator attribute", Duration::from_secs(2))
        .unwrap();
    assert_eq!(radius.count_in_log("Sent Access-"), 0);

    // Accounting-Requests need no Message-Authenticator (they have their own authenticator).
    let accounting = radius.radclient(
        topology.gw(),
        VNET_HOST_ADDR,
        RadclientCommand::Acct,
        SECRET,
        &["Acct-Status-Type = Start", "User-Name = \"bob\"", "Acct-Session-Id = \"s-0\""],
    );
    assert_eq!(accounting.map(|reply| reply.code).as_deref(), Some("Accounting-Response"));

    // Status-Server (RFC 5997) on the auth port is answered with an Access-Accept.
    let status = radius.radclient(topology.gw(), VNET_HOST_ADDR, RadclientCommand::Status, SECRET, &[MA]);
    assert_eq!(status.map(|reply| reply.code).as_deref(), Some("Access-Accept"));
}

#[test]
fn radius_challenge_then_one_time_code() {
    let topology = Topology::new(0);
    let radius = vnet_radius(&topology, vec![carol_with_code(), bob()]);
    let first_round = || {
        let challenge = pap(&radius, &topology, "carol", "s3cret");
        assert_eq!(challenge.code, "Access-Challenge", "{challenge:?}");
        assert_eq!(challenge.get("Reply-Message"), Some(MFA_PROMPT));
        assert!(!challenge.has("Framed-IP-Address"), "user attributes only come with the accept: {challenge:?}");
        assert!(challenge.has("Message-Authenticator"), "{challenge:?}");
        challenge.get("State").expect("the challenge carries a State").to_owned()
    };
    let second_round = |state: &str, code: &str| {
        let state = format!("State = {state}");
        let password = format!("User-Password = \"{code}\"");
        auth(&radius, &topology, &["User-Name = \"carol\"", &password, &state, MA]).expect("second round answered")
    };

    let state = first_round();
    let wrong = second_round(&state, "654321");
    assert_eq!((wrong.code.as_str(), wrong.get("Reply-Message")), ("Access-Reject", Some(MFA_WRONG_CODE)));

    let state = first_round();
    let accept = second_round(&state, ONE_TIME_CODE);
    assert_eq!(accept.code, "Access-Accept", "{accept:?}");
    assert_eq!(accept.get("Framed-IP-Address"), Some("172.16.201.60"));

    // A State works once, and only one the server issued.
    let replay = second_round(&state, ONE_TIME_CODE);
    assert_eq!((replay.code.as_str(), replay.get("Reply-Message")), ("Access-Reject", Some(MFA_UNKNOWN_STATE)));
    let forged = second_round("0x0123456789abcdef0123456789abcdef", ONE_TIME_CODE);
    assert_eq!(forged.code, "Access-Reject");
    // A State issued to carol does not log in bob.
    let state = first_round();
    let other_user = auth(
        &radius,
        &topology,
        &["User-Name = \"bob\"", &format!("User-Password = \"{ONE_TIME_CODE}\""), &format!("State = {state}"), MA],
    )
    .expect("answered");
    assert_eq!(other_user.code, "Access-Reject");

    // The wrong password gets no challenge at all; the code alone is not a password.
    assert_eq!(pap(&radius, &topology, "carol", "wrong").code, "Access-Reject");
    assert_eq!(pap(&radius, &topology, "carol", ONE_TIME_CODE).code, "Access-Reject");
}

#[test]
fn radius_ms_chap_v2_matches_rfc2759_and_radtest_mschap_is_accepted() {
    let topology = Topology::new(0);
    let radius = vnet_radius(&topology, vec![RadiusUser::new("User", "clientPass"), bob()]);

    // MS-CHAP2-Response = Ident | Flags 0 | Peer-Challenge | 8 reserved zero bytes | NT-Response.
    let ident = 0x2a;
    let response =
        format!("MS-CHAP2-Response = 0x{ident:02x}00{RFC2759_PEER_CHALLENGE}0000000000000000{RFC2759_NT_RESPONSE}");
    let challenge = format!("MS-CHAP-Challenge = 0x{RFC2759_AUTH_CHALLENGE}");
    let accept = auth(&radius, &topology, &["User-Name = \"User\"", &challenge, &response, MA]).expect("answered");
    assert_eq!(accept.code, "Access-Accept", "{accept:?}");
    let success = parse_hex_octets(accept.get("MS-CHAP2-Success").expect("MS-CHAP2-Success"));
    assert_eq!(success[0], ident, "MS-CHAP2-Success echoes the CHAP ident");
    assert_eq!(&success[1..], RFC2759_AUTHENTICATOR_RESPONSE.as_bytes());
    // radclient decrypts the MPPE keys with the shared secret (RFC 2548 §2.4.2).
    assert_eq!(accept.get("MS-MPPE-Send-Key"), Some(RFC3079_SERVER_SEND_KEY));
    assert_eq!(accept.get("MS-MPPE-Recv-Key"), Some(RFC3079_SERVER_RECV_KEY));
    assert!(accept.has("Message-Authenticator"), "{accept:?}");

    let wrong_nt_response = response.replace(RFC2759_NT_RESPONSE, &"00".repeat(24));
    let reject = auth(&radius, &topology, &["User-Name = \"User\"", &challenge, &wrong_nt_response, MA]).unwrap();
    assert_eq!(reject.code, "Access-Reject");
    // MS-CHAP-Error = Ident || "E=691 R=1 C=<challenge> V=3 …" (the dictionary types it as a string).
    let expected_error = format!("{}E=691 ", char::from(ident));
    assert!(reject.get("MS-CHAP-Error").is_some_and(|e| e.starts_with(&expected_error)), "{reject:?}");

    // radtest's "mschap" is MS-CHAPv1 (MS-CHAP-Response), computed by radclient itself.
    let server = format!("{VNET_HOST_ADDR}:{}", radius.auth_port());
    let radtest = topology.gw().exec(&["radtest", "-t", "mschap", "bob", "hello", &server, "0", SECRET]);
    let stdout = String::from_utf8_lossy(&radtest.stdout);
    let reply = parse_radclient_output(&stdout).expect("radtest got a reply");
    assert_eq!(reply.code, "Access-Accept", "{stdout}");
    assert!(stdout.contains("MS-CHAP-Response") && reply.has("MS-CHAP-MPPE-Keys"), "{stdout}");
}

#[test]
fn radius_eap_starts_with_mschapv2() {
    let topology = Topology::new(0);
    let radius = vnet_radius(&topology, vec![bob()]);
    // EAP-Response/Identity "bob": code 2, id 7, length 8, type 1.
    let reply =
        auth(&radius, &topology, &["User-Name = \"bob\"", "EAP-Message = 0x0207000801626f62", MA]).expect("answered");
    assert_eq!(reply.code, "Access-Challenge", "{reply:?}");
    let eap = parse_hex_octets(reply.get("EAP-Message").expect("EAP-Message"));
    assert_eq!(eap[0], 1, "an EAP-Request");
    assert_eq!(eap[4], 26, "default_eap_type = mschapv2 (EAP type 26): {reply:?}");
    assert!(reply.has("State") && reply.has("Message-Authenticator"), "{reply:?}");
    assert!(!reply.has("Framed-IP-Address"), "no user attributes before the accept: {reply:?}");
}

/// Runs `eapol_test` (EAP peer over RADIUS) from the gateway namespace; returns its output and
/// whether it reported SUCCESS.
fn eapol_test(topology: &Topology, radius: &FreeRadius, identity: &str, password: &str) -> (String, bool) {
    let peer_conf = topology.temp_dir().join(format!("eapol-{identity}-{password}.conf"));
    std::fs::write(
        &peer_conf,
        format!(
            "network={{\n key_mgmt=IEEE8021X\n eap=MSCHAPV2\n identity=\"{identity}\"\n password=\"{password}\"\n}}\n"
        ),
    )
    .unwrap();
    let output = topology.gw().exec(&[
        "eapol_test",
        "-c",
        peer_conf.to_str().unwrap(),
        "-a",
        VNET_HOST_ADDR,
        "-p",
        &radius.auth_port().to_string(),
        "-s",
        SECRET,
        "-t",
        "10",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let success = stdout.lines().any(|line| line == "SUCCESS");
    assert!(success == output.status.success(), "eapol_test's verdict and exit status disagree:\n{stdout}");
    (stdout, success)
}

#[test]
fn radius_eap_mschapv2_completes_with_eapol_test() {
    let topology = Topology::new(0);
    let radius = vnet_radius(&topology, vec![bob()]);
    let (output, success) = eapol_test(&topology, &radius, "bob", "hello");
    assert!(success, "EAP-MSCHAPv2 with the right password:\n{output}");
    assert!(output.contains("EAP-MSCHAPV2: Authentication succeeded"), "{output}");
    // eapol_test compares the MPPE keys from the Access-Accept with its own MSK.
    assert!(output.contains("MPPE keys OK"), "{output}");
    let log = radius.log_text();
    assert!(log.contains("Sent Access-Accept") && log.contains("Framed-IP-Address = 172.16.201.50"), "{log}");

    let (output, success) = eapol_test(&topology, &radius, "bob", "wrong");
    assert!(!success, "EAP-MSCHAPv2 with a wrong password must fail:\n{output}");
}

#[test]
fn radius_accounting_start_interim_stop_parsed_back() {
    let topology = Topology::new(0);
    let radius = vnet_radius(&topology, vec![bob()]);
    let class = format!("Class = 0x{}", BOB_CLASS.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let send = |attributes: &[&str]| {
        let reply = radius.radclient(topology.gw(), VNET_HOST_ADDR, RadclientCommand::Acct, SECRET, attributes);
        assert_eq!(reply.map(|r| r.code).as_deref(), Some("Accounting-Response"), "{attributes:?}");
    };
    let common = ["User-Name = \"bob\"", "Acct-Session-Id = \"sess-1\"", "Framed-IP-Address = 172.16.201.50"];
    let account = |status_type: &str, extra: &[&str]| {
        let status_type = format!("Acct-Status-Type = {status_type}");
        send(&[&[status_type.as_str()][..], &common[..], extra].concat());
    };
    account("Start", &[&class, "NAS-Identifier = \"p2sgw\""]);
    account("Interim-Update", &["Acct-Input-Octets = 10", "Acct-Session-Time = 5"]);
    account(
        "Stop",
        &[
            &class,
            "Acct-Input-Octets = 100",
            "Acct-Input-Gigawords = 1",
            "Acct-Output-Octets = 5000",
            "Acct-Input-Packets = 7",
            "Acct-Session-Time = 42",
            "Acct-Terminate-Cause = User-Request",
            "User-Name = \"second \\\"name\\\"\"",
        ],
    );

    let stop = radius.wait_for_accounting(|r| r.status_type == "Stop", Duration::from_secs(5)).unwrap();
    let records = radius.accounting_records();
    let kinds: Vec<&str> = records.iter().map(|r| r.status_type.as_str()).collect();
    assert_eq!(kinds, ["Start", "Interim-Update", "Stop"]);
    let start = &records[0];
    assert_eq!(start.user_name.as_deref(), Some("bob"));
    assert_eq!(start.session_id.as_deref(), Some("sess-1"));
    assert_eq!(start.framed_ip, Some(BOB_ADDRESS));
    assert_eq!(start.class.as_deref(), Some(BOB_CLASS));
    assert_eq!(start.get("NAS-Identifier"), Some("p2sgw"));
    assert_eq!(start.packet_src_ip.as_deref(), Some(VNET_GW_ADDR), "the gateway namespace's address sent it");
    assert_eq!((start.input_octets, start.session_time), (None, None));
    assert_eq!((records[1].input_octets, records[1].session_time), (Some(10), Some(5)));
    assert_eq!(stop.input_octets, Some((1 << 32) + 100), "gigawords are the upper 32 bits");
    assert_eq!(stop.output_octets, Some(5000));
    assert_eq!((stop.input_packets, stop.output_packets), (Some(7), None));
    assert_eq!(stop.session_time, Some(42));
    assert_eq!(stop.terminate_cause.as_deref(), Some("User-Request"));
    assert_eq!(stop.class.as_deref(), Some(BOB_CLASS));
    let names: Vec<&str> =
        stop.attributes.iter().filter(|(name, _)| name == "User-Name").map(|(_, value)| value.as_str()).collect();
    assert_eq!(names, ["bob", "second \"name\""], "strings are unescaped, repeated attributes kept in order");
}

#[test]
fn detail_parser_combines_gigawords_unescapes_and_skips_a_record_being_written() {
    let text = "Tue Jan  6 10:00:00 2026\n\
                \tAcct-Status-Type = Stop\n\
                \tUser-Name = \"a\\\\b\\\"c\\101\"\n\
                \tAcct-Output-Octets = 4294967295\n\
                \tAcct-Output-Gigawords = 2\n\
                \tAcct-Input-Gigawords = 1\n\
                \tClass = 0x00ff\n\
                \n\
                Tue Jan  6 10:00:01 2026\n\
                \tAcct-Status-Type = Start\n";
    let records = parse_detail(text);
    assert_eq!(records.len(), 1, "the unterminated second record is still being written");
    let record = &records[0];
    assert_eq!(record.written_at, "Tue Jan  6 10:00:00 2026");
    assert_eq!(record.user_name.as_deref(), Some("a\\b\"cA"));
    assert_eq!(record.output_octets, Some((2 << 32) + 4_294_967_295));
    assert_eq!(record.input_octets, Some(1 << 32), "gigawords alone still make a counter");
    assert_eq!(record.class.as_deref(), Some(&[0x00, 0xff][..]));
    assert_eq!(parse_detail(&format!("{text}\n")).len(), 2);
}

#[test]
fn two_radius_servers_on_different_ports_in_one_namespace() {
    let topology = Topology::new(0);
    let gw = topology.gw();
    let first = FreeRadius::start(
        gw,
        RadiusOptions { listen_addr: "127.0.0.1".to_owned(), users: vec![bob()], ..RadiusOptions::default() },
    );
    let second_secret = "second-server-secret";
    let second = FreeRadius::start(
        gw,
        RadiusOptions {
            listen_addr: "127.0.0.1".to_owned(),
            auth_port: 11812,
            acct_port: 11813,
            clients: vec![RadiusClient::new("127.0.0.1", second_secret)],
            // FreeRADIUS 3.2.1's own behaviour: no Message-Authenticator in non-EAP replies.
            reply_message_authenticator: false,
            users: vec![RadiusUser::new("dave", "pass-d")],
            ..RadiusOptions::default()
        },
    );
    let login = |server: &FreeRadius, secret: &str, user: &str, password: &str| {
        let (name, password) = (format!("User-Name = \"{user}\""), format!("User-Password = \"{password}\""));
        server.radclient(gw, "127.0.0.1", RadclientCommand::Auth, secret, &[&name, &password, MA])
    };
    let code = |reply: Option<RadiusReply>| reply.map(|r| r.code);
    assert_eq!(code(login(&first, SECRET, "bob", "hello")).as_deref(), Some("Access-Accept"));
    let unsigned = login(&second, second_secret, "dave", "pass-d").expect("answered");
    assert_eq!(unsigned.code, "Access-Accept");
    assert!(!unsigned.has("Message-Authenticator"), "{unsigned:?}");
    assert_eq!(code(login(&second, second_secret, "bob", "hello")).as_deref(), Some("Access-Reject"));
    // The wrong secret breaks the Message-Authenticator, so the server drops the request.
    assert_eq!(login(&second, SECRET, "dave", "pass-d"), None);
    second.wait_for_log("invalid Message-Authenticator", Duration::from_secs(2)).unwrap();

    for (server, secret, session) in [(&first, SECRET, "on-first"), (&second, second_secret, "on-second")] {
        let session = format!("Acct-Session-Id = \"{session}\"");
        let reply = server.radclient(
            gw,
            "127.0.0.1",
            RadclientCommand::Acct,
            secret,
            &["Acct-Status-Type = Start", "User-Name = \"x\"", &session],
        );
        assert_eq!(code(reply).as_deref(), Some("Accounting-Response"));
    }
    let sessions = |server: &FreeRadius| -> Vec<Option<String>> {
        server.accounting_records().into_iter().map(|r| r.session_id).collect()
    };
    assert_eq!(sessions(&first), [Some("on-first".to_owned())]);
    assert_eq!(sessions(&second), [Some("on-second".to_owned())]);

    first.stop();
    assert_eq!(login(&first, SECRET, "bob", "hello"), None, "a stopped server answers nothing");
    assert_eq!(code(login(&second, second_secret, "dave", "pass-d")).as_deref(), Some("Access-Accept"));
}

/// `curl` from `ns`, trusting only `ca` (or the system store when `None`); the body or the error.
fn curl(ns: &Netns, url: &str, ca: Option<&Path>, extra: &[&str]) -> Result<String, String> {
    let mut args = vec!["curl", "--silent", "--show-error", "--fail", "--max-time", "10"];
    if let Some(ca) = ca {
        args.extend(["--cacert", ca.to_str().expect("test paths are UTF-8")]);
    }
    args.extend(extra);
    args.push(url);
    let output = ns.exec(&args);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("curl {url} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
    }
}

fn fetch_json(ns: &Netns, url: &str, ca: &Path) -> Value {
    let body = curl(ns, url, Some(ca), &[]).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url} is not JSON ({e}): {body}"))
}

fn kids(jwks: &Value) -> Vec<String> {
    let keys = jwks["keys"].as_array().unwrap_or_else(|| panic!("JWKS without keys: {jwks}"));
    keys.iter().map(|key| key["kid"].as_str().expect("every key has a kid").to_owned()).collect()
}

#[test]
fn oidc_server_serves_discovery_and_jwks_over_https() {
    let topology = Topology::new(0);
    let issuer = Issuer::new();
    let server = OidcServer::start(topology.vnet(), OidcOptions::default(), &issuer.jwks_json());
    let ca = server.ca_cert_path();
    assert_eq!(server.issuer_url(), format!("https://{VNET_HOST_ADDR}:{OIDC_DEFAULT_PORT}"));

    let discovery = fetch_json(topology.gw(), &server.discovery_url(), ca);
    assert_eq!(discovery["issuer"], server.issuer_url());
    assert_eq!(discovery["jwks_uri"], server.jwks_url());
    assert_eq!(discovery, server.discovery_document());

    let jwks = fetch_json(topology.gw(), discovery["jwks_uri"].as_str().unwrap(), ca);
    assert_eq!(jwks, issuer.jwks());
    assert_eq!(kids(&jwks), JwsAlg::ALL.map(|alg| issuer.kid(alg).to_owned()));
    for key in jwks["keys"].as_array().unwrap() {
        assert_eq!(key["use"], "sig");
        match key["kty"].as_str() {
            Some("RSA") => {
                let modulus = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
                assert_eq!(modulus.len(), 256, "RSA-2048 modulus without a leading zero");
                assert_eq!(key["e"], "AQAB");
            }
            Some("EC") => assert_eq!((key["crv"].as_str(), key["alg"].as_str()), (Some("P-256"), Some("ES256"))),
            other => panic!("unexpected key type {other:?}"),
        }
    }

    // The certificate also names OIDC_CERT_DNS_NAME.
    let resolve = format!("{OIDC_CERT_DNS_NAME}:{OIDC_DEFAULT_PORT}:{VNET_HOST_ADDR}");
    let by_name = format!("https://{OIDC_CERT_DNS_NAME}:{OIDC_DEFAULT_PORT}{JWKS_PATH}");
    curl(topology.gw(), &by_name, Some(ca), &["--resolve", &resolve]).unwrap();
    // Without the test CA the TLS handshake fails: the server really speaks verified HTTPS.
    let untrusted = curl(topology.gw(), &server.jwks_url(), None, &[]).unwrap_err();
    assert!(untrusted.contains("certificate"), "{untrusted}");
    assert_eq!(server.request_count(JWKS_PATH), 2, "the failed handshake never reached HTTP:\n{}", server.log_text());
    assert_eq!(server.request_count(DISCOVERY_PATH), 1);
}

/// A SubjectPublicKeyInfo PEM built from one JWK, so openssl can verify against what was served.
fn jwk_to_pem(jwk: &Value) -> String {
    let field = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().expect("JWK field")).expect("base64url");
    let der = match jwk["kty"].as_str() {
        Some("RSA") => {
            let components = PublicKeyComponents { n: field("n"), e: field("e") };
            components.as_der().expect("valid RSA public key").as_ref().to_vec()
        }
        Some("EC") => {
            // DER of SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (65 bytes) }
            // up to the point itself.
            const P256_SPKI_PREFIX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
            let mut der = parse_hex_octets(&format!("0x{P256_SPKI_PREFIX}"));
            der.push(0x04);
            der.extend(field("x"));
            der.extend(field("y"));
            der
        }
        other => panic!("unexpected key type {other:?}"),
    };
    let base64 = STANDARD.encode(der);
    let lines: Vec<&str> = base64.as_bytes().chunks(64).map(|line| std::str::from_utf8(line).unwrap()).collect();
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
}

/// ES256's r || s as the DER SEQUENCE openssl expects.
fn ecdsa_raw_to_der(raw: &[u8]) -> Vec<u8> {
    assert_eq!(raw.len(), 64, "ES256 signatures are 64 bytes");
    let integer = |bytes: &[u8]| {
        let mut value: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
        if value.first().is_none_or(|&b| b & 0x80 != 0) {
            value.insert(0, 0);
        }
        [vec![0x02, u8::try_from(value.len()).unwrap()], value].concat()
    };
    let body = [integer(&raw[..32]), integer(&raw[32..])].concat();
    [vec![0x30, u8::try_from(body.len()).unwrap()], body].concat()
}

/// Verifies a compact JWS with the openssl CLI against `jwk`, with the algorithm its header names;
/// true for "Verified OK".
fn openssl_verifies(dir: &Path, token: &str, jwk: &Value) -> bool {
    let (signing_input, signature) = token.rsplit_once('.').expect("compact JWS has three parts");
    let header = decode_segment(signing_input.split('.').next().expect("header segment"));
    let alg = header["alg"].as_str().expect("header alg");
    let mut signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url signature");
    if alg == "ES256" {
        signature = ecdsa_raw_to_der(&signature);
    }
    let (key, sig, input) = (dir.join("jwk.pem"), dir.join("jws.sig"), dir.join("jws.input"));
    std::fs::write(&key, jwk_to_pem(jwk)).unwrap();
    std::fs::write(&sig, signature).unwrap();
    std::fs::write(&input, signing_input).unwrap();
    let mut command = Command::new("openssl");
    command.args(["dgst", "-sha256", "-verify"]).arg(&key).arg("-signature").arg(&sig);
    if alg == "PS256" {
        command.args(["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]);
    }
    command.arg(&input);
    let output = run_with_timeout(&mut command, Duration::from_secs(10)).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    match (output.status.success(), stdout.trim()) {
        (true, "Verified OK") => true,
        (false, "Verification failure") => false,
        _ => panic!("openssl dgst: {stdout}{}", String::from_utf8_lossy(&output.stderr)),
    }
}

#[test]
fn minted_tokens_verify_with_openssl_against_the_served_jwks() {
    let topology = Topology::new(0);
    let issuer = Issuer::new();
    let server = OidcServer::start(topology.vnet(), OidcOptions::default(), &issuer.jwks_json());
    let jwks = fetch_json(topology.gw(), &server.jwks_url(), server.ca_cert_path());
    let claims = json!({ "name": "Bob Example", "groups": ["vpn"], "oid": "00000000-0000-0000-0000-000000000001" });
    let mut claims_with_standard = standard_claims(server.issuer_url(), "api://p2sgw", "bob", 300);
    claims_with_standard.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());

    for alg in JwsAlg::ALL {
        let token = issuer.mint(alg, &claims_with_standard);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        assert!(parts.iter().all(|part| !part.contains('=')), "base64url without padding: {token}");
        assert_eq!(decode_segment(parts[0]), json!({ "alg": alg.name(), "typ": "JWT", "kid": issuer.kid(alg) }));
        let payload = decode_segment(parts[1]);
        assert_eq!(payload, claims_with_standard);
        assert_eq!(payload["iss"], server.issuer_url());
        assert_eq!(payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap(), 300);

        let jwk =
            jwks["keys"].as_array().unwrap().iter().find(|key| key["kid"] == issuer.kid(alg)).expect("kid served");
        assert_eq!(jwk["alg"], alg.name());
        assert!(openssl_verifies(topology.temp_dir(), &token, jwk), "{} token verifies", alg.name());

        let tampered_claims = encode_segment(&json!({ "sub": "mallory" }));
        let tampered = format!("{}.{tampered_claims}.{}", parts[0], parts[2]);
        assert!(!openssl_verifies(topology.temp_dir(), &tampered, jwk), "{} tampered token fails", alg.name());
        // Another algorithm's key must not verify it either.
        let other = jwks["keys"].as_array().unwrap().iter().find(|key| key["kid"] != issuer.kid(alg)).unwrap();
        if other["kty"] == jwk["kty"] {
            assert!(!openssl_verifies(topology.temp_dir(), &token, other), "keys are distinct per algorithm");
        }
    }

    // sign_with_header keeps the header verbatim.
    let header = json!({ "alg": "RS256", "kid": "not-published" });
    let token = issuer.sign_with_header(JwsAlg::Rs256, &header, &claims);
    assert_eq!(decode_segment(token.split('.').next().unwrap()), header);
}

#[test]
fn rotation_changes_the_served_jwks() {
    let topology = Topology::new(0);
    let mut issuer = Issuer::new();
    let issuer_path = "/tenant-1/v2.0";
    let opts = OidcOptions { issuer_path: issuer_path.to_owned(), port: 9443, ..OidcOptions::default() };
    let server = OidcServer::start(topology.vnet(), opts, &issuer.jwks_json());
    let ca = server.ca_cert_path();
    assert_eq!(server.issuer_url(), format!("https://{VNET_HOST_ADDR}:9443{issuer_path}"));
    let discovery = fetch_json(topology.gw(), &server.discovery_url(), ca);
    assert_eq!(discovery["issuer"], server.issuer_url());
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap().to_owned();
    assert_eq!(jwks_uri, format!("{}{JWKS_PATH}", server.issuer_url()));

    let old_kids = kids(&fetch_json(topology.gw(), &jwks_uri, ca));
    let old_token = issuer.mint(JwsAlg::Es256, &json!({ "sub": "bob" }));
    issuer.rotate();
    server.set_jwks(&issuer.jwks_json());
    let new_jwks = fetch_json(topology.gw(), &jwks_uri, ca);
    let new_kids = kids(&new_jwks);
    assert_eq!(new_kids, JwsAlg::ALL.map(|alg| issuer.kid(alg).to_owned()));
    assert!(new_kids.iter().all(|kid| !old_kids.contains(kid)), "{old_kids:?} → {new_kids:?}");
    let new_token = issuer.mint(JwsAlg::Es256, &json!({ "sub": "bob" }));
    assert_eq!(decode_segment(new_token.split('.').next().unwrap())["kid"], issuer.kid(JwsAlg::Es256));
    assert_eq!(decode_segment(old_token.split('.').next().unwrap())["kid"], old_kids[2]);
    // The old ES256 key no longer verifies new tokens, the new one does.
    let new_es256 = new_jwks["keys"].as_array().unwrap().iter().find(|key| key["alg"] == "ES256").unwrap();
    assert!(openssl_verifies(topology.temp_dir(), &new_token, new_es256));
    assert!(!openssl_verifies(topology.temp_dir(), &old_token, new_es256));

    // During a rollover both generations can be served.
    server.set_jwks(&issuer.jwks_json_with_previous());
    let both = kids(&fetch_json(topology.gw(), &jwks_uri, ca));
    assert_eq!(both, [new_kids, old_kids].concat());
    assert_eq!(server.request_count(&format!("{issuer_path}{JWKS_PATH}")), 3);

    // A stopped server is unreachable.
    server.stop();
    assert!(curl(topology.gw(), &jwks_uri, Some(ca), &[]).is_err());
}

// strongSwan (charon-systemd with kernel-libipsec) as client and as responder.

use common::strongswan::{
    Charon, ClientOptions, EspCounters, IPSEC_TUN, IPSEC_TUN_MTU, IkePki, KeyType, ResponderOptions,
    StrongswanResponder, connected_client, parse_esp_counters, parse_virtual_ip, route_device,
};

const EAP_USER: &str = "erin";
const EAP_PASSWORD: &str = "eap pass=word, 1";
const TUNNEL_PING_INTERVAL: Duration = Duration::from_millis(200);

/// Sends `count` pings from `client` to the vnet host through its tunnel and checks that every
/// one was answered and that the ESP counters of the client and the responder grew both ways.
fn ping_through_tunnel(client: &Charon, ns: &Netns, responder: &StrongswanResponder) {
    const COUNT: u32 = 5;
    let counters = |charon: &Charon| charon.esp_counters("net").unwrap_or_else(|| panic!("{}", charon.list_sas()));
    let (client_before, responder_before) = (counters(client), counters(responder));
    let result = ping(ns, VNET_HOST_ADDR, COUNT, TUNNEL_PING_INTERVAL);
    assert!(result.all_received(), "{} -> vnet host through the tunnel: {result:?}", client.name());
    let (client_after, responder_after) = (counters(client), counters(responder));
    let grew = |before: EspCounters, after: EspCounters, what: &str| {
        assert!(
            after.out_packets >= before.out_packets + u64::from(COUNT)
                && after.in_packets >= before.in_packets + u64::from(COUNT)
                && after.out_bytes > before.out_bytes
                && after.in_bytes > before.in_bytes,
            "{what} ESP counters of {} did not grow both ways: {before:?} -> {after:?}",
            client.name()
        );
    };
    grew(client_before, client_after, "client");
    grew(responder_before, responder_after, "responder");
}

#[test]
fn strongswan_clients_reach_the_vnet_through_a_strongswan_responder() {
    let topology = Topology::new(3);
    let pki = IkePki::generate(&topology.temp_dir().join("pki"), GATEWAY_NAME, KeyType::Rsa2048);
    let mut options = ResponderOptions::new(GATEWAY_NAME, &pki.server().cert, &pki.server().key, pki.ca_cert());
    options.eap_users = vec![(EAP_USER.to_owned(), EAP_PASSWORD.to_owned())];
    let pool: ipnet::Ipv4Net = options.pool.parse().unwrap();
    let responder = StrongswanResponder::start(&topology, options);

    // Three clients at once, each its own charon: ECDSA and RSA certificates, and EAP-MSCHAPv2.
    let dir = topology.temp_dir();
    let ecdsa = pki.issue_client("alice", KeyType::EcdsaP256);
    let rsa = pki.issue_client("bob", KeyType::Rsa2048);
    let mut eap_options = ClientOptions::eap_mschapv2(GATEWAY_NAME, pki.ca_cert(), EAP_USER, EAP_PASSWORD);
    eap_options.dpd_delay = Some(Duration::from_secs(30));
    eap_options.rekey_time = Some(Duration::from_secs(600));
    eap_options.life_time = Some(Duration::from_secs(700));
    let clients = [
        connected_client(
            topology.client(0),
            dir,
            "alice",
            &ClientOptions::certificate(GATEWAY_NAME, pki.ca_cert(), &ecdsa.cert, &ecdsa.key),
        ),
        connected_client(
            topology.client(1),
            dir,
            "bob",
            &ClientOptions::certificate(GATEWAY_NAME, pki.ca_cert(), &rsa.cert, &rsa.key),
        ),
        connected_client(topology.client(2), dir, "erin", &eap_options),
    ];
    assert!(clients[0].log().contains("authentication of 'CN=alice'"), "{}", clients[0].log());
    assert!(clients[2].log().contains("EAP method EAP_MSCHAPV2 succeeded"), "{}", clients[2].log());
    assert!(responder.log().contains(&format!("received EAP identity '{EAP_USER}'")), "{}", responder.log());
    // The optional timers reached charon (it logs each loaded setting at cfg level 2).
    for setting in ["dpd_delay = 30", "rekey_time = 600", "life_time = 700"] {
        assert!(clients[2].log().contains(setting), "{setting}:\n{}", clients[2].log());
    }

    let mut addresses = Vec::new();
    for (k, client) in clients.iter().enumerate() {
        let address = client.virtual_ip().unwrap_or_else(|| panic!("no virtual IP: {}", client.list_sas()));
        assert!(pool.contains(&address), "{address} is from the responder's pool {pool}");
        let tun_address = topology.client(k).ip(&["-4", "-o", "addr", "show", "dev", IPSEC_TUN]);
        assert!(tun_address.contains(&format!("inet {address}/32")), "{IPSEC_TUN} carries {address}: {tun_address}");
        assert_eq!(route_device(topology.client(k), VNET_HOST_ADDR).as_deref(), Some(IPSEC_TUN));
        addresses.push(address);
        ping_through_tunnel(client, topology.client(k), &responder);
    }
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 3, "every client has its own address");
    assert_eq!(responder.list_sas().matches("ESTABLISHED").count(), 3, "{}", responder.list_sas());

    // Full-size packets pass: IPv4 header (20) + ICMP header (8) + payload = the TUN's MTU.
    let tun = topology.client(0).ip(&["-o", "link", "show", "dev", IPSEC_TUN]);
    assert!(tun.contains(&format!("mtu {IPSEC_TUN_MTU} ")), "{tun}");
    let payload = (IPSEC_TUN_MTU - 28).to_string();
    let full_size = ["ping", "-n", "-q", "-M", "do", "-s", &payload, "-c", "2", "-W", "2", VNET_HOST_ADDR];
    let result = parse_ping_summary(&String::from_utf8_lossy(&topology.client(0).exec(&full_size).stdout));
    assert!(result.all_received(), "{IPSEC_TUN_MTU}-byte packets through the tunnel: {result:?}");

    // A clean disconnect: the SA is gone on both sides, and so is the route through the tunnel.
    clients[0].terminate("gw").unwrap();
    assert!(clients[0].has_no_sas(), "{}", clients[0].list_sas());
    assert_eq!(route_device(topology.client(0), VNET_HOST_ADDR), None, "no route to the vnet without the tunnel");
    let two_left = || responder.list_sas().matches("ESTABLISHED").count() == 2;
    assert!(wait_until(Duration::from_secs(5), Duration::from_millis(50), two_left), "{}", responder.list_sas());
    assert!(!responder.list_sas().contains("CN=alice"), "{}", responder.list_sas());

    // A client that dies sends nothing: its TUN device vanishes, the responder keeps its SA.
    let bob_pid = clients[1].process().pid();
    clients[1].kill();
    assert!(!topology.client(1).has_link(IPSEC_TUN), "the TUN device goes with the process");
    assert!(responder.list_sas().contains("CN=bob"), "{}", responder.list_sas());

    clients[2].terminate("gw").unwrap();
    assert!(clients[2].has_no_sas(), "{}", clients[2].list_sas());

    // Dropping everything stops every charon and removes the namespaces.
    let pids: Vec<u32> =
        clients.iter().map(|c| c.process().pid()).chain([bob_pid, responder.process().pid()]).collect();
    let names = topology.namespace_names();
    drop(clients);
    drop(responder);
    drop(topology);
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "charon {pid} is gone");
    }
    let left = run_with_timeout(Command::new("ip").args(["netns", "list"]), Duration::from_secs(10)).unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    for name in names {
        assert!(!left.lines().any(|line| line.split_whitespace().next() == Some(&name)), "{name} was removed");
    }
}

#[test]
fn strongswan_list_sas_parsers() {
    // swanctl 5.9.8 --list-sas of a client with one CHILD SA, rekeyed once (two instances).
    let list = "\
gw: #1, ESTABLISHED, IKEv2, ca2a711f142f352e_i* e0a1c1e7174af064_r
  local  'CN=user0' @ 192.168.100.2[4500] [172.16.202.1]
  remote '192.168.100.1' @ 192.168.100.1[4500]
  AES_GCM_16-256/PRF_HMAC_SHA2_384/ECP_384
  established 2s ago, rekeying in 14019s
  net: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256
    installed 2s ago, rekeying in 3329s, expires in 3958s
    in  46ff4e00,    252 bytes,     3 packets,     0s ago
    out 5c62d45d,    336 bytes,     4 packets,     0s ago
    local  172.16.202.1/32
    remote 10.50.0.0/24
  net: #2, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256
    installed 0s ago, rekeying in 3400s, expires in 3960s
    in  c1234567,   1000 bytes,    10 packets
    out 7654321c,      0 bytes,     0 packets
    local  172.16.202.1/32
    remote 10.50.0.0/24
";
    assert_eq!(parse_virtual_ip(list), Some("172.16.202.1".parse().unwrap()));
    assert_eq!(
        parse_esp_counters(list, "net"),
        Some(EspCounters { in_bytes: 1252, in_packets: 13, out_bytes: 336, out_packets: 4 })
    );
    assert_eq!(parse_esp_counters(list, "other"), None);
    // The responder's view: the virtual IP is the peer's, on the remote line.
    let responder = "\
rw-cert: #1, ESTABLISHED, IKEv2, ca2a711f142f352e_i e0a1c1e7174af064_r*
  local  '192.168.100.1' @ 192.168.100.1[4500]
  remote 'CN=user0' @ 192.168.100.2[4500] [172.16.202.1]
";
    assert_eq!(parse_virtual_ip(responder), None);
    assert_eq!(parse_virtual_ip(""), None);
}
