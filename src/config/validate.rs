//! The semantic rules a parsed configuration must follow. Each rule names the keys to blame
//! so that the error points at the line to edit.

use std::collections::HashSet;
use std::hash::Hash;
use std::net::IpAddr;
use std::path::Path;

use ipnet::Ipv4Net;

use super::{Config, Problem};

/// Smallest pool: network, gateway, broadcast and at least five clients.
const LONGEST_POOL_PREFIX: u8 = 29;
/// Largest pool: 16 million clients; the allocator's bitmap stays at 2 MiB.
const SHORTEST_POOL_PREFIX: u8 = 8;
const MAX_TRUSTED_ROOT_FILES: usize = 20;
const HANDSHAKE_WINDOW_SECS: std::ops::RangeInclusive<u32> = 5..=600;
const MIN_RENEG_SECS: u32 = 10;
/// IPv4 minimum datagram size (RFC 791) to jumbo frames.
const TUN_MTU: std::ops::RangeInclusive<u16> = 576..=crate::dataplane::buffers::MAX_TUN_MTU;
const MAX_WORKERS: usize = 256;
/// Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.
const MAX_TUN_NAME_LEN: usize = 15;

/// Every rule `config` breaks.
pub(super) fn violations(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_gateway(config, &mut problems);
    check_listen(config, &mut problems);
    check_network(config, &mut problems);
    check_pki(config, &mut problems);
    check_openvpn(config, &mut problems);
    check_dataplane(config, &mut problems);
    check_auth(config, &mut problems);
    check_admin(config, &mut problems);
    check_sstp(config, &mut problems);
    check_ikev2(config, &mut problems);
    problems
}

fn check_ikev2(config: &Config, problems: &mut Vec<Problem>) {
    let ikev2 = &config.ikev2;
    if ikev2.dpd_secs == 0 || ikev2.dpd_secs > 3600 {
        problems.push(Problem::new(&["ikev2.dpd_secs"], "ikev2.dpd_secs must be between 1 and 3600".to_string()));
    }
    if !ikev2.enabled {
        return;
    }
    if ikev2.listen.is_empty() {
        problems
            .push(Problem::new(&["ikev2.enabled", "ikev2.listen"], "ikev2.enabled needs a listen address".to_string()));
    }
    let mut seen = std::collections::HashSet::new();
    for address in &ikev2.listen {
        if !seen.insert(address) {
            problems.push(Problem::new(&["ikev2.listen"], format!("ikev2.listen names {address} twice")));
        }
    }
    if !config.auth.require.iter().any(|r| !r.token && (r.certificate || r.radius) && !(r.certificate && r.radius)) {
        problems.push(Problem::new(
            &["ikev2.enabled", "auth.require"],
            "ikev2.enabled needs \"certificate\" or \"radius\" alone in auth.require: IKEv2 clients sign in \
             with a certificate or with EAP-MSCHAPv2 (checked by RADIUS)"
                .to_string(),
        ));
    }
}

fn check_sstp(config: &Config, problems: &mut Vec<Problem>) {
    let sstp = &config.sstp;
    if let Some(file) = &sstp.local_users_file {
        check_path_not_empty("sstp.local_users_file", file, problems);
    }
    if !sstp.enabled {
        return;
    }
    if config.listen.tcp.is_empty() {
        problems.push(Problem::new(
            &["sstp.enabled", "listen.tcp"],
            "sstp.enabled needs a listen.tcp address (SSTP shares it with OpenVPN over TCP)".to_string(),
        ));
    }
    let alone = |method: fn(&crate::config::AuthRequirement) -> bool| {
        config
            .auth
            .require
            .iter()
            .any(|r| method(r) && [r.certificate, r.radius, r.token].iter().filter(|m| **m).count() == 1)
    };
    if !alone(|r| r.radius) && !alone(|r| r.certificate) {
        problems.push(Problem::new(
            &["sstp.enabled", "auth.require"],
            "sstp.enabled needs \"certificate\" or \"radius\" alone in auth.require: SSTP users sign in with \
             EAP-TLS (a certificate) or MS-CHAPv2 (which counts as the radius method)"
                .to_string(),
        ));
    }
    // Without a local user list, the `radius` this needs makes check_auth ask for servers.
}

