//! The effective configuration as TOML (`p2sgw check-config` prints it).

use std::fmt::Display;
use std::path::Path;

use super::Config;
use crate::pool::AddressPool;

pub(super) fn effective_toml(config: &Config) -> String {
    let mut out = Toml::default();
    out.comment("Effective p2sgw configuration: every key with the value in force.");
    out.comment("Commented-out keys are unset; they show the value the gateway derives for them.");
    if let Some(file) = config.provenance().file() {
        out.comment(&format!("Read from {}", file.display()));
    }

    let gateway = &config.gateway;
    out.section("gateway");
    match &gateway.name {
        Some(name) => out.key("name", string(name), None),
        None => out.unset("name", string(&config.gateway_name()), "this host's name"),
    }
    out.key("state_dir", path(&gateway.state_dir), None);

    let listen = &config.listen;
    out.section("listen");
    out.key("udp", strings(&listen.udp), listen.udp.is_empty().then_some("UDP disabled"));
    out.key("tcp", strings(&listen.tcp), listen.tcp.is_empty().then_some("TCP disabled"));

    let network = &config.network;
    out.section("network");
    let pool_note = format!(
        "gateway {}, {} client addresses",
        config.gateway_tunnel_address(),
        AddressPool::client_capacity(network.pool)
    );
    out.key("pool", string(&network.pool), Some(&pool_note));
    out.key("routes", strings(&network.routes), None);
    out.key("full_tunnel", network.full_tunnel, None);
    out.key("dns_servers", strings(&network.dns_servers), None);
    out.key("dns_search", strings(&network.dns_search), None);
    out.key("group_pools", strings(&network.group_pools), None);

    let pki = &config.pki;
    let pki_dir = config.pki_dir();
    out.section("pki");
    match &pki.dir {
        Some(dir) => out.key("dir", path(dir), None),
        None => out.unset("dir", path(&pki_dir), "<state_dir>/pki"),
    }
    match &pki.server_cert {
        Some(file) => out.key("server_cert", path(file), None),
        None => out.unset("server_cert", path(&config.server_cert_path()), "<dir>/server.crt"),
    }
    match &pki.server_key {
        Some(file) => out.key("server_key", path(file), None),
        None => out.unset("server_key", path(&config.server_key_path()), "<dir>/server.key"),
    }
    let roots_note =
        pki.trusted_roots.is_empty().then(|| format!("empty: uses {}", paths(&config.trusted_root_paths())));
    out.key("trusted_roots", paths(&pki.trusted_roots), roots_note.as_deref());
    let own_crl = pki_dir.join("crl.pem");
    let crl_note = (!pki.crl_files.contains(&own_crl)).then(|| format!("also read when present: {}", path(&own_crl)));
    out.key("crl_files", paths(&pki.crl_files), crl_note.as_deref());
    let revoked_note = format!("also read when present: {}", path(&config.revoked_list_path()));
    out.key("revoked_thumbprints", strings(&pki.revoked_thumbprints), Some(&revoked_note));
    match &pki.tls_crypt_key {
        Some(file) => out.key("tls_crypt_key", path(file), None),
        None => out.unset("tls_crypt_key", path(&config.tls_crypt_key_path()), "<dir>/tls-crypt.key"),
    }

    let openvpn = &config.openvpn;
    out.section("openvpn");
    out.key("data_ciphers", strings(&openvpn.data_ciphers), None);
    out.key("tls_crypt", openvpn.tls_crypt, None);
    out.key("keepalive_interval_secs", openvpn.keepalive_interval_secs, None);
    out.key("keepalive_timeout_secs", openvpn.keepalive_timeout_secs, None);
    out.key("reneg_secs", openvpn.reneg_secs, (openvpn.reneg_secs == 0).then_some("no server-initiated renegotiation"));
    out.key("handshake_window_secs", openvpn.handshake_window_secs, None);
    out.key("tun_mtu", openvpn.tun_mtu, None);

    let dataplane = &config.dataplane;
    out.section("dataplane");
    let workers_note = (dataplane.workers == 0).then(|| match std::thread::available_parallelism() {
        Ok(cpus) => format!("one per online CPU: {cpus} on this host"),
        Err(_) => "one per online CPU".to_string(),
    });
    out.key("workers", dataplane.workers, workers_note.as_deref());
    out.key("tun_name", string(&dataplane.tun_name), None);
    out.key("offload", dataplane.offload, (!dataplane.offload).then_some("one system call per packet"));
    out.key(
        "steering",
        dataplane.steering,
        (!dataplane.steering).then_some("the kernel picks TUN queues by flow; workers hand packets over"),
    );

    let auth = &config.auth;
    out.section("auth");
    out.key("require", strings(&auth.require), Some("any one of these admits a client"));

    let radius = &config.radius;
    out.section("radius");
    out.key("servers", strings(&radius.servers), None);
    let acct_note =
        radius.accounting_servers.is_empty().then(|| format!("empty: {}", strings(&radius.accounting_addresses())));
    out.key("accounting_servers", strings(&radius.accounting_servers), acct_note.as_deref());
    // Secrets are not printed: this output ends up in terminals and tickets.
    out.comment(&format!("secrets = [...]  ({} set, not shown)", radius.secrets.len()));
    out.key("timeout_secs", radius.timeout_secs, None);
    out.key("tries", radius.tries, None);
    out.key("nas_identifier", string(&radius.nas_identifier), None);
    out.key("accounting", radius.accounting, None);
    out.key("interim_interval_secs", radius.interim_interval_secs, None);
    out.key("require_message_authenticator", radius.require_message_authenticator, None);

    let token = &config.token;
    out.section("token");
    out.key("issuers", strings(&token.issuers), None);
    out.key("audiences", strings(&token.audiences), None);
    match &token.tenant {
        Some(t) => out.key("tenant", string(t), None),
        None => out.unset("tenant", string(&""), "no tid check"),
    }
    match &token.jwks_file {
        Some(file) => out.key("jwks_file", path(file), None),
        None => out.unset("jwks_file", string(&""), "keys not read from a file"),
    }
    match &token.jwks_uri {
        Some(uri) => out.key("jwks_uri", string(uri), None),
        None if token.jwks_file.is_some() => out.unset("jwks_uri", string(&""), "keys from jwks_file"),
        None => {
            let discovery = token.issuers.first().map_or_else(
                || "no issuer".to_string(),
                |i| format!("{}/.well-known/openid-configuration", i.trim_end_matches('/')),
            );
            out.unset("jwks_uri", string(&""), &format!("keys from OIDC discovery: {discovery}"));
        }
    }
    out.key("ca_files", paths(&token.ca_files), None);
    out.key("clock_skew_secs", token.clock_skew_secs, None);
    out.key("required_claims", strings(&token.required_claims), None);
    out.key("allowed_groups", strings(&token.allowed_groups), None);
    out.key("recheck_on_renegotiation", token.recheck_on_renegotiation, None);
    out.key("min_key_refresh_secs", token.min_key_refresh_secs, None);

    let admin = &config.admin;
    out.section("admin");
    match &admin.socket {
        Some(socket) => out.key("socket", path(socket), None),
        None => out.unset("socket", path(&config.admin_socket_path()), "in the state directory"),
    }
    match &admin.tcp {
        Some(address) => out.key("tcp", string(address), None),
        None => out.comment("tcp = \"127.0.0.1:9443\"  (unset: no HTTPS admin listener)"),
    }
    match &admin.token_file {
        Some(file) => out.key("token_file", path(file), None),
        None => out.comment("token_file = \"/etc/p2sgw/admin-token\"  (unset)"),
    }

    let sstp = &config.sstp;
    out.section("sstp");
    out.key("enabled", sstp.enabled, None);
    match &sstp.local_users_file {
        Some(file) => out.key("local_users_file", path(file), None),
        None => out.comment("local_users_file = \"/etc/p2sgw/sstp-users\"  (unset: RADIUS checks every user)"),
    }
    out.key("allow_sha1_binding", sstp.allow_sha1_binding, None);

    let ikev2 = &config.ikev2;
    out.section("ikev2");
    out.key("enabled", ikev2.enabled, None);
    out.key("listen", strings(&ikev2.listen), None);
    out.key("legacy_windows", ikev2.legacy_windows, None);
    out.key("dpd_secs", ikev2.dpd_secs, None);
    out.text
}

