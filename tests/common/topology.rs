//! The standard network picture of a gateway test:
//!
//! ```text
//!   cK (client K)                         gw (gateway)                    vnet (host behind gw)
//!   eth0 192.168.(100+K).2/24 ── veth ── to-cK 192.168.(100+K).1/24
//!                                         to-vnet 10.50.0.1/24 ── veth ── eth0 10.50.0.2/24
//!                                         ip_forward=1                    route 172.16.0.0/12 via 10.50.0.1
//! ```
//!
//! Clients have no route to the vnet: they reach it only through the VPN (or a route a test adds).
//! Every client has a host route to 192.168.100.1, the gateway's "public" address.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::netns::{Netns, TestDir};
use super::tools::wait_until;

/// The host behind the gateway.
pub const VNET_HOST_ADDR: &str = "10.50.0.2";
/// The gateway's address on the vnet side.
pub const VNET_GW_ADDR: &str = "10.50.0.1";
pub const VNET_SUBNET: &str = "10.50.0.0/24";
/// Covers the VPN client address pools; the vnet host routes it back through the gateway.
pub const VPN_POOL_ROUTE: &str = "172.16.0.0/12";
/// Interface names inside the namespaces (names are per namespace, so they repeat).
pub const CLIENT_IFNAME: &str = "eth0";
pub const VNET_IFNAME: &str = "eth0";
pub const GW_VNET_IFNAME: &str = "to-vnet";

/// Client underlay subnets are 192.168.(100+K).0/24, so K stays below this.
const MAX_CLIENTS: usize = 100;

/// Namespaces `gw`, `vnet` and `c0..cN` wired as in the module comment. Dropping it kills every
/// process inside the namespaces and deletes them (and with them all veths and tun devices).
pub struct Topology {
    // Field order is drop order: namespaces go before the directory whose logs they fill.
    clients: Vec<Netns>,
    gw: Netns,
    vnet: Netns,
    dir: Arc<TestDir>,
}

impl Topology {
    /// Builds the topology with `n_clients` client namespaces; panics on failure, after removing
    /// whatever was already created.
    pub fn new(n_clients: usize) -> Topology {
        assert!(n_clients <= MAX_CLIENTS, "at most {MAX_CLIENTS} clients, asked for {n_clients}");
        let dir = TestDir::new();
        // Every namespace is a guard the moment it exists, so a panic below unwinds through them.
        let gw = Netns::in_dir(&dir, "gw");
        let vnet = Netns::in_dir(&dir, "vnet");
        gw.sysctl("net.ipv4.ip_forward", "1");
        connect(
            &gw,
            GW_VNET_IFNAME,
            &format!("{VNET_GW_ADDR}/24"),
            &vnet,
            VNET_IFNAME,
            &format!("{VNET_HOST_ADDR}/24"),
        );
        vnet.ip(&["route", "add", VPN_POOL_ROUTE, "via", VNET_GW_ADDR]);

        let mut clients = Vec::with_capacity(n_clients);
        for k in 0..n_clients {
            let client = Netns::in_dir(&dir, &format!("c{k}"));
            connect(
                &gw,
                &Topology::gw_ifname_for_client(k),
                &format!("{}/24", gateway_addr(k)),
                &client,
                CLIENT_IFNAME,
                &format!("{}/24", client_addr(k)),
            );
            // Every client reaches the gateway's public address (client 0's side of it),
            // as laptops on different networks reach one VPN endpoint.
            if k > 0 {
                client.ip(&["route", "add", &format!("{}/32", gateway_addr(0)), "via", &gateway_addr(k)]);
            }
            clients.push(client);
        }
        Topology { clients, gw, vnet, dir }
    }

    pub fn gw(&self) -> &Netns {
        &self.gw
    }

    pub fn vnet(&self) -> &Netns {
        &self.vnet
    }

    pub fn client(&self, k: usize) -> &Netns {
        self.clients.get(k).unwrap_or_else(|| panic!("client {k} does not exist (topology has {})", self.clients.len()))
    }