fn check_admin(config: &Config, problems: &mut Vec<Problem>) {
    let admin = &config.admin;
    if let Some(socket) = &admin.socket {
        check_path_not_empty("admin.socket", socket, problems);
    }
    match (&admin.tcp, &admin.token_file) {
        (Some(_), None) => problems.push(Problem::new(
            &["admin.tcp", "admin"],
            "admin.tcp needs admin.token_file: the API is never served over the network without a bearer token"
                .to_string(),
        )),
        (None, Some(_)) => problems.push(Problem::new(
            &["admin.token_file", "admin"],
            "admin.token_file is set but admin.tcp is not: the token is only used by the HTTPS listener".to_string(),
        )),
        _ => {}
    }
    if let Some(tcp) = admin.tcp
        && config.listen.tcp.iter().any(|l| l.port() == tcp.port() && (l.ip() == tcp.ip() || l.ip().is_unspecified()))
    {
        problems.push(Problem::new(
            &["admin.tcp"],
            format!("admin.tcp {tcp} is also a tunnel address in listen.tcp; use another port"),
        ));
    }
}

const RADIUS_TIMEOUT_SECS: std::ops::RangeInclusive<u32> = 1..=120;
const RADIUS_TRIES: std::ops::RangeInclusive<u32> = 1..=10;
const MIN_INTERIM_SECS: u32 = 60;
const MAX_CLOCK_SKEW_SECS: u32 = 600;

