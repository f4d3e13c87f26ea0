use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::source::{SCHEMA, has_element_check, location_of};
use super::*;

const EXAMPLE: &str = include_str!("example.toml");

/// Joins lines with newlines, so that a test's line numbers are the slice's indices + 1.
fn toml(lines: &[&str]) -> String {
    lines.join("\n") + "\n"
}

fn parse(lines: &[&str]) -> Result<Config, ConfigError> {
    Config::from_toml_str(&toml(lines), Path::new("test.toml"))
}

fn accepted(lines: &[&str]) -> Config {
    parse(lines).unwrap_or_else(|e| panic!("refused: {e}"))
}

/// Asserts the configuration is refused at `line` with a message containing `needle`.
fn assert_refused(lines: &[&str], line: usize, needle: &str) -> ConfigError {
    let error = match parse(lines) {
        Ok(_) => panic!("accepted, expected an error containing {needle:?}:\n{}", toml(lines)),
        Err(e) => e,
    };
    assert_eq!(error.file, Path::new("test.toml"));
    assert_eq!(error.line, line, "wrong line for: {error}");
    assert!(error.message.contains(needle), "message {:?} lacks {needle:?}", error.message);
    error
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("p2sgw-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- schema bookkeeping ----

#[test]
fn schema_table_matches_serde() {
    // Every Option set, so that serialization shows every key.
    let mut config = Config::default();
    config.gateway.name = Some("gw".into());
    config.pki.dir = Some("/d".into());
    config.pki.server_cert = Some("/c".into());
    config.pki.server_key = Some("/k".into());
    config.pki.tls_crypt_key = Some("/t".into());
    config.token.tenant = Some("t".into());
    config.token.jwks_file = Some("/j".into());
    config.token.jwks_uri = Some("https://j".into());
    config.admin.socket = Some("/s".into());
    config.admin.tcp = Some("127.0.0.1:9443".parse().unwrap());
    config.admin.token_file = Some("/a".into());
    config.sstp.local_users_file = Some("/u".into());
    let serialized: toml::Table = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
    let serde_keys: BTreeSet<String> = serialized
        .iter()
        .flat_map(|(section, table)| table.as_table().unwrap().keys().map(move |key| format!("{section}.{key}")))
        .collect();
    let schema_keys: BTreeSet<String> =
        SCHEMA.iter().flat_map(|(section, keys)| keys.iter().map(move |key| format!("{section}.{key}"))).collect();
    assert_eq!(serde_keys, schema_keys);
}

#[test]
fn every_array_key_has_an_element_check() {
    let serialized: toml::Table = toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
    for (section, table) in &serialized {
        for (key, value) in table.as_table().unwrap() {
            let path = format!("{section}.{key}");
            assert_eq!(value.is_array(), has_element_check(&path), "{path}");
        }
    }
}

// ---- round trips and the example ----

#[test]
fn defaults_round_trip_through_the_effective_toml() {
    let text = Config::default().to_toml_string();
    let parsed = Config::from_toml_str(&text, Path::new("effective.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed, Config::default());
}

#[test]
fn example_sets_every_key_and_round_trips() {
    let config = Config::from_toml_str(EXAMPLE, Path::new("example.toml")).unwrap_or_else(|e| panic!("{e}"));
    // Keys that exclude one another: the example sets the other one.
    let exclusive = ["token.jwks_file"];
    for (section, keys) in SCHEMA {
        for key in *keys {
            let path = format!("{section}.{key}");
            if !exclusive.contains(&path.as_str()) {
                assert!(config.provenance().location(&path).is_some(), "example.toml does not set {path}");
            }
        }
    }
    assert_eq!(config.gateway.name.as_deref(), Some("vpn.example.com"));
    assert_eq!(config.listen.udp.len(), 2);
    assert_eq!(config.network.routes.len(), 2);
    assert_eq!(config.pki.trusted_roots.len(), 2);
    assert_eq!(config.gateway_tunnel_address(), Ipv4Addr::new(10, 8, 0, 1));
    assert_ne!(config, Config::default());

    let text = config.to_toml_string();
    assert!(!text.contains("example-secret"), "RADIUS secrets are not printed");
    // The printed config is the input minus its secrets (which would fail validation),
    // so compare with the secrets put back.
    let with_secrets = text.replace("[radius]\n", "[radius]\nsecrets = [\"example-secret\"]\n");
    let reparsed =
        Config::from_toml_str(&with_secrets, Path::new("effective.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(reparsed, config);
}

#[test]
fn effective_toml_shows_every_key_and_derived_paths() {
    let text = Config::default().to_toml_string();
    for (section, keys) in SCHEMA {
        assert!(text.contains(&format!("\n[{section}]\n")), "missing [{section}]");
        for key in *keys {
            let set = text.lines().any(|l| l.starts_with(&format!("{key} = ")));
            let unset = text.lines().any(|l| l.starts_with(&format!("# {key} = ")));
            assert!(set || unset, "missing {section}.{key}:\n{text}");
        }
    }
    assert!(text.contains("# dir = \"/var/lib/p2sgw/pki\""), "{text}");
    assert!(text.contains("# server_cert = \"/var/lib/p2sgw/pki/server.crt\""), "{text}");
    assert!(text.contains("empty: uses [\"/var/lib/p2sgw/pki/ca.crt\"]"), "{text}");
    assert!(text.contains("pool = \"172.16.201.0/24\"  # gateway 172.16.201.1, 253 client addresses"), "{text}");
    assert!(text.contains("data_ciphers = [\"AES-256-GCM\", \"CHACHA20-POLY1305\", \"AES-128-GCM\"]"), "{text}");
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(accepted(&[]), Config::default());
}

// ---- error format, locations, syntax and types ----

#[test]
fn error_display_is_file_line_column_message() {
    let error = ConfigError { file: "/etc/p2sgw.toml".into(), line: 3, column: 8, message: "bad".into() };
    assert_eq!(error.to_string(), "/etc/p2sgw.toml:3:8: bad");
    let whole_file = ConfigError { file: "/etc/p2sgw.toml".into(), line: 0, column: 0, message: "gone".into() };
    assert_eq!(whole_file.to_string(), "/etc/p2sgw.toml: gone");
}

#[test]
fn locations_are_one_based_and_count_characters() {
    let text = "a = 1\nb = \"é\" x\n";
    assert_eq!(location_of(text, 0), Location { line: 1, column: 1 });
    assert_eq!(location_of(text, 6), Location { line: 2, column: 1 });
    // 'x' follows a two-byte character: byte 9 of its line, character column 9.
    assert_eq!(location_of(text, text.find('x').unwrap()), Location { line: 2, column: 9 });
    assert_eq!(location_of(text, 999), Location { line: 3, column: 1 });
}

#[test]
fn syntax_error_is_located() {
    let error = assert_refused(&["[network]", "pool = \"10.0.0.0/24\"", "full_tunnel = tru", ""], 3, "");
    assert_eq!(error.column, 15);
}

#[test]
fn duplicate_key_is_located() {
    assert_refused(&["[openvpn]", "tun_mtu = 1400", "", "tun_mtu = 1500"], 4, "duplicate key");
}

#[test]
fn type_errors_are_located_and_name_the_key() {
    let error = assert_refused(&["[openvpn]", "tls_crypt = true", "tun_mtu = \"big\""], 3, "openvpn.tun_mtu:");
    assert_eq!(error.column, 11);
    assert_refused(&["", "[openvpn]", "reneg_secs = -1"], 3, "openvpn.reneg_secs: invalid value");
    assert_refused(&["[network]", "pool = \"10.0.0.0/33\""], 2, "(format: an IPv4 prefix");
    assert_refused(&["[gateway]", "name = 5"], 2, "gateway.name: invalid type");
}

#[test]
fn unknown_cipher_lands_on_its_own_line() {
    let error = assert_refused(
        &["[openvpn]", "data_ciphers = [", "  \"AES-256-GCM\",", "  \"BF-CBC\",", "]"],
        4,
        "unknown data cipher \"BF-CBC\"",
    );
    assert_eq!(error.column, 3);
}

#[test]
fn bad_array_elements_land_on_their_own_line() {
    assert_refused(&["[network]", "routes = [", "  \"10.1.0.0/16\",", "  \"10.2.0.0\",", "]"], 4, "network.routes");
    assert_refused(&["[listen]", "udp = [", "  \"0.0.0.0:1194\",", "  \"0.0.0.0\",", "]"], 4, "listen.udp");
    assert_refused(&["[network]", "dns_servers = [", "  \"10.0.0.1\",", "  5,", "]"], 4, "network.dns_servers");
}

#[test]
fn unknown_key_is_refused_with_a_suggestion() {
    assert_refused(
        &["[openvpn]", "tls_crypt = true", "tun_mut = 1400"],
        3,
        "unknown key `tun_mut` in [openvpn]; did you mean `tun_mtu`?",
    );
    assert_refused(&["[openvpn]", "tun-mtu = 1400"], 2, "did you mean `tun_mtu`?");
    assert_refused(&["[listen]", "udp = []", "pool = \"10.0.0.0/24\""], 3, "`pool` belongs in [network]");
    let error = assert_refused(&["[dataplane]", "threads = 4"], 2, "unknown key `threads` in [dataplane]");
    assert!(!error.message.contains("did you mean"), "{}", error.message);
}

#[test]
fn unknown_or_misshapen_section_is_refused() {
    assert_refused(
        &["[gateway]", "name = \"vpn\"", "[netwrok]", "pool = \"10.0.0.0/24\""],
        3,
        "unknown section `netwrok`; did you mean [network]?",
    );
    assert_refused(&["tun_mtu = 1400"], 1, "`tun_mtu` is a key of [openvpn]");
    assert_refused(&["network = 5"], 1, "`network` must be a table");
}

#[test]
fn dotted_and_inline_tables_are_located_too() {
    assert_refused(&["network.pool = \"10.0.0.0/30\""], 1, "pool 10.0.0.0/30 is too small");
    assert_refused(&["", "openvpn = { tun_mtu = 100 }"], 2, "tun_mtu (100)");
}

// ---- semantic rules ----

#[test]
fn pool_must_be_slash_29_or_larger() {
    let error = assert_refused(&["[network]", "full_tunnel = true", "pool = \"10.0.0.0/30\""], 3, "");
    assert_eq!(error.message, "pool 10.0.0.0/30 is too small: a pool must be /29 or larger");
    assert_eq!(error.to_string(), "test.toml:3:1: pool 10.0.0.0/30 is too small: a pool must be /29 or larger");
    let config = accepted(&["[network]", "pool = \"10.0.0.0/29\""]);
    assert_eq!(config.network.pool.prefix_len(), 29);
}

#[test]
fn pool_must_be_slash_8_or_smaller() {
    assert_refused(
        &["[network]", "pool = \"10.0.0.0/7\""],
        2,
        "pool 10.0.0.0/7 is too large: a pool must be /8 or smaller",
    );
    accepted(&["[network]", "pool = \"10.0.0.0/8\""]);
}

#[test]
fn pool_must_be_a_network_address() {
    assert_refused(
        &["[network]", "pool = \"10.0.0.1/24\""],
        2,
        "pool 10.0.0.1/24 has host bits set: write it as 10.0.0.0/24",
    );
}

#[test]
fn route_overlapping_the_pool_names_both() {
    assert_refused(
        &["[network]", "pool = \"10.8.0.0/24\"", "routes = [", "  \"10.1.0.0/16\",", "  \"10.0.0.0/8\",", "]"],
        5,
        "route 10.0.0.0/8 overlaps the client pool 10.8.0.0/24",
    );
    assert_refused(
        &["[network]", "pool = \"10.8.0.0/16\"", "routes = [\"10.8.3.0/24\"]"],
        3,
        "route 10.8.3.0/24 overlaps the client pool 10.8.0.0/16",
    );
    assert_refused(&["[network]", "routes = [\"0.0.0.0/0\"]"], 2, "set full_tunnel = true");
}

#[test]
fn duplicate_route_is_refused_on_the_second() {
    assert_refused(
        &["[network]", "routes = [", "  \"10.1.0.0/16\",", "  \"10.2.0.0/16\",", "  \"10.1.0.0/16\",", "]"],
        5,
        "route 10.1.0.0/16 is listed twice",
    );
}

#[test]
fn route_must_be_a_network_address() {
    assert_refused(
        &["[network]", "routes = [\"10.1.2.3/16\"]"],
        2,
        "route 10.1.2.3/16 has host bits set: write it as 10.1.0.0/16",
    );
}

#[test]
fn full_tunnel_with_routes_is_allowed() {
    let config = accepted(&["[network]", "full_tunnel = true", "routes = [\"10.1.0.0/16\"]"]);
    assert!(config.network.full_tunnel);
}

#[test]
fn dns_search_entries_must_be_dns_names() {
    accepted(&["[network]", "dns_search = [\"corp.example.com\", \"lab\", \"a-b.c1\"]"]);
    for bad in ["", "-corp.example", "corp..example", "corp_example.com", "example.com.", "x.123"] {
        assert_refused(
            &["[network]", "", &format!("dns_search = [\"ok.example\", {bad:?}]")],
            3,
            "is not a valid DNS name",
        );
    }
    let long_label = "a".repeat(64);
    assert_refused(&["[network]", &format!("dns_search = [\"{long_label}.com\"]")], 2, "is not a valid DNS name");
}

#[test]
fn at_most_twenty_trusted_root_files() {
    let roots = |n: usize| (0..n).map(|i| format!("  \"/etc/p2sgw/root{i}.crt\",")).collect::<Vec<_>>();
    let mut lines = vec!["[pki]".to_string(), "trusted_roots = [".to_string()];
    lines.extend(roots(20));
    lines.push("]".to_string());
    let twenty: Vec<&str> = lines.iter().map(String::as_str).collect();
    accepted(&twenty);

    let mut lines = vec!["[pki]".to_string(), "trusted_roots = [".to_string()];
    lines.extend(roots(21));
    lines.push("]".to_string());
    let twenty_one: Vec<&str> = lines.iter().map(String::as_str).collect();
    // The 21st entry is on line 2 + 21.
    assert_refused(&twenty_one, 23, "lists 21 files: at most 20 are allowed");
}

#[test]
fn data_ciphers_must_be_non_empty_and_distinct() {
    assert_refused(&["[openvpn]", "data_ciphers = []"], 2, "data_ciphers is empty");
    assert_refused(
        &["[openvpn]", "data_ciphers = [", "  \"AES-256-GCM\",", "  \"aes-256-gcm\",", "]"],
        4,
        "lists AES-256-GCM twice",
    );
    let config = accepted(&["[openvpn]", "data_ciphers = [\"chacha20-poly1305\"]"]);
    assert_eq!(config.openvpn.data_ciphers, vec![AeadAlgorithm::ChaCha20Poly1305]);
}

#[test]
fn keepalive_rules() {
    assert_refused(&["[openvpn]", "keepalive_interval_secs = 0"], 2, "keepalive_interval_secs must be at least 1");
    assert_refused(
        &["[openvpn]", "keepalive_interval_secs = 20", "keepalive_timeout_secs = 39"],
        3,
        "keepalive_timeout_secs (39) must be at least twice keepalive_interval_secs (20)",
    );
    // The default timeout (60) is too short for this interval: blame the interval.
    assert_refused(&["[openvpn]", "keepalive_interval_secs = 31"], 2, "keepalive_timeout_secs (60)");
    accepted(&["[openvpn]", "keepalive_interval_secs = 1", "keepalive_timeout_secs = 2"]);
    // 2 x u32::MAX must not overflow into acceptance.
    assert_refused(
        &["[openvpn]", "keepalive_interval_secs = 4294967295", "keepalive_timeout_secs = 4294967295"],
        3,
        "at least twice",
    );
}

#[test]
fn reneg_secs_is_zero_or_at_least_ten() {
    assert_refused(&["[openvpn]", "reneg_secs = 9"], 2, "reneg_secs (9) must be 0");
    accepted(&["[openvpn]", "reneg_secs = 0"]);
    accepted(&["[openvpn]", "reneg_secs = 10"]);
}

#[test]
fn handshake_window_is_5_to_600() {
    assert_refused(&["[openvpn]", "handshake_window_secs = 4"], 2, "must be between 5 and 600");
    assert_refused(&["[openvpn]", "handshake_window_secs = 601"], 2, "must be between 5 and 600");
    accepted(&["[openvpn]", "handshake_window_secs = 5"]);
    accepted(&["[openvpn]", "handshake_window_secs = 600"]);
}

#[test]
fn tun_mtu_is_576_to_2000() {
    assert_refused(&["[openvpn]", "tun_mtu = 575"], 2, "tun_mtu (575) must be between 576 and 2000");
    assert_refused(&["[openvpn]", "tun_mtu = 9001"], 2, "tun_mtu (9001)");
    accepted(&["[openvpn]", "tun_mtu = 576"]);
    accepted(&["[openvpn]", "tun_mtu = 2000"]);
    assert_refused(&["[openvpn]", "tun_mtu = 9000"], 2, "tun_mtu (9000) must be between 576 and 2000");
}

#[test]
fn workers_at_most_256() {
    assert_refused(&["[dataplane]", "workers = 257"], 2, "workers (257) must be at most 256");
    accepted(&["[dataplane]", "workers = 256"]);
}

#[test]
fn offload_switch() {
    assert!(Config::default().dataplane.offload);
    assert!(!accepted(&["[dataplane]", "offload = false"]).dataplane.offload);
    assert_refused(&["[dataplane]", "workers = 2", "offload = \"yes\""], 3, "dataplane.offload:");
}

#[test]
fn steering_switch() {
    assert!(Config::default().dataplane.steering);
    assert!(!accepted(&["[dataplane]", "steering = false"]).dataplane.steering);
    assert_refused(&["[dataplane]", "steering = 1"], 2, "dataplane.steering:");
}

#[test]
fn tun_name_rules() {
    assert_refused(&["[dataplane]", "tun_name = \"\""], 2, "tun_name is empty");
    assert_refused(&["[dataplane]", "tun_name = \"p2sgw-0123456789\""], 2, "longer than 15 bytes");
    assert_refused(&["[dataplane]", "tun_name = \"tun 0\""], 2, "may only contain");
    assert_refused(&["[dataplane]", "tun_name = \"tün0\""], 2, "may only contain");
    assert_refused(&["[dataplane]", "tun_name = \"..\""], 2, "is not a valid interface name");
    accepted(&["[dataplane]", "tun_name = \"vpn_0.a-b123456\""]);
}

#[test]
fn listen_needs_an_address_and_no_duplicates() {
    assert_refused(&["[listen]", "udp = []", "tcp = []"], 2, "no listen address");
    accepted(&["[listen]", "udp = []"]);
    assert_refused(
        &["[listen]", "udp = [", "  \"0.0.0.0:1194\",", "  \"[::]:1194\",", "  \"0.0.0.0:1194\",", "]"],
        5,
        "listen.udp lists 0.0.0.0:1194 twice",
    );
    assert_refused(&["[listen]", "tcp = [\"127.0.0.1:0\"]"], 2, "has port 0");
    // The same address for UDP and TCP is two different sockets.
    accepted(&["[listen]", "udp = [\"0.0.0.0:443\"]", "tcp = [\"0.0.0.0:443\"]"]);
}

#[test]
fn gateway_name_is_a_dns_name_or_ip_literal() {
    accepted(&["[gateway]", "name = \"vpn.example.com\""]);
    accepted(&["[gateway]", "name = \"203.0.113.7\""]);
    accepted(&["[gateway]", "name = \"2001:db8::7\""]);
    assert_refused(&["[gateway]", "name = \"\""], 2, "gateway.name is empty");
    assert_refused(&["[gateway]", "name = \"vpn example\""], 2, "neither a valid DNS name nor an IP address");
    assert_refused(&["[gateway]", "name = \"10.0.0.300\""], 2, "neither a valid DNS name");
    assert_refused(&["[gateway]", "name = \"[2001:db8::7]\""], 2, "without brackets");
}

#[test]
fn revoked_thumbprints_are_40_hex_digits() {
    accepted(&[
        "[pki]",
        "revoked_thumbprints = [",
        "  \"3af81c55029b4e7dc190abcdef0123456789abcd\",",
        "  \"3A:F8:1C:55:02:9B:4E:7D:C1:90:AB:CD:EF:01:23:45:67:89:AB:CD\",",
        "  \"3a f8 1c 55 02 9b 4e 7d c1 90 ab cd ef 01 23 45 67 89 ab cd\",",
        "]",
    ]);
    assert_refused(
        &[
            "[pki]",
            "revoked_thumbprints = [",
            "  \"3af81c55029b4e7dc190abcdef0123456789abcd\",",
            "  \"3af81c55\",",
            "]",
        ],
        4,
        "is not a SHA-1 thumbprint",
    );
    assert_refused(&["[pki]", "revoked_thumbprints = [\"3af81c55029b4e7dc190abcdef0123456789abcg\"]"], 2, "SHA-1");
}

#[test]
fn parse_thumbprint_decodes_and_refuses_signs() {
    let expected = [
        0x3a, 0xf8, 0x1c, 0x55, 0x02, 0x9b, 0x4e, 0x7d, 0xc1, 0x90, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89,
        0xab, 0xcd,
    ];
    assert_eq!(parse_thumbprint("3A:F8:1C:55:02:9B:4E:7D:C1:90:AB:CD:EF:01:23:45:67:89:AB:CD"), Some(expected));
    // from_str_radix would take "+f" as 15.
    assert_eq!(parse_thumbprint("+f f81c55029b4e7dc190abcdef0123456789abcd"), None);
    assert_eq!(parse_thumbprint(""), None);
}

#[test]
fn empty_paths_are_refused() {
    assert_refused(&["[gateway]", "state_dir = \"\""], 2, "gateway.state_dir is an empty path");
    assert_refused(&["[pki]", "crl_files = [\"/a.crl\", \"\"]"], 2, "pki.crl_files has an empty path");
    assert_refused(&["[pki]", "server_key = \"\""], 2, "pki.server_key is an empty path");
}

#[test]
fn the_first_problem_in_the_file_is_reported() {
    assert_refused(&["[dataplane]", "workers = 1000", "[network]", "pool = \"10.0.0.0/30\""], 2, "workers (1000)");
    assert_refused(&["[network]", "pool = \"10.0.0.0/30\"", "[dataplane]", "workers = 1000"], 2, "is too small");
}

#[test]
fn validate_in_code_has_no_line() {
    let mut config = accepted(&["[openvpn]", "tun_mtu = 1400"]);
    config.openvpn.tun_mtu = 100;
    let error = config.validate().unwrap_err();
    assert_eq!((error.file.as_path(), error.line), (Path::new("test.toml"), 2), "still points at the key");

    let mut built = Config::default();
    built.dataplane.workers = 999;
    let error = built.validate().unwrap_err();
    assert_eq!(error.to_string(), "<built-in configuration>: workers (999) must be at most 256 (0 means one per CPU)");
}

// ---- loading from files ----

#[test]
fn load_reads_a_file() {
    let dir = TempDir::new("load");
    let path = dir.file("p2sgw.toml", &toml(&["[openvpn]", "tun_mtu = 1400"]));
    let config = Config::load(&path).unwrap();
    assert_eq!(config.openvpn.tun_mtu, 1400);
    assert_eq!(config.provenance().file(), Some(path.as_path()));

    let bad = dir.file("bad.toml", &toml(&["[openvpn]", "tun_mtu = 1"]));
    let error = Config::load(&bad).unwrap_err();
    assert_eq!(error.to_string(), format!("{}:2:1: tun_mtu (1) must be between 576 and 2000", bad.display()));
}

#[test]
fn unreadable_file_gives_a_clear_error() {
    let error = Config::load(Path::new("/nonexistent/p2sgw.toml")).unwrap_err();
    assert_eq!(error.line, 0);
    assert!(error.to_string().starts_with("/nonexistent/p2sgw.toml: cannot read the configuration file: "), "{error}");
}

#[test]
fn non_utf8_file_is_located() {
    let dir = TempDir::new("utf8");
    let path = dir.0.join("latin1.toml");
    std::fs::write(&path, b"[gateway]\nname = \"caf\xe9\"\n").unwrap();
    let error = Config::load(&path).unwrap_err();
    assert_eq!((error.line, error.column), (2, 12));
    assert!(error.message.contains("not valid UTF-8"));
}

// ---- check_files ----

/// A PKI directory with every default file, and a config text pointing at it.
fn pki_fixture(dir: &TempDir) -> PathBuf {
    let pki = dir.0.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    for name in ["server.crt", "server.key", "ca.crt", "tls-crypt.key"] {
        std::fs::write(pki.join(name), "x").unwrap();
    }
    pki
}

#[test]
fn check_files_accepts_a_complete_pki() {
    let dir = TempDir::new("complete");
    let pki = pki_fixture(&dir);
    let config = accepted(&["[pki]", &format!("dir = {:?}", pki.to_str().unwrap())]);
    config.check_files().unwrap();
    // The optional files are read when present, so they must then be readable.
    std::fs::write(pki.join("crl.pem"), "x").unwrap();
    std::fs::write(pki.join("revoked.txt"), "").unwrap();
    config.check_files().unwrap();
}

#[test]
fn check_files_points_at_a_missing_crl() {
    let dir = TempDir::new("crl");
    let pki = pki_fixture(&dir);
    let present = dir.file("a.crl", "x");
    let missing = dir.0.join("missing.crl");
    let config = accepted(&[
        "[pki]",
        &format!("dir = {:?}", pki.to_str().unwrap()),
        "crl_files = [",
        &format!("  {:?},", present.to_str().unwrap()),
        &format!("  {:?},", missing.to_str().unwrap()),
        "]",
    ]);
    let error = config.check_files().unwrap_err();
    assert_eq!((error.line, error.column), (5, 3));
    assert_eq!(error.message, format!("CRL {} does not exist", missing.display()));
}

#[test]
fn check_files_blames_the_pki_dir_for_a_missing_default() {
    let dir = TempDir::new("default");
    let pki = pki_fixture(&dir);
    std::fs::remove_file(pki.join("server.key")).unwrap();
    let config = accepted(&["[openvpn]", "tun_mtu = 1400", "[pki]", &format!("dir = {:?}", pki.to_str().unwrap())]);
    let error = config.check_files().unwrap_err();
    assert_eq!(error.line, 4);
    assert!(
        error.message.starts_with(&format!("server private key {} does not exist", pki.join("server.key").display()))
    );
    assert!(error.message.contains("p2sgw pki init"), "{}", error.message);
}

#[test]
fn check_files_with_nothing_configured_has_no_line() {
    let mut config = Config::default();
    config.gateway.state_dir = "/nonexistent/p2sgw-state".into();
    let error = config.check_files().unwrap_err();
    assert_eq!(error.line, 0);
    assert!(error.message.contains("/nonexistent/p2sgw-state/pki/server.crt does not exist"), "{}", error.message);
}

#[test]
fn check_files_needs_the_tls_crypt_key_only_when_enabled() {
    let dir = TempDir::new("tlscrypt");
    let pki = pki_fixture(&dir);
    std::fs::remove_file(pki.join("tls-crypt.key")).unwrap();
    let pki_line = format!("dir = {:?}", pki.to_str().unwrap());
    let on = accepted(&["[pki]", &pki_line, "tls_crypt_key = \"/nonexistent/tc.key\""]);
    let error = on.check_files().unwrap_err();
    assert_eq!(error.line, 3);
    assert!(error.message.starts_with("tls-crypt key /nonexistent/tc.key does not exist"));
    let off =
        accepted(&["[pki]", &pki_line, "tls_crypt_key = \"/nonexistent/tc.key\"", "[openvpn]", "tls_crypt = false"]);
    off.check_files().unwrap();
}

#[test]
fn check_files_refuses_a_directory_and_points_at_the_root_entry() {
    let dir = TempDir::new("dir");
    let pki = pki_fixture(&dir);
    let config = accepted(&[
        "[pki]",
        &format!("dir = {:?}", pki.to_str().unwrap()),
        &format!("trusted_roots = [{:?}, {:?}]", pki.join("ca.crt").to_str().unwrap(), pki.to_str().unwrap()),
    ]);
    let error = config.check_files().unwrap_err();
    assert_eq!(error.line, 3);
    assert_eq!(error.message, format!("trusted root {} is not a regular file", pki.display()));
}

#[test]
fn readme_shows_the_tested_example() {
    let readme = include_str!("../../README.md");
    assert!(readme.contains(EXAMPLE.trim_end()), "README.md's example config differs from src/config/example.toml");
}

// ---- authentication ----

#[test]
fn auth_require_names_known_methods_and_sane_combinations() {
    let c = accepted(&[
        "[auth]",
        "require = [\"certificate+radius\", \"token\"]",
        "[radius]",
        "servers = [\"10.0.0.5:1812\"]",
        "secrets = [\"s\"]",
        "[token]",
        "issuers = [\"https://idp.example/\"]",
        "audiences = [\"api://vpn\"]",
    ]);
    assert!(!c.client_certificate_required(), "the token alternative needs no certificate");
    assert!(c.password_used());
    assert_eq!(Config::default().auth.require, vec![AuthRequirement::CERTIFICATE]);
    assert!(Config::default().client_certificate_required());
    assert_refused(
        &["[auth]", "require = [\"certificate\", \"kerberos\"]"],
        2,
        "unknown authentication method \"kerberos\"",
    );
    assert_refused(&["[auth]", "require = []"], 2, "auth.require is empty");
    assert_refused(
        &[
            "[auth]",
            "require = [\"radius+token\"]",
            "[radius]",
            "servers = [\"10.0.0.5:1812\"]",
            "secrets = [\"s\"]",
            "[token]",
            "issuers = [\"https://idp.example/\"]",
            "audiences = [\"api://vpn\"]",
        ],
        2,
        "list them as alternatives",
    );
}

#[test]
fn radius_needs_servers_and_matching_secrets() {
    assert_refused(&["[auth]", "require = [\"radius\"]"], 2, "radius.servers is empty");
    assert_refused(
        &["[auth]", "require = [\"radius\"]", "[radius]", "servers = [\"10.0.0.5:1812\"]"],
        3,
        "radius.secrets is empty",
    );
    assert_refused(
        &[
            "[radius]",
            "servers = [\"10.0.0.5:1812\", \"10.0.0.6:1812\", \"10.0.0.7:1812\"]",
            "secrets = [\"a\", \"b\"]",
        ],
        3,
        "2 entries for 3 servers",
    );
    assert_refused(&["[radius]", "servers = [\"10.0.0.5\"]"], 2, "radius.servers");
    assert_refused(&["[radius]", "timeout_secs = 0"], 2, "radius.timeout_secs must be between 1 and 120");
    let c = accepted(&["[radius]", "servers = [\"10.0.0.5:1812\", \"10.0.0.6:11812\"]", "secrets = [\"a\", \"b\"]"]);
    assert_eq!(c.radius.secret_for(1), "b");
    assert_eq!(
        c.radius.accounting_addresses(),
        vec!["10.0.0.5:1813".parse().unwrap(), "10.0.0.6:1813".parse().unwrap()]
    );
    assert!(format!("{:?}", c.radius).contains("<2 hidden>"), "secrets stay out of debug output");
}

#[test]
fn token_settings_are_checked() {
    assert_refused(&["[auth]", "require = [\"token\"]"], 2, "token.issuers is empty");
    assert_refused(
        &["[auth]", "require = [\"token\"]", "[token]", "issuers = [\"http://idp.example/\"]", "audiences = [\"a\"]"],
        4,
        "must be https://",
    );
    assert_refused(&["[token]", "jwks_uri = \"http://idp.example/keys\""], 2, "must be an https:// URL");
    assert_refused(&["[token]", "required_claims = [\"amr\"]"], 2, "not \"claim=value\"");
    assert_refused(&["[token]", "jwks_file = \"/k\"", "jwks_uri = \"https://idp/keys\""], 3, "not both");
    assert_eq!(parse_claim_condition(" amr = mfa "), Some(("amr".into(), "mfa".into())));
}

#[test]
fn group_pools_are_parsed_and_may_not_overlap() {
    let c = accepted(&["[network]", "group_pools = [\"eng=172.16.202.0/24\", \"a=b=172.16.203.0/29\"]"]);
    assert_eq!(
        c.group_pools(),
        vec![("eng".into(), "172.16.202.0/24".parse().unwrap()), ("a=b".into(), "172.16.203.0/29".parse().unwrap())]
    );
    assert_refused(&["[network]", "group_pools = [\"eng\"]"], 2, "not \"GROUP=PREFIX\"");
    assert_refused(
        &["[network]", "group_pools = [", "  \"eng=172.16.201.128/25\",", "]"],
        3,
        "overlaps the pool 172.16.201.0/24",
    );
    assert_refused(&["[network]", "group_pools = [\"eng=172.16.202.0/30\"]"], 2, "between /8 and /29");
    assert_refused(
        &["[network]", "routes = [\"10.0.0.0/8\"]", "group_pools = [\"eng=10.9.0.0/24\"]"],
        3,
        "overlaps the pushed route 10.0.0.0/8",
    );
}

#[test]
fn sstp_needs_a_certificate_or_radius_alone_and_a_way_to_check_passwords() {
    let off = accepted(&[]);
    assert!(!off.sstp.enabled && !off.sstp.allow_sha1_binding && off.sstp.local_users_file.is_none());
    let local = accepted(&[
        "[auth]",
        "require = [\"certificate\", \"radius\"]",
        "[sstp]",
        "enabled = true",
        "local_users_file = \"/etc/p2sgw/sstp-users\"",
    ]);
    assert!(local.sstp.enabled, "a local user list stands in for RADIUS servers");
    assert_refused(
        &["[auth]", "require = [\"certificate+radius\"]", "[sstp]", "enabled = true", "local_users_file = \"/u\""],
        4,
        "needs \"certificate\" or \"radius\" alone in auth.require",
    );
    let certificates = accepted(&["[auth]", "require = [\"certificate\"]", "[sstp]", "enabled = true"]);
    assert!(certificates.sstp.enabled, "EAP-TLS needs no RADIUS");
    assert_refused(
        &["[auth]", "require = [\"radius\"]", "[radius]", "secrets = [\"s\"]", "[sstp]", "enabled = true"],
        3,
        "auth.require uses radius but radius.servers is empty",
    );
    assert_refused(
        &[
            "[listen]",
            "tcp = []",
            "[auth]",
            "require = [\"radius\"]",
            "[sstp]",
            "enabled = true",
            "local_users_file = \"/u\"",
        ],
        6,
        "needs a listen.tcp address",
    );
}
