//! PUSH_REPLY: the options a server pushes to a pulled client (PROTOCOLS.md §1.8).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;

use crate::crypto::AeadAlgorithm;

/// Longest PUSH_REPLY message; longer replies are split with `push-continuation`.
const PUSH_BUNDLE_SIZE: usize = 1024;

/// The network part of what a client is told: decided by the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    /// The gateway's own tunnel address (`route-gateway`, topology subnet).
    pub route_gateway: Ipv4Addr,
    pub routes: Vec<Ipv4Net>,
    pub redirect_gateway: bool,
    pub dns_servers: Vec<IpAddr>,
    pub dns_search: Vec<String>,
    pub ping_secs: u32,
    pub ping_restart_secs: u32,
    pub tun_mtu: u16,
}

/// How the client derives data-channel keys, as announced in the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDerivation {
    /// TLS keying-material exporter, announced with `protocol-flags` (the client
    /// understands cc-exit) or `key-derivation tls-ekm`.
    Ekm { protocol_flags: bool },
    /// The legacy OpenVPN PRF: nothing is pushed.
    Prf,
}

/// What the session adds from its negotiation with this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub cipher: AeadAlgorithm,
    pub peer_id: Option<u32>,
    pub key_derivation: KeyDerivation,
    /// Push `tun-mtu` (only to clients that sent IV_MTU).
    pub push_mtu: bool,
}

/// The options, in the order an OpenVPN 2.6 server sends them.
pub fn push_options(cfg: &PushConfig, neg: &Negotiated) -> Vec<String> {
    let mut o = Vec::new();
    o.push(format!("route-gateway {}", cfg.route_gateway));
    o.push("topology subnet".to_string());
    o.push(format!("ping {}", cfg.ping_secs));
    o.push(format!("ping-restart {}", cfg.ping_restart_secs));
    for dns in &cfg.dns_servers {
        match dns {
            IpAddr::V4(a) => o.push(format!("dhcp-option DNS {a}")),
            IpAddr::V6(a) => o.push(format!("dhcp-option DNS6 {a}")),
        }
    }
    if let Some(first) = cfg.dns_search.first() {
        o.push(format!("dhcp-option DOMAIN {first}"));
    }
    for domain in &cfg.dns_search {
        o.push(format!("dhcp-option DOMAIN-SEARCH {domain}"));
    }
    if cfg.redirect_gateway {
        // def1: 0.0.0.0/1 + 128.0.0.0/1, plus a host route to the gateway outside the tunnel.
        o.push("redirect-gateway def1".to_string());
    }
    for r in &cfg.routes {
        o.push(format!("route {} {}", r.network(), r.netmask()));
    }
    o.push(format!("ifconfig {} {}", cfg.address, cfg.netmask));
    if let Some(id) = neg.peer_id {
        o.push(format!("peer-id {id}"));
    }
    o.push(format!("cipher {}", neg.cipher.openvpn_name()));
    match neg.key_derivation {
        KeyDerivation::Ekm { protocol_flags: true } => o.push("protocol-flags cc-exit tls-ekm".to_string()),
        KeyDerivation::Ekm { protocol_flags: false } => o.push("key-derivation tls-ekm".to_string()),
        KeyDerivation::Prf => {}
    }
    if neg.push_mtu {
        o.push(format!("tun-mtu {}", cfg.tun_mtu));
    }
    o
}

/// Packs options into one or more PUSH_REPLY messages (without the trailing NUL).
pub fn push_reply_messages(options: &[String]) -> Vec<String> {
    const HEAD: &str = "PUSH_REPLY";
    const CONT: &str = ",push-continuation 2";
    let total: usize = HEAD.len() + options.iter().map(|o| o.len() + 1).sum::<usize>();
    if total < PUSH_BUNDLE_SIZE {
        let mut m = HEAD.to_string();
        for opt in options {
            let _ = write!(m, ",{opt}");
        }
        return vec![m];
    }
    let mut out = Vec::new();
    let mut cur = HEAD.to_string();
    for opt in options {
        if cur.len() + 1 + opt.len() + CONT.len() >= PUSH_BUNDLE_SIZE && cur.len() > HEAD.len() {
            cur.push_str(CONT);
            out.push(std::mem::replace(&mut cur, HEAD.to_string()));
        }
        let _ = write!(cur, ",{opt}");
    }
    cur.push_str(",push-continuation 1");
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PushConfig {
        PushConfig {
            address: Ipv4Addr::new(172, 16, 201, 2),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            route_gateway: Ipv4Addr::new(172, 16, 201, 1),
            routes: vec!["10.50.0.0/16".parse().unwrap()],
            redirect_gateway: false,
            dns_servers: vec!["10.50.0.10".parse().unwrap(), "10.50.0.11".parse().unwrap()],
            dns_search: vec!["corp.example".into()],
            ping_secs: 10,
            ping_restart_secs: 60,
            tun_mtu: 1500,
        }
    }

    #[test]
    fn typical_reply() {
        let neg = Negotiated {
            cipher: AeadAlgorithm::Aes256Gcm,
            peer_id: Some(3),
            key_derivation: KeyDerivation::Ekm { protocol_flags: true },
            push_mtu: true,
        };
        let msgs = push_reply_messages(&push_options(&cfg(), &neg));
        assert_eq!(
            msgs,
            vec![
                "PUSH_REPLY,route-gateway 172.16.201.1,topology subnet,ping 10,ping-restart 60,\
                  dhcp-option DNS 10.50.0.10,dhcp-option DNS 10.50.0.11,dhcp-option DOMAIN corp.example,\
                  dhcp-option DOMAIN-SEARCH corp.example,route 10.50.0.0 255.255.0.0,\
                  ifconfig 172.16.201.2 255.255.255.0,peer-id 3,cipher AES-256-GCM,\
                  protocol-flags cc-exit tls-ekm,tun-mtu 1500"
                    .to_string()
            ]
        );
    }

    #[test]
    fn legacy_client_gets_no_peer_id_and_no_ekm() {
        let neg = Negotiated {
            cipher: AeadAlgorithm::Aes128Gcm,
            peer_id: None,
            key_derivation: KeyDerivation::Prf,
            push_mtu: false,
        };
        let opts = push_options(&cfg(), &neg);
        assert!(!opts.iter().any(|o| o.starts_with("peer-id") || o.contains("ekm") || o.starts_with("tun-mtu")));
    }

    #[test]
    fn long_replies_are_split_with_continuations() {
        let mut c = cfg();
        c.routes = (0..200).map(|i| Ipv4Net::new(Ipv4Addr::new(10, i as u8, 0, 0), 16).unwrap()).collect();
        let neg = Negotiated {
            cipher: AeadAlgorithm::Aes256Gcm,
            peer_id: Some(0),
            key_derivation: KeyDerivation::Prf,
            push_mtu: false,
        };
        let opts = push_options(&c, &neg);
        let msgs = push_reply_messages(&opts);
        assert!(msgs.len() > 1);
        for (i, m) in msgs.iter().enumerate() {
            assert!(m.len() < PUSH_BUNDLE_SIZE, "message {i} is {} bytes", m.len());
            assert!(m.starts_with("PUSH_REPLY,"));
            let last = i == msgs.len() - 1;
            assert!(m.ends_with(if last { ",push-continuation 1" } else { ",push-continuation 2" }));
        }
        let rejoined: Vec<&str> = msgs
            .iter()
            .flat_map(|m| m.trim_start_matches("PUSH_REPLY,").split(','))
            .filter(|o| !o.starts_with("push-continuation"))
            .collect();
        assert_eq!(rejoined, opts.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