fn check_auth(config: &Config, problems: &mut Vec<Problem>) {
    let auth = &config.auth;
    if auth.require.is_empty() {
        problems.push(Problem::new(
            &["auth.require"],
            "auth.require is empty: list at least one way in, e.g. [\"certificate\"]".to_string(),
        ));
    }
    for (i, r) in auth.require.iter().enumerate() {
        if r.radius && r.token {
            problems.push(Problem::element(
                "auth.require",
                i,
                format!(
                    "{r}: RADIUS and a token both need the client's password; \
                     list them as alternatives instead: [\"radius\", \"token\"]"
                ),
            ));
        }
    }
    for i in duplicate_indices(&auth.require) {
        problems.push(Problem::element("auth.require", i, format!("auth.require lists {} twice", auth.require[i])));
    }
    let radius = &config.radius;
    // With a local SSTP user list, `radius` can be met without a RADIUS server.
    let local_users_only = config.sstp.enabled && config.sstp.local_users_file.is_some();
    if auth.uses(|r| r.radius) && !local_users_only {
        if radius.servers.is_empty() {
            problems.push(Problem::new(
                &["radius.servers", "radius", "auth.require"],
                "auth.require uses radius but radius.servers is empty".to_string(),
            ));
        }
        if radius.secrets.is_empty() {
            problems.push(Problem::new(
                &["radius.secrets", "radius", "auth.require"],
                "auth.require uses radius but radius.secrets is empty".to_string(),
            ));
        }
    }
    if radius.secrets.len() > 1 && radius.secrets.len() != radius.servers.len() {
        problems.push(Problem::new(
            &["radius.secrets"],
            format!(
                "radius.secrets has {} entries for {} servers: give one secret for all, or one per server",
                radius.secrets.len(),
                radius.servers.len()
            ),
        ));
    }
    for (i, secret) in radius.secrets.iter().enumerate() {
        if secret.is_empty() {
            problems.push(Problem::element("radius.secrets", i, "radius.secrets has an empty secret".to_string()));
        }
    }
    for (key, addresses) in
        [("radius.servers", &radius.servers), ("radius.accounting_servers", &radius.accounting_servers)]
    {
        for i in duplicate_indices(addresses) {
            problems.push(Problem::element(key, i, format!("{key} lists {} twice", addresses[i])));
        }
        for (i, a) in addresses.iter().enumerate() {
            if a.port() == 0 {
                problems.push(Problem::element(key, i, format!("{key} address {a} has port 0")));
            }
        }
    }
    if !RADIUS_TIMEOUT_SECS.contains(&radius.timeout_secs) {
        problems.push(Problem::new(
            &["radius.timeout_secs"],
            format!(
                "radius.timeout_secs must be between {} and {}",
                RADIUS_TIMEOUT_SECS.start(),
                RADIUS_TIMEOUT_SECS.end()
            ),
        ));
    }
    if !RADIUS_TRIES.contains(&radius.tries) {
        problems.push(Problem::new(
            &["radius.tries"],
            format!("radius.tries must be between {} and {}", RADIUS_TRIES.start(), RADIUS_TRIES.end()),
        ));
    }
    if radius.nas_identifier.is_empty() {
        problems.push(Problem::new(&["radius.nas_identifier"], "radius.nas_identifier is empty".to_string()));
    }
    if radius.interim_interval_secs < MIN_INTERIM_SECS {
        problems.push(Problem::new(
            &["radius.interim_interval_secs"],
            format!("radius.interim_interval_secs must be at least {MIN_INTERIM_SECS}"),
        ));
    }

    let token = &config.token;
    if auth.uses(|r| r.token) {
        if token.issuers.is_empty() {
            problems.push(Problem::new(
                &["token.issuers", "token", "auth.require"],
                "auth.require uses token but token.issuers is empty".to_string(),
            ));
        }
        if token.audiences.is_empty() {
            problems.push(Problem::new(
                &["token.audiences", "token", "auth.require"],
                "auth.require uses token but token.audiences is empty".to_string(),
            ));
        }
        if token.jwks_file.is_none()
            && token.jwks_uri.is_none()
            && let Some(first) = token.issuers.first().filter(|i| !i.starts_with("https://"))
        {
            problems.push(Problem::element(
                "token.issuers",
                0,
                format!(
                    "signing keys come from OIDC discovery at the first issuer, which must be https:// \
                         (got {first:?}); or set token.jwks_file or token.jwks_uri"
                ),
            ));
        }
    }
    if token.jwks_file.is_some() && token.jwks_uri.is_some() {
        problems.push(Problem::new(
            &["token.jwks_uri", "token.jwks_file"],
            "set token.jwks_file or token.jwks_uri, not both".to_string(),
        ));
    }
    if let Some(uri) = token.jwks_uri.as_ref().filter(|u| !u.starts_with("https://")) {
        problems.push(Problem::new(&["token.jwks_uri"], format!("token.jwks_uri {uri:?} must be an https:// URL")));
    }
    for (i, condition) in token.required_claims.iter().enumerate() {
        if super::parse_claim_condition(condition).is_none() {
            problems.push(Problem::element(
                "token.required_claims",
                i,
                format!("token.required_claims entry {condition:?} is not \"claim=value\" (e.g. \"amr=mfa\")"),
            ));
        }
    }
    if token.min_key_refresh_secs == 0 {
        problems.push(Problem::new(
            &["token.min_key_refresh_secs"],
            "token.min_key_refresh_secs must be at least 1".to_string(),
        ));
    }
    if token.clock_skew_secs > MAX_CLOCK_SKEW_SECS {
        problems.push(Problem::new(
            &["token.clock_skew_secs"],
            format!("token.clock_skew_secs must be at most {MAX_CLOCK_SKEW_SECS}"),
        ));
    }

    let network = &config.network;
    let mut taken: Vec<Ipv4Net> = vec![network.pool];
    for (i, entry) in network.group_pools.iter().enumerate() {
        let Some((group, prefix)) = super::parse_group_pool(entry) else {
            problems.push(Problem::element(
                "network.group_pools",
                i,
                format!(
                    "network.group_pools entry {entry:?} is not \"GROUP=PREFIX\" (e.g. \"engineering=172.16.202.0/24\")"
                ),
            ));
            continue;
        };
        if !(SHORTEST_POOL_PREFIX..=LONGEST_POOL_PREFIX).contains(&prefix.prefix_len()) {
            problems.push(Problem::element(
                "network.group_pools",
                i,
                format!("pool {prefix} of group {group:?} must be between /{SHORTEST_POOL_PREFIX} and /{LONGEST_POOL_PREFIX}"),
            ));
        }
        if let Some(message) = host_bits_message("pool", prefix) {
            problems.push(Problem::element("network.group_pools", i, message));
        }
        if let Some(other) = taken.iter().find(|t| overlaps(**t, prefix)) {
            problems.push(Problem::element(
                "network.group_pools",
                i,
                format!("pool {prefix} of group {group:?} overlaps the pool {other}"),
            ));
        }
        if let Some(route) = network.routes.iter().find(|r| overlaps(**r, prefix)) {
            problems.push(Problem::element(
                "network.group_pools",
                i,
                format!("pool {prefix} of group {group:?} overlaps the pushed route {route}"),
            ));
        }
        taken.push(prefix);
    }
}

