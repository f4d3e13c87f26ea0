//! p2sgw: a point-to-site VPN gateway.
//!
//! Layout by subsystem:
//! - [`proto`]: sans-IO protocol cores (bytes and time in, bytes and events out).
//! - [`crypto`]: AEAD contexts, replay windows and key-derivation primitives.
//! - [`dataplane`]: per-core workers that own sockets, TUN queues and io_uring rings.
//! - [`control`]: the control plane (auth decisions, address pool, revocation watch).
//! - [`config`], [`pki`], [`profile`]: what an operator touches.

pub mod admin;
pub mod auth;
pub mod config;
pub mod control;
pub mod crypto;
pub mod dataplane;
#[doc(hidden)]
pub mod fuzzing;
pub mod loadgen;
pub mod package;
pub mod pki;
pub mod pool;
pub mod profile;
pub mod proto;
pub mod serve;
#[cfg(test)]
mod testing;
pub mod tune;
