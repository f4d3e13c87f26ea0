//! Userspace ESP (RFC 4303) for the CHILD SAs IKEv2 negotiates, PROTOCOLS.md §4: tunnel
//! mode, AES-GCM-16 with 128/256-bit keys (RFC 4106) and ChaCha20-Poly1305 (RFC 7634),
//! 32-bit sequence numbers (no ESN: strongSwan's kernel-libipsec does not do ESN), and
//! UDP encapsulation on port 4500 (RFC 3948).
//!
//! ```text
//! SPI(4) | Seq(4) | IV(8) | ciphertext( inner packet | padding 1,2,3… | PadLen(1) | NextHeader(1) ) | ICV(16)
//! nonce = salt (the last 4 bytes of the SA's KEYMAT slice) || IV
//! AAD   = SPI || Seq
//! ```
//!
//! Like the OpenVPN data channel, sealing and opening work in place in the caller's
//! buffers with no allocation: the caller reads the inner packet into
//! `buf[HEADROOM..]`, and [`OutboundSa::seal`] writes the ESP header in front of it and
//! the trailer and ICV behind it. [`InboundSa::open`] checks SPI, sequence number and
//! replay window before spending time on decryption, decrypts in place, checks the
//! padding and returns where the inner packet lies. Every failure is a typed
//! [`OpenError`] for the caller's drop counters; nothing here panics on peer input.
//!
//! [`udp_encap`] sorts the datagrams arriving on port 4500 into NAT keepalives, IKE
//! messages and ESP packets.

pub mod sa;
pub mod udp_encap;

pub use sa::{
    DEFAULT_REKEY_THRESHOLD, EspHeader, HEADROOM, ICV_LEN, IV_LEN, InboundSa, MAX_TAILROOM, MIN_PACKET_LEN,
    NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, NO_NEXT_HEADER, OpenError, OpenJob, Opened, OutboundSa, SALT_LEN, SaError,
    SaKey, SealError, SealJob, Sealed, keymat_len, responder_sas, sealed_len, split_child_keymat,
};
pub use udp_encap::{ClassifyError, NON_ESP_MARKER, Port4500, classify_port_4500, with_non_esp_marker};