fn check_gateway(config: &Config, problems: &mut Vec<Problem>) {
    if let Some(name) = &config.gateway.name {
        if name.is_empty() {
            problems.push(Problem::new(
                &["gateway.name"],
                "gateway.name is empty: remove the key to use this host's name".to_string(),
            ));
        } else if name.parse::<IpAddr>().is_err() && !is_dns_name(name) {
            let bracket_hint = if name.starts_with('[') { " (write IPv6 addresses without brackets)" } else { "" };
            problems.push(Problem::new(
                &["gateway.name"],
                format!("gateway.name {name:?} is neither a valid DNS name nor an IP address{bracket_hint}"),
            ));
        }
    }
    check_path_not_empty("gateway.state_dir", &config.gateway.state_dir, problems);
}

fn check_listen(config: &Config, problems: &mut Vec<Problem>) {
    let listen = &config.listen;
    if listen.udp.is_empty() && listen.tcp.is_empty() && !config.ikev2.enabled {
        problems.push(Problem::new(
            &["listen.udp", "listen.tcp"],
            "no listen address: set at least one of listen.udp and listen.tcp, or enable ikev2".to_string(),
        ));
    }
    for (key, addresses) in [("listen.udp", &listen.udp), ("listen.tcp", &listen.tcp)] {
        for (i, address) in addresses.iter().enumerate() {
            if address.port() == 0 {
                problems.push(Problem::element(key, i, format!("{key} address {address} has port 0")));
            }
        }
        for i in duplicate_indices(addresses) {
            problems.push(Problem::element(key, i, format!("{key} lists {} twice", addresses[i])));
        }
    }
}

fn check_network(config: &Config, problems: &mut Vec<Problem>) {
    let network = &config.network;
    let pool = network.pool;
    if pool.prefix_len() > LONGEST_POOL_PREFIX {
        problems.push(Problem::new(
            &["network.pool"],
            format!("pool {pool} is too small: a pool must be /{LONGEST_POOL_PREFIX} or larger"),
        ));
    } else if pool.prefix_len() < SHORTEST_POOL_PREFIX {
        problems.push(Problem::new(
            &["network.pool"],
            format!("pool {pool} is too large: a pool must be /{SHORTEST_POOL_PREFIX} or smaller"),
        ));
    }
    if let Some(message) = host_bits_message("pool", pool) {
        problems.push(Problem::new(&["network.pool"], message));
    }

    for (i, route) in network.routes.iter().enumerate() {
        if let Some(message) = host_bits_message("route", *route) {
            problems.push(Problem::element("network.routes", i, message));
        }
        if overlaps(*route, pool) {
            let hint = if route.prefix_len() == 0 {
                "; to send all traffic through the tunnel, set full_tunnel = true"
            } else {
                ""
            };
            problems.push(Problem::element(
                "network.routes",
                i,
                format!("route {route} overlaps the client pool {pool}{hint}"),
            ));
        }
    }
    for i in duplicate_indices(&network.routes) {
        let route = network.routes[i];
        problems.push(Problem::element("network.routes", i, format!("route {route} is listed twice")));
    }

    for (i, domain) in network.dns_search.iter().enumerate() {
        if !is_dns_name(domain) {
            problems.push(Problem::element(
                "network.dns_search",
                i,
                format!("dns_search entry {domain:?} is not a valid DNS name"),
            ));
        }
    }
}

