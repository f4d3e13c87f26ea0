//! What the load generator needs from an OpenVPN client profile (`.ovpn` with inline
//! `<ca>`, `<cert>`, `<key>`, `<tls-crypt>`, as `p2sgw profile` writes it), and the TLS
//! settings built from it.

use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::crypto::AeadAlgorithm;
use crate::pki::subject_common_name;
use crate::proto::openvpn::static_key::StaticKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

/// The parts of a client profile that matter for speaking the protocol.
#[derive(Debug)]
pub struct Profile {
    /// Every `remote` in file order (top level and `<connection>` blocks).
    pub remotes: Vec<Remote>,
    pub ca_pem: String,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    pub tls_crypt: Option<StaticKey>,
    /// Supported `data-ciphers` in the profile's order (others are skipped).
    pub data_ciphers: Vec<AeadAlgorithm>,
    /// `verify-x509-name NAME ...`: the server certificate's expected common name.
    pub verify_name: Option<String>,
    /// `auth-user-pass`: the server wants a username and password.
    pub asks_password: bool,
}

/// OpenVPN's defaults when a profile names no port or protocol.
const DEFAULT_PORT: u16 = 1194;

impl Profile {
    pub fn parse(text: &str) -> Result<Profile> {
        let mut profile = Profile {
            remotes: Vec::new(),
            ca_pem: String::new(),
            cert_pem: None,
            key_pem: None,
            tls_crypt: None,
            data_ciphers: Vec::new(),
            verify_name: None,
            asks_password: false,
        };
        let mut default_transport = Transport::Udp;
        let mut default_port = DEFAULT_PORT;
        // Remotes whose line named no protocol take the `proto` line's (which may come later).
        let mut remotes: Vec<(String, Option<u16>, Option<Transport>)> = Vec::new();
        let mut lines = text.lines().enumerate();
        while let Some((index, raw)) = lines.next() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(tag) = line.strip_prefix('<').and_then(|l| l.strip_suffix('>')) {
                if tag.starts_with('/') || tag == "connection" {
                    // `<connection>` blocks hold option lines; read them in line.
                    continue;
                }
                let close = format!("</{tag}>");
                let mut body = String::new();
                loop {
                    let Some((_, l)) = lines.next() else { bail!("line {line_no}: <{tag}> has no {close}") };
                    if l.trim() == close {
                        break;
                    }
                    body.push_str(l);
                    body.push('\n');
                }
                match tag {
                    "ca" => profile.ca_pem = body,
                    "cert" => profile.cert_pem = Some(body),
                    "key" => profile.key_pem = Some(body),
                    "tls-crypt" => {
                        profile.tls_crypt =
                            Some(StaticKey::parse(&body).map_err(|e| anyhow!("line {line_no}: <tls-crypt>: {e}"))?)
                    }
                    "tls-auth" | "tls-crypt-v2" => bail!("line {line_no}: <{tag}> is not supported (use tls-crypt)"),
                    _ => {}
                }
                continue;
            }
            let words = split_words(line);
            let arg = |i: usize| words.get(i).map(String::as_str);
            match words[0].as_str() {
                "remote" => {
                    let host = arg(1).ok_or_else(|| anyhow!("line {line_no}: remote without a host"))?;
                    let port = arg(2).map(|p| parse_port(p, line_no)).transpose()?;
                    let transport = arg(3).map(|p| parse_transport(p, line_no)).transpose()?;
                    remotes.push((host.to_string(), port, transport));
                }
                "proto" => {
                    default_transport = parse_transport(arg(1).unwrap_or_default(), line_no)?;
                }
                "port" => default_port = parse_port(arg(1).unwrap_or_default(), line_no)?,
                "verify-x509-name" => profile.verify_name = arg(1).map(str::to_string),
                "auth-user-pass" => profile.asks_password = true,
                "data-ciphers" | "ncp-ciphers" => {
                    profile.data_ciphers =
                        arg(1).unwrap_or_default().split(':').filter_map(|c| c.parse::<AeadAlgorithm>().ok()).collect();
                }
                "ca" | "cert" | "key" | "tls-crypt" => {
                    bail!("line {line_no}: `{}` names a file; the load generator needs it inline", words[0])
                }
                _ => {}
            }
        }
        profile.remotes = remotes
            .into_iter()
            .map(|(host, port, transport)| Remote {
                host,
                port: port.unwrap_or(default_port),
                transport: transport.unwrap_or(default_transport),
            })
            .collect();
        if profile.ca_pem.trim().is_empty() {
            bail!("the profile has no inline <ca>");
        }
        if profile.data_ciphers.is_empty() {
            // OpenVPN 2.6's default data-ciphers.
            profile.data_ciphers = vec![AeadAlgorithm::Aes256Gcm, AeadAlgorithm::Aes128Gcm];
        }
        Ok(profile)
    }

    /// The remote to use: the first UDP one (the load generator speaks UDP only).
    pub fn udp_remote(&self) -> Result<&Remote> {
        self.remotes.iter().find(|r| r.transport == Transport::Udp).ok_or_else(|| match self.remotes.first() {
            Some(_) => anyhow!("the profile offers only TCP; the load generator supports UDP only (use --remote IP:PORT for a UDP port)"),
            None => anyhow!("the profile has no `remote` line (give --remote IP:PORT)"),
        })
    }

    /// The `IV_CIPHERS` value announcing our data ciphers.
    pub fn iv_ciphers(&self) -> String {
        self.data_ciphers.iter().map(|c| c.openvpn_name()).collect::<Vec<_>>().join(":")
    }

    /// TLS client settings: the profile's CA, its client certificate (if any), and a
    /// server check like OpenVPN's (chain and server EKU; the name via `verify-x509-name`).
    pub fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.context("<ca>: bad certificate")?).context("<ca>: unusable certificate")?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("<ca>: cannot build a verifier")?;
        let verifier = Arc::new(OpenVpnServerVerifier { webpki, expected_name: self.verify_name.clone() });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert_pem, &self.key_pem) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .context("<cert>: bad certificate")?;
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).context("<key>: bad private key")?;
                builder.with_client_auth_cert(chain, key).context("<cert>/<key>")?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => bail!("the profile has only one of <cert> and <key>"),
        };
        Ok(Arc::new(config))
    }

    /// The name the TLS layer is asked to check; mismatches are settled by [`OpenVpnServerVerifier`].
    pub fn server_name(&self, remote: &Remote) -> ServerName<'static> {
        let name = self.verify_name.as_deref().unwrap_or(&remote.host);
        ServerName::try_from(name.to_string())
            .unwrap_or_else(|_| ServerName::try_from("openvpn-server.invalid").expect("a valid DNS name"))
    }
}

