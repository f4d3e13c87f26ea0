//! Shared harness for the end-to-end tests: network namespaces, child processes with logs,
//! the standard gateway topology, and wrappers around ping, iperf3 and the OpenVPN client.
//!
//! Include it from a test file with `mod common;`. Everything here panics with a clear message
//! when setup fails (these are test helpers), never blocks without a timeout, and cleans up
//! through guards, also when a test panics halfway.
//!
//! Needs root: the tests create namespaces, veth pairs and tun devices.

// Each test binary uses a different subset of the harness.
#![allow(dead_code, unused_imports)]

mod gateway;
mod netns;
mod oidc;
mod process;
mod radius;
pub mod strongswan;
mod tools;
mod topology;

pub use gateway::{GATEWAY_NAME, Gateway, GatewayOptions, P2SGW, metric_sum, p2sgw, path, pushed_address, session_of};
pub use netns::{Netns, TestDir, harness_prefix_for, sweep_leftovers};
pub use oidc::{
    DISCOVERY_PATH, Issuer, JWKS_PATH, JwsAlg, OIDC_CERT_DNS_NAME, OIDC_DEFAULT_PORT, OidcOptions, OidcServer,
    decode_segment, encode_segment, standard_claims, unix_now,
};
pub use process::{Proc, run_with_timeout};
pub use radius::{
    AccountingRecord, DEFAULT_RADIUS_SECRET, FreeRadius, MFA_PROMPT, MFA_UNKNOWN_STATE, MFA_WRONG_CODE,
    MS_AZURE_POLICY_ID_TYPE, MS_VENDOR_ID, RADIUS_ACCT_PORT, RADIUS_AUTH_PORT, RadclientCommand, RadiusClient,
    RadiusOptions, RadiusReply, RadiusUser, parse_detail, parse_hex_octets, parse_radclient_output,
};
pub use tools::{
    IPERF3_PORT, IperfResult, OPENVPN_CONNECTED_MARKER, OpenVpnClient, PingResult, iperf3_client, iperf3_client_port,
    iperf3_client_with, iperf3_server, iperf3_server_port, parse_iperf3_json, parse_ping_summary, ping, tun_counters,
    wait_until,
};
pub use topology::{
    CLIENT_IFNAME, GW_VNET_IFNAME, Topology, VNET_GW_ADDR, VNET_HOST_ADDR, VNET_IFNAME, VNET_SUBNET, VPN_POOL_ROUTE,
};