fn check_pki(config: &Config, problems: &mut Vec<Problem>) {
    let pki = &config.pki;
    for (key, path) in [
        ("pki.dir", &pki.dir),
        ("pki.server_cert", &pki.server_cert),
        ("pki.server_key", &pki.server_key),
        ("pki.tls_crypt_key", &pki.tls_crypt_key),
    ] {
        if let Some(path) = path {
            check_path_not_empty(key, path, problems);
        }
    }
    for (key, paths) in [("pki.trusted_roots", &pki.trusted_roots), ("pki.crl_files", &pki.crl_files)] {
        for (i, path) in paths.iter().enumerate() {
            if path.as_os_str().is_empty() {
                problems.push(Problem::element(key, i, format!("{key} has an empty path")));
            }
        }
    }
    if pki.trusted_roots.len() > MAX_TRUSTED_ROOT_FILES {
        problems.push(Problem::element(
            "pki.trusted_roots",
            MAX_TRUSTED_ROOT_FILES,
            format!(
                "pki.trusted_roots lists {} files: at most {MAX_TRUSTED_ROOT_FILES} are allowed",
                pki.trusted_roots.len()
            ),
        ));
    }
    for (i, thumbprint) in pki.revoked_thumbprints.iter().enumerate() {
        if parse_thumbprint(thumbprint).is_none() {
            problems.push(Problem::element(
                "pki.revoked_thumbprints",
                i,
                format!(
                    "revoked_thumbprints entry {thumbprint:?} is not a SHA-1 thumbprint: \
                     expected 40 hex digits (colons and spaces allowed)"
                ),
            ));
        }
    }
}

fn check_openvpn(config: &Config, problems: &mut Vec<Problem>) {
    let openvpn = &config.openvpn;
    if openvpn.data_ciphers.is_empty() {
        problems.push(Problem::new(
            &["openvpn.data_ciphers"],
            "openvpn.data_ciphers is empty: list at least one cipher".to_string(),
        ));
    }
    for i in duplicate_indices(&openvpn.data_ciphers) {
        let cipher = openvpn.data_ciphers[i];
        problems.push(Problem::element(
            "openvpn.data_ciphers",
            i,
            format!("openvpn.data_ciphers lists {cipher} twice"),
        ));
    }

    let interval = openvpn.keepalive_interval_secs;
    let timeout = openvpn.keepalive_timeout_secs;
    if interval < 1 {
        problems.push(Problem::new(
            &["openvpn.keepalive_interval_secs"],
            "keepalive_interval_secs must be at least 1".to_string(),
        ));
    } else if u64::from(timeout) < 2 * u64::from(interval) {
        // Blame the timeout when the file set it, else the interval that made the default too short.
        problems.push(Problem::new(
            &["openvpn.keepalive_timeout_secs", "openvpn.keepalive_interval_secs"],
            format!(
                "keepalive_timeout_secs ({timeout}) must be at least twice \
                 keepalive_interval_secs ({interval}), so that one lost ping does not drop a client"
            ),
        ));
    }
    if openvpn.reneg_secs != 0 && openvpn.reneg_secs < MIN_RENEG_SECS {
        problems.push(Problem::new(
            &["openvpn.reneg_secs"],
            format!(
                "reneg_secs ({}) must be 0 (no server-initiated renegotiation) or at least {MIN_RENEG_SECS}",
                openvpn.reneg_secs
            ),
        ));
    }
    if !HANDSHAKE_WINDOW_SECS.contains(&openvpn.handshake_window_secs) {
        problems.push(Problem::new(
            &["openvpn.handshake_window_secs"],
            format!(
                "handshake_window_secs ({}) must be between {} and {}",
                openvpn.handshake_window_secs,
                HANDSHAKE_WINDOW_SECS.start(),
                HANDSHAKE_WINDOW_SECS.end()
            ),
        ));
    }
    if !TUN_MTU.contains(&openvpn.tun_mtu) {
        problems.push(Problem::new(
            &["openvpn.tun_mtu"],
            format!("tun_mtu ({}) must be between {} and {}", openvpn.tun_mtu, TUN_MTU.start(), TUN_MTU.end()),
        ));
    }
}

