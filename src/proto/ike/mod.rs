//! An IKEv2 responder (RFC 7296, PROTOCOLS.md §3) as a sans-IO core, like the OpenVPN and
//! RADIUS ones: [`message`] is the codec (with RFC 7383 fragments), [`crypto`] the key
//! derivation and SK payload protection, [`proposal`] the algorithm choice, [`auth`] the
//! AUTH payloads, [`ts`] traffic-selector narrowing and [`responder`] the state machine.
//! Key exchange lives in [`crate::crypto::dh`].
//!
//! Driving it: one [`Responder`] per socket pair (UDP 500 and 4500).
//! - Received IKE datagrams go to [`Responder::handle_datagram`] with the local and remote
//!   addresses, after the driver strips the 4-byte non-ESP marker on port 4500; ESP and
//!   NAT keepalives (a single 0xFF byte) never come here.
//! - [`Responder::poll_transmit`] yields bare IKE messages with the addresses to send
//!   from and to; the driver prepends the non-ESP marker when sending from port 4500.
//! - [`Responder::poll_timeout`] / [`Responder::handle_timeout`] run retransmissions, DPD
//!   and half-open expiry; [`Responder::note_activity`] tells it ESP arrived.
//! - [`Responder::poll_event`] yields [`Event`]s. Two ask for an answer, given later by a
//!   method call while the exchange stays parked: [`Event::AuthRequest`] →
//!   [`Responder::authorize`] (address, DNS, routes), and with EAP enabled
//!   [`Event::EapMessage`] → [`Responder::eap_reply`] (relay to RADIUS). The others
//!   tell the data plane what to install or remove: [`Event::ChildSaEstablished`],
//!   [`Event::ChildSaRekeyed`], [`Event::ChildSaDeleted`], [`Event::PeerAddressChanged`],
//!   and [`Event::SessionClosed`] (free the address).
//! - The gateway starts rekeys with [`Responder::rekey_child`] (lifetime, sequence
//!   numbers) and [`Responder::rekey_ike`], and disconnects with [`Responder::close`].
//!
//! Certificates are validated by the caller's [`PeerVerifier`] (trusted roots, CRLs,
//! revoked thumbprints); this core checks the AUTH signature and that the ID is in the
//! certificate.

pub mod auth;
pub mod crypto;
pub mod message;
pub mod proposal;
pub mod responder;
pub mod ts;

#[cfg(test)]
mod interop_tests;
#[cfg(test)]
mod tests;

pub use auth::SigningKey;
pub use crypto::EncrAlgorithm;
pub use message::{Identification, TrafficSelector};
pub use proposal::Algorithms;
pub use responder::{
    AuthRequest, Authorization, ChildSa, CloseReason, Credential, Dropped, EapReply, EspKey, Event, Grant,
    PeerVerifier, Responder, ResponderConfig, SessionId, Timing, Transmit,
};

/// Hex test vectors (whitespace ignored) to bytes.
#[cfg(test)]
pub(crate) fn test_hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digits")).collect()
}