    pub fn clients(&self) -> &[Netns] {
        &self.clients
    }

    /// Directory for this test's logs and files (profiles, configs, keys).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn test_dir(&self) -> &Arc<TestDir> {
        &self.dir
    }

    /// The gateway address client `k` connects to: 192.168.(100+k).1.
    pub fn gateway_addr_for(&self, k: usize) -> String {
        self.client(k);
        gateway_addr(k)
    }

    /// Client `k`'s underlay address: 192.168.(100+k).2.
    pub fn client_addr_for(&self, k: usize) -> String {
        self.client(k);
        client_addr(k)
    }

    /// The gateway-side interface towards client `k`: `to-c<k>`.
    pub fn gw_ifname_for_client(k: usize) -> String {
        format!("to-c{k}")
    }

    /// A namespace behind client `k`'s, which becomes its NAT router (as a home router or
    /// a carrier's NAT): `eth0` 10.99.k.2/24 with its default route through 10.99.k.1,
    /// masqueraded to client `k`'s address. It goes away when dropped.
    pub fn behind_nat(&self, k: usize) -> Netns {
        let router = self.client(k);
        let lan = Netns::in_dir(&self.dir, &format!("lan{k}"));
        let (router_addr, lan_addr) = (format!("10.99.{k}.1"), format!("10.99.{k}.2"));
        connect(router, "lan", &format!("{router_addr}/24"), &lan, CLIENT_IFNAME, &format!("{lan_addr}/24"));
        lan.ip(&["route", "add", "default", "via", &router_addr]);
        router.sysctl("net.ipv4.ip_forward", "1");
        // Removing the router's address keeps the others of its subnet (a new public address).
        router.sysctl(&format!("net.ipv4.conf.{CLIENT_IFNAME}.promote_secondaries"), "1");
        router.exec_ok(&["nft", "add table ip nat"]);
        router.exec_ok(&["nft", "add chain ip nat postrouting { type nat hook postrouting priority 100 ; }"]);
        router.exec_ok(&["nft", &format!("add rule ip nat postrouting oifname {CLIENT_IFNAME} masquerade")]);
        lan
    }

    /// Gives the NAT router of [`Topology::behind_nat`] for client `k` the public address
    /// `to` instead of its own (a new lease): the NAT mappings through the old one go with it.
    pub fn renumber_nat(&self, k: usize, to: &str) {
        let router = self.client(k);
        router.ip(&["addr", "add", &format!("{to}/24"), "dev", CLIENT_IFNAME]);
        router.ip(&["addr", "del", &format!("{}/24", client_addr(k)), "dev", CLIENT_IFNAME]);
    }

    /// Names of all namespaces of this topology.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut names = vec![self.gw.name().to_owned(), self.vnet.name().to_owned()];
        names.extend(self.clients.iter().map(|client| client.name().to_owned()));
        names
    }
}

fn gateway_addr(k: usize) -> String {
    format!("192.168.{}.1", 100 + k)
}

fn client_addr(k: usize) -> String {
    format!("192.168.{}.2", 100 + k)
}

/// Creates a veth pair with one end in each namespace, addresses both ends and waits until both are up.
fn connect(a: &Netns, a_ifname: &str, a_addr: &str, b: &Netns, b_ifname: &str, b_addr: &str) {
    a.ip(&["link", "add", a_ifname, "type", "veth", "peer", "name", b_ifname, "netns", b.name()]);
    for (ns, ifname, addr) in [(a, a_ifname, a_addr), (b, b_ifname, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", ifname]);
        ns.ip(&["link", "set", ifname, "up"]);
    }
    for (ns, ifname) in [(a, a_ifname), (b, b_ifname)] {
        let is_up = || ns.ip(&["-o", "link", "show", "dev", ifname]).contains("state UP");
        assert!(
            wait_until(Duration::from_secs(5), Duration::from_millis(10), is_up),
            "{ifname} in {} did not come up",
            ns.name()
        );
    }
}