/// OpenVPN clients do not match the server's name against its subjectAltNames as browsers
/// do: `verify-x509-name NAME name` compares the subject CN. So the chain (and server EKU,
/// as `remote-cert-tls server`) is checked by webpki, and a name mismatch is then judged by
/// the CN (without `verify-x509-name` OpenVPN checks no name, and neither does this).
#[derive(Debug)]
struct OpenVpnServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    expected_name: Option<String>,
}

impl ServerCertVerifier for OpenVpnServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) => match &self.expected_name {
                None => Ok(ServerCertVerified::assertion()),
                Some(expected) => match subject_common_name(end_entity) {
                    Ok(cn) if &cn == expected => Ok(ServerCertVerified::assertion()),
                    _ => Err(rustls::Error::General(format!(
                        "server certificate name does not match verify-x509-name {expected:?}"
                    ))),
                },
            },
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn parse_port(word: &str, line_no: usize) -> Result<u16> {
    word.parse().map_err(|_| anyhow!("line {line_no}: {word:?} is not a port"))
}

fn parse_transport(word: &str, line_no: usize) -> Result<Transport> {
    match word {
        "udp" | "udp4" | "udp6" => Ok(Transport::Udp),
        "tcp" | "tcp-client" | "tcp4" | "tcp4-client" | "tcp6" | "tcp6-client" => Ok(Transport::Tcp),
        _ => bail!("line {line_no}: unknown protocol {word:?}"),
    }
}

