//! The key-method-2 messages exchanged inside TLS once the handshake is done
//! (PROTOCOLS.md §1.6), peer-info, and cipher negotiation (§1.7).

use crate::crypto::AeadAlgorithm;

/// Longest options string accepted (OpenVPN sends at most 512 bytes).
const MAX_OPTIONS: usize = 2048;
/// Longest username or password accepted: access tokens used as passwords are long.
const MAX_CREDENTIAL: usize = 8192;
const MAX_PEER_INFO: usize = 8192;

/// IV_PROTO bits a client announces in its peer-info.
pub mod iv_proto {
    pub const DATA_V2: u32 = 1 << 1;
    pub const REQUEST_PUSH: u32 = 1 << 2;
    pub const TLS_KEY_EXPORT: u32 = 1 << 3;
    pub const AUTH_PENDING_KW: u32 = 1 << 4;
    pub const DNS_OPTION: u32 = 1 << 6;
    pub const CC_EXIT_NOTIFY: u32 = 1 << 7;
    pub const AUTH_FAIL_TEMP: u32 = 1 << 8;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyMethodError {
    /// More bytes are needed: the message continues in a later TLS record.
    #[error("incomplete key-method message")]
    Incomplete,
    #[error("unsupported key method {0}")]
    UnsupportedMethod(u8),
    #[error("{field} is {len} bytes long; at most {max} are accepted")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
}

/// What a client sends: key material, options, credentials and peer-info.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKeyMethod2 {
    pub pre_master: [u8; 48],
    pub random1: [u8; 32],
    pub random2: [u8; 32],
    pub options: String,
    pub username: String,
    pub password: String,
    pub peer_info: String,
}

impl std::fmt::Debug for ClientKeyMethod2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeyMethod2")
            .field("options", &self.options)
            .field("username", &self.username)
            .field("peer_info", &self.peer_info)
            .finish_non_exhaustive()
    }
}

/// What a server sends back: its key material and options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKeyMethod2 {
    pub random1: [u8; 32],
    pub random2: [u8; 32],
    pub options: String,
}

impl ClientKeyMethod2 {
    /// Parses a client message from the start of `buf`; returns it and the bytes used.
    pub fn parse(buf: &[u8]) -> Result<(Self, usize), KeyMethodError> {
        let mut r = Reader { buf, pos: 0 };
        r.header()?;
        let pre_master = r.array::<48>()?;
        let random1 = r.array::<32>()?;
        let random2 = r.array::<32>()?;
        let options = r.string("options", MAX_OPTIONS)?;
        let username = r.string("username", MAX_CREDENTIAL)?;
        let password = r.string("password", MAX_CREDENTIAL)?;
        // Every 2.x client sends peer-info, if only as an empty string; requiring it
        // tells a complete message from one cut short.
        let peer_info = r.string("peer-info", MAX_PEER_INFO)?;
        Ok((ClientKeyMethod2 { pre_master, random1, random2, options, username, password, peer_info }, r.pos))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.peer_info.len());
        out.extend_from_slice(&[0, 0, 0, 0, 2]);
        out.extend_from_slice(&self.pre_master);
        out.extend_from_slice(&self.random1);
        out.extend_from_slice(&self.random2);
        for s in [&self.options, &self.username, &self.password, &self.peer_info] {
            write_string(&mut out, s);
        }
        out
    }
}

impl ServerKeyMethod2 {
    pub fn parse(buf: &[u8]) -> Result<(Self, usize), KeyMethodError> {
        let mut r = Reader { buf, pos: 0 };
        r.header()?;
        let random1 = r.array::<32>()?;
        let random2 = r.array::<32>()?;
        let options = r.string("options", MAX_OPTIONS)?;
        // Username, password and peer-info: empty from a server, but read them all.
        for field in ["username", "password", "peer-info"] {
            if r.pos < buf.len() {
                r.string(field, MAX_PEER_INFO)?;
            }
        }
        Ok((ServerKeyMethod2 { random1, random2, options }, r.pos))
    }

    /// Encodes with empty username, password and peer-info, as an OpenVPN server does.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.options.len());
        out.extend_from_slice(&[0, 0, 0, 0, 2]);
        out.extend_from_slice(&self.random1);
        out.extend_from_slice(&self.random2);
        write_string(&mut out, &self.options);
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        out
    }
}

