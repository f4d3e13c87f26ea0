//! Sans-IO protocol cores. Each takes bytes and the current time and returns bytes to
//! send, the next time it wants to be woken, and events. None owns a socket, a thread
//! or a clock.

pub mod eap;
pub mod esp;
pub mod ike;
pub mod openvpn;
pub mod ppp;
pub mod radius;
pub mod sstp;
