//! Client configuration packages: one zip with what every kind of client needs, in the
//! layout Azure VPN users know (`Generic/`, `OpenVPN/`, `AzureVPN/`).
//!
//! Only the tunnel types the gateway serves are included: OpenVPN always; with `[ikev2]
//! enabled`, `strongSwan/` (swanctl), `Mac/<gateway>.mobileconfig` (a configuration profile)
//! and the IKEv2 part of `WindowsAmd64/p2sgw-vpn.ps1`; with `[sstp] enabled`, that script's
//! SSTP connection.

use std::fmt::Write as _;
use std::io::{Cursor, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use rustls::pki_types::CertificateDer;
use zip::write::SimpleFileOptions;

use crate::config::Config;
use crate::pki::{Thumbprint, load_certs, subject_common_name};
use crate::profile::apple::{apple_profile, profile_file_name};
use crate::profile::ikev2::{Ikev2Profile, SignIn};
use crate::profile::strongswan::strongswan_files;
use crate::profile::windows::windows_script;
use crate::profile::{ProfileTransport, openvpn_profile};

/// Where the fingerprint of the settings the last package was made for is kept.
const STAMP_FILE: &str = "client-package.stamp";

/// The package as zip bytes. With `name`, the profiles carry that client's certificate
/// and key (or name the user, for password sign-in); otherwise placeholders.
pub fn client_package(config: &Config, name: Option<&str>) -> Result<Vec<u8>> {
    let root = server_root(config)?;
    let settings = vpn_settings_xml(config, &root)?;
    let ikev2 = if config.ikev2.enabled {
        Some(Ikev2Profile::new(config, name, root.clone()).context("IKEv2 profiles")?)
    } else {
        None
    };
    let apple = match &ikev2 {
        Some(profile) => apple_profile(profile)?,
        None => None,
    };
    let windows = windows_script(config, name, &root, ikev2.as_ref())?;
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut add = |path: &str, bytes: &[u8]| -> Result<()> {
        zip.start_file(path, options).with_context(|| format!("zip: {path}"))?;
        zip.write_all(bytes).with_context(|| format!("zip: {path}"))
    };
    add("README.txt", readme(config, name, ikev2.as_ref(), apple.is_some(), windows.is_some()).as_bytes())?;
    add("Generic/VpnSettings.xml", settings.as_bytes())?;
    add("Generic/VpnServerRoot.cer", root.as_ref())?;
    add("OpenVPN/vpnconfig.ovpn", openvpn_profile(config, name, ProfileTransport::Both)?.as_bytes())?;
    if config.auth.uses(|r| r.token) {
        add("AzureVPN/azurevpnconfig.xml", azure_vpn_xml(config, &root)?.as_bytes())?;
    }
    if let Some(profile) = &ikev2 {
        for file in strongswan_files(profile) {
            add(&format!("strongSwan/{}", file.path), &file.bytes)?;
        }
    }
    if let Some(file) = apple {
        add(&format!("Mac/{}", file.path), &file.bytes)?;
    }
    if let Some(file) = windows {
        add(&format!("WindowsAmd64/{}", file.path), &file.bytes)?;
    }
    let cursor = zip.finish().context("zip")?;
    Ok(cursor.into_inner())
}

/// Records that packages now match `config` (called after writing one).
pub fn record_package_settings(config: &Config) -> Result<()> {
    let path = stamp_path(config);
    crate::pki::write_atomically(&path, settings_fingerprint(config)?.as_bytes(), 0o644)
}

/// When packages were made for other settings than `config`'s, a sentence saying so.
pub fn stale_package_warning(config: &Config) -> Option<String> {
    let recorded = std::fs::read_to_string(stamp_path(config)).ok()?;
    let current = settings_fingerprint(config).ok()?;
    (recorded.trim() != current).then(|| {
        "the gateway's address, tunnels, routes, DNS or authentication changed since the client packages were \
         made: regenerate them (p2sgw client-package) and hand them out again"
            .to_string()
    })
}

fn stamp_path(config: &Config) -> PathBuf {
    config.gateway.state_dir.join(STAMP_FILE)
}

/// A digest of what the packages say that does not depend on the user.
fn settings_fingerprint(config: &Config) -> Result<String> {
    let root = server_root(config)?;
    let mut settings = vpn_settings_xml(config, &root)?;
    if config.ikev2.enabled {
        // The IKEv2 profiles also carry the client's dead-peer-detection period.
        settings.push_str(&format!("ikev2.dpd_secs={}", config.ikev2.dpd_secs));
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, settings.as_bytes());
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// The root CA that issued the gateway's certificate: the last certificate of the
/// server's chain file when it is self-issued, else the PKI's CA.
fn server_root(config: &Config) -> Result<CertificateDer<'static>> {
    let chain = load_certs(&config.server_cert_path())?;
    if chain.len() > 1
        && let Some(last) = chain.last()
        && let Ok((_, cert)) = x509_parser::parse_x509_certificate(last)
        && cert.subject() == cert.issuer()
    {
        return Ok(last.clone());
    }
    let ca: PathBuf = config.pki_dir().join("ca.crt");
    load_certs(&ca)?.into_iter().next().with_context(|| format!("{} holds no certificate", ca.display()))
}

fn vpn_settings_xml(config: &Config, root: &CertificateDer<'_>) -> Result<String> {
    let server_name = server_name(&config.server_cert_path())?;
    let mut x = Xml::new();
    x.open("VpnProfile");
    x.leaf("VpnServer", &config.gateway_name());
    let mut tunnel_types = vec!["OpenVPN"];
    if config.ikev2.enabled {
        tunnel_types.push("IkeV2");
    }
    if config.sstp.enabled {
        tunnel_types.push("Sstp");
    }
    x.leaf("VpnType", &tunnel_types.join(", "));
    x.open("Transports");
    for udp in &config.listen.udp {
        x.leaf("Udp", &udp.port().to_string());
    }
    for tcp in &config.listen.tcp {
        x.leaf("Tcp", &tcp.port().to_string());
    }
    if config.ikev2.enabled {
        // IKE, then IKE and ESP in UDP once a NAT is detected (RFC 3948).
        x.leaf("Ikev2", "500");
        x.leaf("Ikev2NatT", "4500");
    }
    if config.sstp.enabled
        && let Some(tcp) = config.listen.tcp.first()
    {
        x.leaf("Sstp", &tcp.port().to_string());
    }
    x.close("Transports");
    x.leaf("ServerName", &server_name);
    x.leaf("ServerCertRootThumbprint", &Thumbprint::of_der(root).to_string());
    let full_tunnel = config.network.full_tunnel.then(|| "0.0.0.0/0".to_string());
    x.list("Routes", "Route", full_tunnel.into_iter().chain(config.network.routes.iter().map(|r| r.to_string())));
    x.list("DnsServers", "DnsServer", config.network.dns_servers.iter().map(|d| d.to_string()));
    x.list("DnsSuffixes", "DnsSuffix", config.network.dns_search.iter().cloned());
    x.leaf("VpnClientAddressPool", &config.network.pool.to_string());
    x.list("AuthenticationTypes", "AuthenticationType", config.auth.require.iter().map(|r| r.to_string()));
    x.list("DataCiphers", "DataCipher", config.openvpn.data_ciphers.iter().map(|c| c.openvpn_name().to_string()));
    x.close("VpnProfile");
    Ok(x.finish())
}

/// An `azurevpnconfig.xml`-style profile for token (Entra ID) sign-in.
fn azure_vpn_xml(config: &Config, root: &CertificateDer<'_>) -> Result<String> {
    let token = &config.token;
    let mut x = Xml::new();
    x.open_with("AzVpnProfile", &[("xmlns", "http://schemas.datacontract.org/2004/07/")]);
    x.open("clientauth");
    x.open("aad");
    x.leaf("audience", token.audiences.first().map_or("", String::as_str));
    x.leaf("cachesigninuser", "true");
    x.leaf("issuer", token.issuers.first().map_or("", String::as_str));
    if let Some(tenant) = &token.tenant {
        x.leaf("tenant", &format!("https://login.microsoftonline.com/{tenant}"));
    }
    x.close("aad");
    x.leaf("type", "aad");
    x.close("clientauth");
    x.leaf("name", &config.gateway_name());
    x.open("protocolconfig");
    x.open("sslprotocolConfig");
    x.leaf("transportprotocol", if config.listen.udp.is_empty() { "tcp" } else { "udp" });
    x.close("sslprotocolConfig");
    x.close("protocolconfig");
    x.open("serverlist");
    x.open("ServerEntry");
    x.leaf("fqdn", &config.gateway_name());
    x.close("ServerEntry");
    x.close("serverlist");
    x.open("servervalidation");
    x.open("cert");
    x.leaf("hash", &Thumbprint::of_der(root).to_string());
    x.close("cert");
    x.leaf("type", "cert");
    x.close("servervalidation");
    x.leaf("version", "1");
    x.close("AzVpnProfile");
    Ok(x.finish())
}

fn server_name(cert_path: &Path) -> Result<String> {
    let leaf = load_certs(cert_path)?.swap_remove(0);
    subject_common_name(&leaf).with_context(|| format!("server certificate {}", cert_path.display()))
}

fn readme(
    config: &Config,
    name: Option<&str>,
    ikev2: Option<&Ikev2Profile>,
    has_apple_profile: bool,
    has_windows_script: bool,
) -> String {
    let holder = match name {
        Some(name) => format!(
            "for {name}. The profiles hold {name}'s certificate and private key when {name} has one: hand this \
             package to {name} only."
        ),
        None => format!(
            "for any user. Where OpenVPN/vpnconfig.ovpn says {} and {}, paste the user's certificate and key (PEM).",
            crate::profile::CERTIFICATE_PLACEHOLDER,
            crate::profile::PRIVATE_KEY_PLACEHOLDER
        ),
    };
    let mut text = format!(
        "VPN client package for {gateway}, {holder}\n\n\
         Generic/VpnSettings.xml     the gateway's address, tunnels, routes, DNS and sign-in methods\n\
         Generic/VpnServerRoot.cer   the root CA of the gateway's certificate (thumbprint in VpnSettings.xml)\n\
         OpenVPN/vpnconfig.ovpn      for OpenVPN 2.6 and OpenVPN Connect: openvpn --config vpnconfig.ovpn\n",
        gateway = config.gateway_name()
    );
    if config.auth.uses(|r| r.token) {
        text.push_str(
            "AzureVPN/azurevpnconfig.xml identity-provider sign-in settings (issuer, audience, tenant) in the\n\
             \x20                           Azure VPN Client's profile layout\n",
        );
    }
    if let Some(profile) = ikev2 {
        text.push_str(
            "strongSwan/swanctl.conf     IKEv2 for strongSwan 5.9+: copy it to /etc/swanctl/conf.d/p2sgw.conf and\n\
             \x20                           the directories beside it into /etc/swanctl; swanctl --load-all, then\n\
             \x20                           swanctl --initiate --child p2sgw\n",
        );
        match profile.sign_in {
            SignIn::Certificate(None) => text.push_str(
                "                            put the user's certificate in strongSwan/x509/client.crt and key in\n\
                 \x20                           strongSwan/private/client.key (PEM)\n",
            ),
            SignIn::Password => text.push_str(
                "                            the password goes in its secrets section (commented out at its end)\n",
            ),
            SignIn::Certificate(Some(_)) => {}
        }
    }
    if has_apple_profile {
        let _ = writeln!(
            text,
            "Mac/{}\n                            IKEv2 for macOS and iOS: open it, then install it in System Settings >\n\
             \x20                           Profiles (macOS) or Settings > General > VPN & Device Management (iOS)",
            profile_file_name(&config.gateway_name())
        );
    } else if ikev2.is_some() {
        text.push_str(
            "(no Apple profile: with certificate sign-in it must hold the user's certificate; make the package\n\
             \x20for a named user: p2sgw client-package --name USER)\n",
        );
    }
    if has_windows_script {
        text.push_str(
            "WindowsAmd64/p2sgw-vpn.ps1  Windows 10/11: run it in an elevated PowerShell; it trusts the root CA\n\
             \x20                           and adds the IKEv2 and/or SSTP connections\n",
        );
    }
    text.push_str("\nRegenerate this package whenever the gateway's tunnels, routes, DNS or sign-in methods change.\n");
    text
}

/// A small XML writer: elements and text, indented, over quick-xml.
struct Xml {
    writer: Writer<Vec<u8>>,
}

impl Xml {
    fn new() -> Self {
        let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
        writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None))).expect("writing to memory");
        Xml { writer }
    }

    fn open(&mut self, name: &str) {
        self.open_with(name, &[]);
    }

    fn open_with(&mut self, name: &str, attributes: &[(&str, &str)]) {
        let mut start = BytesStart::new(name);
        for attribute in attributes {
            start.push_attribute(*attribute);
        }
        self.writer.write_event(Event::Start(start)).expect("writing to memory");
    }

    fn close(&mut self, name: &str) {
        self.writer.write_event(Event::End(BytesEnd::new(name))).expect("writing to memory");
    }

    fn leaf(&mut self, name: &str, text: &str) {
        self.open(name);
        self.writer.write_event(Event::Text(BytesText::new(text))).expect("writing to memory");
        self.close(name);
    }

    /// `<outer><item>v1</item><item>v2</item>…</outer>`.
    fn list(&mut self, outer: &str, item: &str, values: impl Iterator<Item = String>) {
        self.open(outer);
        for value in values {
            self.leaf(item, &value);
        }
        self.close(outer);
    }

    fn finish(self) -> String {
        let mut text = String::from_utf8(self.writer.into_inner()).expect("quick-xml writes UTF-8");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::pki::test_support::{TempDir, config_for};
    use crate::pki::{KeyAlgorithm, Pki};

    fn setup(label: &str) -> (TempDir, Config) {
        let tmp = TempDir::new(label);
        Pki::init(tmp.path(), crate::pki::test_support::GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
        Pki::open(tmp.path()).unwrap().issue("alice", 30).unwrap();
        let mut config = config_for(tmp.path());
        config.gateway.state_dir = tmp.path().to_path_buf();
        config.network.routes = vec!["10.1.0.0/16".parse().unwrap()];
        config.network.dns_servers = vec!["10.1.0.4".parse().unwrap()];
        config.network.dns_search = vec!["corp.example".into()];
        (tmp, config)
    }

    fn files(zip_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = zip::ZipArchive::new(Cursor::new(zip_bytes)).unwrap();
        (0..archive.len())
            .map(|i| {
                let mut file = archive.by_index(i).unwrap();
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes).unwrap();
                (file.name().to_string(), bytes)
            })
            .collect()
    }

    fn text_of<'a>(files: &'a [(String, Vec<u8>)], name: &str) -> &'a str {
        let (_, bytes) = files.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}"));
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_named_package_carries_the_users_credentials_and_the_settings() {
        let (_tmp, config) = setup("package-named");
        let files = files(&client_package(&config, Some("alice")).unwrap());
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["README.txt", "Generic/VpnSettings.xml", "Generic/VpnServerRoot.cer", "OpenVPN/vpnconfig.ovpn"]
        );
        let ovpn = text_of(&files, "OpenVPN/vpnconfig.ovpn");
        assert!(ovpn.contains("<cert>\n-----BEGIN CERTIFICATE-----") && ovpn.contains("<key>\n-----BEGIN"), "{ovpn}");
        let settings = text_of(&files, "Generic/VpnSettings.xml");
        let root = &files.iter().find(|(n, _)| n == "Generic/VpnServerRoot.cer").unwrap().1;
        for expected in [
            "<Route>10.1.0.0/16</Route>".to_string(),
            "<DnsServer>10.1.0.4</DnsServer>".to_string(),
            "<DnsSuffix>corp.example</DnsSuffix>".to_string(),
            format!("<ServerCertRootThumbprint>{}</ServerCertRootThumbprint>", Thumbprint::of_der(root)),
            "<Udp>1194</Udp>".to_string(),
            "<Tcp>443</Tcp>".to_string(),
        ] {
            assert!(settings.contains(&expected), "{expected} in\n{settings}");
        }
        // The .cer is the root itself (DER), the one the PKI made.
        assert_eq!(root.as_slice(), load_certs(&config.pki_dir().join("ca.crt")).unwrap()[0].as_ref());
    }

    #[test]
    fn an_anonymous_package_has_placeholders_and_tokens_add_the_identity_provider_profile() {
        let (_tmp, mut config) = setup("package-template");
        config.auth.require = vec!["certificate".parse().unwrap(), "token".parse().unwrap()];
        config.token.issuers = vec!["https://sts.windows.net/tenant-1/".into()];
        config.token.audiences = vec!["api://vpn".into()];
        config.token.tenant = Some("tenant-1".into());
        let files = files(&client_package(&config, None).unwrap());
        let ovpn = text_of(&files, "OpenVPN/vpnconfig.ovpn");
        assert!(ovpn.contains("<cert>\n$CLIENTCERTIFICATE\n</cert>") && ovpn.contains("<key>\n$PRIVATEKEY\n</key>"));
        let azure = text_of(&files, "AzureVPN/azurevpnconfig.xml");
        assert!(
            azure.contains("<audience>api://vpn</audience>")
                && azure.contains("<issuer>https://sts.windows.net/tenant-1/</issuer>")
        );
        assert!(text_of(&files, "Generic/VpnSettings.xml").contains("<AuthenticationType>token</AuthenticationType>"));
    }

    fn names(files: &[(String, Vec<u8>)]) -> Vec<&str> {
        files.iter().map(|(n, _)| n.as_str()).collect()
    }

    const BASE: [&str; 4] =
        ["README.txt", "Generic/VpnSettings.xml", "Generic/VpnServerRoot.cer", "OpenVPN/vpnconfig.ovpn"];

    #[test]
    fn ikev2_adds_strongswan_apple_and_windows_profiles() {
        let (_tmp, mut config) = setup("package-ikev2");
        config.ikev2.enabled = true;
        let named = files(&client_package(&config, Some("alice")).unwrap());
        let mut expected = BASE.to_vec();
        let mac = format!("Mac/{}", profile_file_name(&config.gateway_name()));
        expected.extend([
            "strongSwan/swanctl.conf",
            "strongSwan/x509ca/VpnServerRoot.pem",
            "strongSwan/x509/client.crt",
            "strongSwan/private/client.key",
            &mac,
            "WindowsAmd64/p2sgw-vpn.ps1",
        ]);
        assert_eq!(names(&named), expected);
        let settings = text_of(&named, "Generic/VpnSettings.xml");
        for expected in ["<VpnType>OpenVPN, IkeV2</VpnType>", "<Ikev2>500</Ikev2>", "<Ikev2NatT>4500</Ikev2NatT>"] {
            assert!(settings.contains(expected), "{expected} in\n{settings}");
        }
        let readme = text_of(&named, "README.txt");
        assert!(readme.contains("strongSwan/swanctl.conf") && readme.contains(&mac), "{readme}");

        // For any user with certificate sign-in: no Apple profile, no client files.
        let template = files(&client_package(&config, None).unwrap());
        let mut expected = BASE.to_vec();
        expected.extend([
            "strongSwan/swanctl.conf",
            "strongSwan/x509ca/VpnServerRoot.pem",
            "WindowsAmd64/p2sgw-vpn.ps1",
        ]);
        assert_eq!(names(&template), expected);
        assert!(text_of(&template, "README.txt").contains("no Apple profile"));
    }

    #[test]
    fn password_sign_in_with_ikev2_and_sstp() {
        let (_tmp, mut config) = setup("package-ikev2-sstp");
        config.auth.require = vec!["radius".parse().unwrap()];
        config.ikev2.enabled = true;
        config.sstp.enabled = true;
        let package = files(&client_package(&config, None).unwrap());
        let mut expected = BASE.to_vec();
        let mac = format!("Mac/{}", profile_file_name(&config.gateway_name()));
        expected.extend([
            "strongSwan/swanctl.conf",
            "strongSwan/x509ca/VpnServerRoot.pem",
            &mac,
            "WindowsAmd64/p2sgw-vpn.ps1",
        ]);
        assert_eq!(names(&package), expected);
        let settings = text_of(&package, "Generic/VpnSettings.xml");
        assert!(settings.contains("<VpnType>OpenVPN, IkeV2, Sstp</VpnType>") && settings.contains("<Sstp>443</Sstp>"));
        let script = text_of(&package, "WindowsAmd64/p2sgw-vpn.ps1");
        assert!(script.contains("-TunnelType Ikev2 -AuthenticationMethod Eap") && script.contains("-TunnelType Sstp"));
    }

    #[test]
    fn sstp_alone_adds_only_the_windows_script() {
        let (_tmp, mut config) = setup("package-sstp");
        config.auth.require = vec!["radius".parse().unwrap()];
        config.sstp.enabled = true;
        let package = files(&client_package(&config, Some("bob")).unwrap());
        let mut expected = BASE.to_vec();
        expected.push("WindowsAmd64/p2sgw-vpn.ps1");
        assert_eq!(names(&package), expected);
        assert!(!text_of(&package, "WindowsAmd64/p2sgw-vpn.ps1").contains("Ikev2"));
        assert!(text_of(&package, "Generic/VpnSettings.xml").contains("<VpnType>OpenVPN, Sstp</VpnType>"));
    }

    #[test]
    fn enabling_ikev2_makes_recorded_packages_stale() {
        let (_tmp, mut config) = setup("package-stamp-ikev2");
        record_package_settings(&config).unwrap();
        config.ikev2.enabled = true;
        assert!(stale_package_warning(&config).is_some());
        record_package_settings(&config).unwrap();
        config.ikev2.dpd_secs = 120;
        assert!(stale_package_warning(&config).is_some(), "the profiles' DPD period changed");
    }

    #[test]
    fn a_settings_change_makes_recorded_packages_stale() {
        let (_tmp, mut config) = setup("package-stamp");
        assert_eq!(stale_package_warning(&config), None, "no package made yet");
        record_package_settings(&config).unwrap();
        assert_eq!(stale_package_warning(&config), None);
        config.network.routes.push("10.2.0.0/16".parse().unwrap());
        assert!(stale_package_warning(&config).unwrap().contains("regenerate"));
    }
}
