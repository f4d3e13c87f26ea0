//! Traffic-selector narrowing (RFC 7296 §2.9, PROTOCOLS.md §3.9): the responder answers
//! with the intersection of what the initiator proposed and what it allows.

use std::net::IpAddr;

use ipnet::IpNet;

use super::message::TrafficSelector;

/// All ports and protocols of a network.
pub fn from_net(net: IpNet) -> TrafficSelector {
    TrafficSelector { ip_protocol: 0, start_port: 0, end_port: 65535, start: net.network(), end: net.broadcast() }
}

/// One address, all ports and protocols.
pub fn host(ip: IpAddr) -> TrafficSelector {
    TrafficSelector { ip_protocol: 0, start_port: 0, end_port: 65535, start: ip, end: ip }
}

/// The overlap of two selectors, if any (same address family, compatible protocol,
/// overlapping ports and addresses).
pub fn intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    if a.start.is_ipv4() != b.start.is_ipv4() || a.end.is_ipv4() != a.start.is_ipv4() {
        return None;
    }
    let ip_protocol = match (a.ip_protocol, b.ip_protocol) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    let start = a.start.max(b.start);
    let end = a.end.min(b.end);
    (start_port <= end_port && start <= end).then_some(TrafficSelector {
        ip_protocol,
        start_port,
        end_port,
        start,
        end,
    })
}

/// Every non-empty intersection of a proposed selector with an allowed one, without
/// duplicates, in the order allowed × proposed.
pub fn narrow(proposed: &[TrafficSelector], allowed: &[TrafficSelector]) -> Vec<TrafficSelector> {
    let mut out: Vec<TrafficSelector> = Vec::new();
    for a in allowed {
        for p in proposed {
            if let Some(ts) = intersect(p, a)
                && !out.contains(&ts)
            {
                out.push(ts);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> TrafficSelector {
        from_net(s.parse().unwrap())
    }

    #[test]
    fn narrowing_to_routes_and_hosts() {
        let everything = net("0.0.0.0/0");
        assert_eq!(everything.end, "255.255.255.255".parse::<IpAddr>().unwrap());
        let routes = [net("10.1.0.0/16"), net("192.168.5.0/24"), net("fd00::/8")];
        // Full-range proposal (plus ::/0) narrowed to the routes.
        assert_eq!(narrow(&[everything, net("::/0")], &routes), routes.to_vec());
        // A narrower proposal keeps its own bounds.
        let narrower = net("10.1.2.0/24");
        assert_eq!(narrow(&[narrower], &routes), vec![narrower]);
        // Nothing in common.
        assert!(narrow(&[net("172.16.0.0/12")], &routes).is_empty());
        // A virtual address.
        let vip = host("10.9.0.7".parse().unwrap());
        assert_eq!(narrow(&[everything], &[vip]), vec![vip]);
    }

    #[test]
    fn protocols_and_ports_intersect() {
        let mut web = net("10.0.0.0/8");
        web.ip_protocol = 6;
        web.start_port = 443;
        web.end_port = 443;
        assert_eq!(intersect(&net("0.0.0.0/0"), &web), Some(web));
        let mut udp = web;
        udp.ip_protocol = 17;
        assert_eq!(intersect(&udp, &web), None);
        let mut low = web;
        low.start_port = 1;
        low.end_port = 100;
        assert_eq!(intersect(&low, &web), None);
    }
}