fn check_dataplane(config: &Config, problems: &mut Vec<Problem>) {
    let dataplane = &config.dataplane;
    if dataplane.workers > MAX_WORKERS {
        problems.push(Problem::new(
            &["dataplane.workers"],
            format!("workers ({}) must be at most {MAX_WORKERS} (0 means one per CPU)", dataplane.workers),
        ));
    }
    let name = &dataplane.tun_name;
    let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    let problem = if name.is_empty() {
        Some("tun_name is empty".to_string())
    } else if name.len() > MAX_TUN_NAME_LEN {
        Some(format!("tun_name {name:?} is longer than {MAX_TUN_NAME_LEN} bytes (Linux interface name limit)"))
    } else if !valid_chars {
        Some(format!("tun_name {name:?} may only contain letters, digits, '_', '.' and '-'"))
    } else if name == "." || name == ".." {
        Some(format!("tun_name {name:?} is not a valid interface name"))
    } else {
        None
    };
    if let Some(message) = problem {
        problems.push(Problem::new(&["dataplane.tun_name"], message));
    }
}

fn check_path_not_empty(key: &str, path: &Path, problems: &mut Vec<Problem>) {
    if path.as_os_str().is_empty() {
        problems.push(Problem::new(&[key], format!("{key} is an empty path")));
    }
}

/// "pool 10.0.0.1/24 has host bits set: write it as 10.0.0.0/24" (None for a network address).
fn host_bits_message(what: &str, net: Ipv4Net) -> Option<String> {
    (net.addr() != net.network()).then(|| format!("{what} {net} has host bits set: write it as {}", net.trunc()))
}

/// Two prefixes overlap exactly when one contains the other's network address.
fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Indices of the elements equal to an earlier element.
fn duplicate_indices<T: Eq + Hash>(items: &[T]) -> Vec<usize> {
    let mut seen = HashSet::new();
    (0..items.len()).filter(|&i| !seen.insert(&items[i])).collect()
}

/// A host name by RFC 1123: dot-separated labels of letters, digits and inner hyphens,
/// 1 to 63 bytes each, at most 253 in all, and not all-numeric in the last label (RFC 3696 §2),
/// which would make "10.0.0.300" a name.
fn is_dns_name(name: &str) -> bool {
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let last_label_numeric = name.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    name.len() <= 253 && name.split('.').all(valid_label) && !last_label_numeric
}

/// Parses a SHA-1 certificate thumbprint written as 40 hex digits, with colons and
/// whitespace allowed anywhere (as tools print them: `AB:CD:...`, `ab cd ...`).
pub fn parse_thumbprint(text: &str) -> Option<[u8; 20]> {
    let digits: Vec<u8> = text.bytes().filter(|&b| b != b':' && !b.is_ascii_whitespace()).collect();
    if digits.len() != 40 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut thumbprint = [0u8; 20];
    for (byte, pair) in thumbprint.iter_mut().zip(digits.chunks_exact(2)) {
        let hex = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(thumbprint)
}
