//! The OpenVPN protocol (2.6 wire format) as a sans-IO core: packet codec, tls-crypt
//! envelope, reliability layer, key-method 2, PUSH_REPLY, the server session state
//! machine with its stateless acceptor, a client session, and the AEAD data channel.

pub mod acceptor;
pub mod channel;
pub mod client;
pub mod data;
pub mod key_method;
pub mod keys;
pub mod packet;
pub mod push;
pub mod reliable;
pub mod session;
pub mod static_key;
pub mod tls_crypt;
pub mod wrap;

#[cfg(test)]
mod tests;