/// Strings are `u16 length-including-NUL || bytes || NUL`; an empty one is `u16 0`.
fn write_string(out: &mut Vec<u8>, s: &str) {
    if s.is_empty() {
        out.extend_from_slice(&[0, 0]);
    } else {
        out.extend_from_slice(&((s.len() + 1) as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], KeyMethodError> {
        let s = self.buf.get(self.pos..self.pos + n).ok_or(KeyMethodError::Incomplete)?;
        self.pos += n;
        Ok(s)
    }

    fn header(&mut self) -> Result<(), KeyMethodError> {
        self.take(4)?;
        let method = self.take(1)?[0];
        if method & 0x0f != 2 {
            return Err(KeyMethodError::UnsupportedMethod(method));
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], KeyMethodError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn string(&mut self, field: &'static str, max: usize) -> Result<String, KeyMethodError> {
        let len = u16::from_be_bytes([self.take(1)?[0], self.take(1)?[0]]) as usize;
        if len > max {
            return Err(KeyMethodError::TooLong { field, len, max });
        }
        let raw = self.take(len)?;
        // OpenVPN forces termination at the last byte; stop at the first NUL.
        let text = raw.split(|&b| b == 0).next().unwrap_or_default();
        String::from_utf8(text.to_vec()).map_err(|_| KeyMethodError::NotUtf8(field))
    }
}

/// The client's peer-info lines (`IV_...=...`), parsed for what the server acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub version: Option<String>,
    pub platform: Option<String>,
    pub gui_version: Option<String>,
    pub iv_proto: u32,
    pub ncp: u32,
    pub ciphers: Vec<String>,
    pub mtu: Option<u16>,
    pub tcp_non_linear: bool,
}

impl PeerInfo {
    pub fn parse(text: &str) -> PeerInfo {
        let mut p = PeerInfo::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else { continue };
            match k {
                "IV_VER" => p.version = Some(v.to_string()),
                "IV_PLAT" => p.platform = Some(v.to_string()),
                "IV_GUI_VER" => p.gui_version = Some(v.to_string()),
                "IV_PROTO" => p.iv_proto = v.parse().unwrap_or(0),
                "IV_NCP" => p.ncp = v.parse().unwrap_or(0),
                "IV_CIPHERS" => p.ciphers = v.split(':').filter(|c| !c.is_empty()).map(str::to_string).collect(),
                "IV_MTU" => p.mtu = v.parse().ok(),
                "IV_TCPNL" => p.tcp_non_linear = v == "1",
                _ => {}
            }
        }
        p
    }

    pub fn has(&self, bit: u32) -> bool {
        self.iv_proto & bit != 0
    }
}

/// The first of the server's ciphers the client also supports. A client without
/// IV_CIPHERS but with IV_NCP=2 supports the two AES-GCM ciphers.
pub fn negotiate_cipher(server: &[AeadAlgorithm], peer: &PeerInfo) -> Option<AeadAlgorithm> {
    server.iter().copied().find(|alg| {
        if peer.ciphers.is_empty() {
            peer.ncp >= 2 && matches!(alg, AeadAlgorithm::Aes256Gcm | AeadAlgorithm::Aes128Gcm)
        } else {
            peer.ciphers.iter().any(|c| c.eq_ignore_ascii_case(alg.openvpn_name()))
        }
    })
}

/// The server's options string: the client's, seen from the other side, so that a
/// client comparing the two finds nothing to warn about.
pub fn server_options_string(client_options: &str, cipher: AeadAlgorithm) -> String {
    client_options
        .split(',')
        .map(|opt| match opt {
            "tls-client" => "tls-server".to_string(),
            o if o.starts_with("proto ") => o.replace("_CLIENT", "_SERVER"),
            o if o.starts_with("cipher ") => format!("cipher {}", cipher.openvpn_name()),
            o => o.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_client() -> ClientKeyMethod2 {
        ClientKeyMethod2 {
            pre_master: [1; 48],
            random1: [2; 32],
            random2: [3; 32],
            options: "V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client".into(),
            username: String::new(),
            password: String::new(),
            peer_info: "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\nIV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n".into(),
        }
    }

    #[test]
    fn client_message_round_trip_and_layout() {
        let m = sample_client();
        let bytes = m.encode();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 2]);
        // Empty username and password are two bare zero lengths right after the options.
        let opts_end = 5 + 112 + 2 + m.options.len() + 1;
        assert_eq!(&bytes[opts_end..opts_end + 4], &[0, 0, 0, 0]);
        let (parsed, used) = ClientKeyMethod2::parse(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(parsed, m);
        for cut in 0..bytes.len() - 1 {
            assert_eq!(ClientKeyMethod2::parse(&bytes[..cut]).unwrap_err(), KeyMethodError::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn server_message_round_trip() {
        let m = ServerKeyMethod2 { random1: [7; 32], random2: [8; 32], options: "V4,tls-server".into() };
        let bytes = m.encode();
        assert_eq!(&bytes[bytes.len() - 6..], &[0; 6]);
        let (parsed, used) = ServerKeyMethod2::parse(&bytes).unwrap();
        assert_eq!((parsed, used), (m, bytes.len()));
    }

    #[test]
    fn refuses_bad_messages() {
        let mut b = sample_client().encode();
        b[4] = 1;
        assert_eq!(ClientKeyMethod2::parse(&b).unwrap_err(), KeyMethodError::UnsupportedMethod(1));
        let mut long = vec![0, 0, 0, 0, 2];
        long.extend_from_slice(&[0; 112]);
        long.extend_from_slice(&[0xff, 0xff]);
        assert!(matches!(ClientKeyMethod2::parse(&long), Err(KeyMethodError::TooLong { field: "options", .. })));
    }

    #[test]
    fn peer_info_and_negotiation() {
        let p = PeerInfo::parse(&sample_client().peer_info);
        assert_eq!(p.iv_proto, 990);
        assert!(p.has(iv_proto::DATA_V2) && p.has(iv_proto::TLS_KEY_EXPORT) && p.has(iv_proto::CC_EXIT_NOTIFY));
        assert_eq!(p.mtu, Some(1600));
        let server = [AeadAlgorithm::ChaCha20Poly1305, AeadAlgorithm::Aes256Gcm];
        assert_eq!(negotiate_cipher(&server, &p), Some(AeadAlgorithm::ChaCha20Poly1305));
        let only_gcm = PeerInfo { ciphers: vec!["AES-128-GCM".into()], ..p.clone() };
        assert_eq!(negotiate_cipher(&server, &only_gcm), None);
        let legacy = PeerInfo { ciphers: vec![], ncp: 2, ..p };
        assert_eq!(negotiate_cipher(&server, &legacy), Some(AeadAlgorithm::Aes256Gcm));
    }

    #[test]
    fn options_mirror() {
        let s = server_options_string(
            "V4,dev-type tun,proto TCPv4_CLIENT,cipher AES-256-GCM,tls-client",
            AeadAlgorithm::ChaCha20Poly1305,
        );
        assert_eq!(s, "V4,dev-type tun,proto TCPv4_SERVER,cipher CHACHA20-POLY1305,tls-server");
    }
}