#[derive(Default)]
struct Toml {
    text: String,
}

impl Toml {
    fn comment(&mut self, text: &str) {
        self.text += &format!("# {text}\n");
    }

    fn section(&mut self, name: &str) {
        self.text += &format!("\n[{name}]\n");
    }

    fn key(&mut self, name: &str, value: impl Display, note: Option<&str>) {
        self.text += &match note {
            Some(note) => format!("{name} = {value}  # {note}\n"),
            None => format!("{name} = {value}\n"),
        };
    }

    fn unset(&mut self, name: &str, derived: impl Display, derived_from: &str) {
        self.text += &format!("# {name} = {derived}  (unset: {derived_from})\n");
    }
}

fn string(value: &impl Display) -> toml::Value {
    toml::Value::String(value.to_string())
}

fn strings<T: Display>(values: &[T]) -> toml::Value {
    toml::Value::Array(values.iter().map(string).collect())
}

/// Paths are written as TOML strings; a non-UTF-8 byte would show as U+FFFD.
fn path(value: &Path) -> toml::Value {
    toml::Value::String(value.to_string_lossy().into_owned())
}

fn paths(values: &[impl AsRef<Path>]) -> toml::Value {
    toml::Value::Array(values.iter().map(|p| path(p.as_ref())).collect())
}