/// Splits an option line into words as OpenVPN does: whitespace separates, double quotes
/// group, a backslash escapes the next character; `#` or `;` after a space starts a comment.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut in_word, mut quoted) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                word.extend(chars.next());
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' | ';' if !quoted && !in_word => break,
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN OpenVPN Static key V1-----\n\
        000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n\
        202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\n\
        404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f\n\
        606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f\n\
        808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f\n\
        a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\n\
        c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf\n\
        e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff\n\
        -----END OpenVPN Static key V1-----\n";

    fn both_transports_profile() -> String {
        // The shape `p2sgw profile --transport both` writes (see src/profile.rs tests).
        format!(
            "# OpenVPN client profile\nclient\ndev tun\nnobind\nremote-cert-tls server\n\
             verify-x509-name \"vpn gw\" name\ndata-ciphers CHACHA20-POLY1305:AES-256-CBC:AES-128-GCM\n\
             server-poll-timeout 10\n\n<ca>\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n</ca>\n\
             <cert>\nC\n</cert>\n<key>\nK\n</key>\n<tls-crypt>\n{KEY}</tls-crypt>\n\n# Tried in this order.\n\
             <connection>\nremote gw.example 443 tcp-client\n</connection>\n\
             <connection>\nremote gw.example 1194 udp\nexplicit-exit-notify 1\n</connection>\n"
        )
    }

    #[test]
    fn reads_remotes_material_and_ciphers() {
        let p = Profile::parse(&both_transports_profile()).unwrap();
        assert_eq!(
            p.remotes,
            vec![
                Remote { host: "gw.example".into(), port: 443, transport: Transport::Tcp },
                Remote { host: "gw.example".into(), port: 1194, transport: Transport::Udp },
            ]
        );
        assert_eq!(p.udp_remote().unwrap().port, 1194);
        assert_eq!(p.verify_name.as_deref(), Some("vpn gw"));
        assert_eq!(p.data_ciphers, vec![AeadAlgorithm::ChaCha20Poly1305, AeadAlgorithm::Aes128Gcm]);
        assert_eq!(p.iv_ciphers(), "CHACHA20-POLY1305:AES-128-GCM");
        assert_eq!(p.cert_pem.as_deref(), Some("C\n"));
        assert_eq!(p.key_pem.as_deref(), Some("K\n"));
        assert!(p.ca_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(p.tls_crypt.unwrap().as_bytes()[255], 0xff);
        assert!(!p.asks_password);
    }

    #[test]
    fn plain_remote_lines_take_proto_and_port_defaults() {
        let text = "proto tcp-client\nremote 192.0.2.1\nremote 192.0.2.2 1195 udp\nauth-user-pass\n\
                    <ca>\nX\n</ca>\n";
        let p = Profile::parse(text).unwrap();
        assert_eq!(p.remotes[0], Remote { host: "192.0.2.1".into(), port: 1194, transport: Transport::Tcp });
        assert_eq!(p.udp_remote().unwrap().host, "192.0.2.2");
        assert!(p.asks_password);
        assert_eq!(p.data_ciphers, vec![AeadAlgorithm::Aes256Gcm, AeadAlgorithm::Aes128Gcm], "2.6 defaults");
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let err = |t: &str| Profile::parse(t).unwrap_err().to_string();
        assert!(err("remote a 1\n").contains("no inline <ca>"));
        assert!(err("<ca>\nX\n").contains("has no </ca>"));
        assert!(err("ca /etc/ca.crt\n").contains("inline"));
        assert!(err("<ca>\nX\n</ca>\n<tls-auth>\nX\n</tls-auth>\n").contains("not supported"));
        assert!(err("remote a port\n").contains("not a port"));
        let tcp_only = Profile::parse("remote a 443 tcp\n<ca>\nX\n</ca>\n").unwrap();
        assert!(tcp_only.udp_remote().unwrap_err().to_string().contains("only TCP"));
    }

    #[test]
    fn words_split_like_openvpn() {
        assert_eq!(split_words(r#"verify-x509-name "a b\"c" name # note"#), ["verify-x509-name", "a b\"c", "name"]);
        assert_eq!(split_words("remote  h\t1194 ; x"), ["remote", "h", "1194"]);
        assert_eq!(split_words(r"a b\ c"), ["a", "b c"]);
    }
}
