//! The OpenVPN protocol (2.6 wire format), server side, as a sans-IO core.

pub mod data;
pub mod keys;
pub mod static_key;
pub mod tls_crypt;
