//! PPP (RFC 1661) as SSTP carries it, sans-IO: frames in, frames out, events for the
//! driver. [`packet`] is the codec shared by both sides, [`server`] the gateway's side
//! (LCP, MS-CHAPv2 or EAP pass-through authentication, IPCP, IPv4 packets), [`client`]
//! a userspace peer for tests and load generation. PROTOCOLS.md §2.6–2.11.
//!
//! There is no restart timer or retransmission: SSTP runs over TCP, so nothing is lost,
//! and the SSTP layer bounds how long negotiation may take.

pub mod client;
pub mod packet;
pub mod server;

pub use server::{
    AuthMethod, AuthVerdict, CloseReason, DropReason, EapResult, Event, MsChapV2Verify, NetworkConfig, PppServer,
    ServerConfig, SessionKeys,
};

/// A readable name for a protocol number, for logs and errors.
pub fn protocol_name(protocol: u16) -> &'static str {
    use packet::protocol::*;
    match protocol {
        IPV4 => "IPv4",
        IPV6 => "IPv6",
        IPCP => "IPCP",
        IPV6CP => "IPv6CP",
        CCP => "CCP",
        LCP => "LCP",
        PAP => "PAP",
        CHAP => "CHAP",
        EAP => "EAP",
        _ => "an unsupported protocol",
    }
}
