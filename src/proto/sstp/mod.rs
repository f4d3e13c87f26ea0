//! SSTP (MS-SSTP), the Windows VPN protocol that carries PPP inside HTTPS on TCP 443,
//! as a sans-IO core working on the bytes inside TLS. [`http`] is the opening request,
//! [`packet`] the SSTP codec, [`binding`] the crypto binding, [`server`] the gateway's
//! connection state machine (with its [`crate::proto::ppp`] link), and [`client`] a
//! userspace client for tests and load generation. PROTOCOLS.md §2.

pub mod binding;
pub mod client;
pub mod http;
pub mod packet;
pub mod server;

#[cfg(test)]
mod tests;

pub use binding::{CertHashes, HashProtocol, Hlak};
pub use server::{CloseReason, DropReason, Event, PacketSink, SendError, SstpServer, SstpSettings};
