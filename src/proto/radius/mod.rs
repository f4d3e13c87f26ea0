//! A RADIUS client (RFC 2865, 2866, 2869, 3579, 2548, 5080), PROTOCOLS.md §5, as a
//! sans-IO core like the OpenVPN one: [`packet`] is the codec, [`auth`] the shared-secret
//! cryptography, [`request`] builds what the gateway sends, [`reply`] interprets what
//! comes back, and [`client`] runs requests against a list of servers with
//! retransmission and failover.
//!
//! Typical use: build an [`AccessRequest`] or [`AccountingRequest`] with the gateway's
//! [`NasInfo`], hand it to [`RadiusClient::send`], and drive the client with datagrams
//! and timeouts until its [`ClientEvent`] arrives.

pub mod auth;
pub mod client;
pub mod packet;
pub mod reply;
pub mod request;

#[cfg(test)]
mod tests;

pub use client::{
    ClientConfig, ClientEvent, ConfigError, DropReason, FailureReason, RadiusClient, RequestId, ServerAttempt,
    ServerChoice, ServerConfig,
};
pub use packet::{Attribute, Code, Packet, azure_policy_id_text};
pub use reply::{AcceptInfo, AccessReply, MsChapMessage, Reply, ReplyError};
pub use request::{
    AccessRequest, AccountingRequest, AcctStatusType, BuildError, Credentials, MsChap2Response, NasInfo, Request,
    RequestKind, SessionUsage, TerminateCause,
};
