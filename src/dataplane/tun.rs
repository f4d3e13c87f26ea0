//! The multi-queue TUN device: one queue per worker, the gateway's tunnel address on
//! it, and the pool's route through it. With kernel offloads each read and write carries
//! a virtio_net_hdr (see `offload`).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use ipnet::Ipv4Net;

/// The kernel offloads a TUN device accepted (IFF_VNET_HDR with TUNSETOFFLOAD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunOffload {
    /// UDP segmentation (USO, Linux 6.2+) besides TCP's: reads may carry UDP
    /// super-packets, and writes may coalesce UDP datagrams.
    pub udp: bool,
}

/// What [`create`] made: the device, kept by the control plane to change its addresses
/// when pools change, one fd per queue for the workers, and the offloads in force.
pub struct TunQueues {
    pub device: tun_rs::SyncDevice,
    pub fds: Vec<OwnedFd>,
    pub offload: Option<TunOffload>,
}

/// Creates (or reuses) the TUN device `name` with `queues` queues, address `address`
/// with the pool's prefix length, the gateway address of each of `extra_pools`, and
/// `mtu`; with kernel offloads (checksum, TSO, USO where the kernel has it) when
/// `offload` is set and the kernel accepts them, else without.
pub fn create(
    name: &str,
    address: Ipv4Addr,
    pool: Ipv4Net,
    extra_pools: &[Ipv4Net],
    mtu: u16,
    queues: usize,
    offload: bool,
) -> io::Result<TunQueues> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .ipv4(address, pool.prefix_len(), None)
            .mtu(mtu)
            .multi_queue(queues > 1)
            .packet_information(false)
            .offload(offload)
            .enable(true)
            .build_sync()
    };
    let first = match build(offload) {
        Err(e) if offload => {
            tracing::warn!(device = name, error = %e, "the kernel refuses TUN offloads; packets go one by one");
            build(false)
        }
        built => built,
    }
    .map_err(|e| io::Error::new(e.kind(), format!("cannot create TUN device {name}: {e}")))?;
    let offload = first.tcp_gso().then(|| TunOffload { udp: first.udp_gso() });
    if let Some(offload) = offload {
        tracing::info!(device = name, udp = offload.udp, "TUN offloads on (TSO, checksum; USO when udp)");
    }
    for extra in extra_pools {
        let gateway = Ipv4Addr::from(u32::from(extra.network()) + 1);
        first.add_address_v4(gateway, extra.prefix_len()).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot add {gateway}/{} to {name}: {e}", extra.prefix_len()))
        })?;
    }
    let mut fds = Vec::with_capacity(queues);
    for _ in 1..queues {
        let q =
            first.try_clone().map_err(|e| io::Error::new(e.kind(), format!("cannot add a queue to {name}: {e}")))?;
        // SAFETY: into_raw_fd hands over ownership of a valid fd.
        fds.push(unsafe { OwnedFd::from_raw_fd(q.into_raw_fd()) });
    }
    // Queue 0 stays open through `first`; its worker gets a duplicate of the descriptor.
    let queue0 = duplicate_queue(&first)?;
    fds.insert(0, queue0);
    // The tunnel carries IPv4 only for now; without this the kernel sends IPv6 router
    // solicitations into it. Best effort: a host without IPv6 has no such knob.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    Ok(TunQueues { device: first, fds, offload })
}

/// A second descriptor for the same queue (not a new queue).
fn duplicate_queue(device: &tun_rs::SyncDevice) -> io::Result<OwnedFd> {
    use std::os::fd::AsFd as _;
    device.as_fd().try_clone_to_owned()
}

/// Gives the TUN device the gateway address of each pool in `wanted` it lacks, and
/// takes away those of pools in `unwanted`.
pub fn set_pool_addresses(device: &tun_rs::SyncDevice, wanted: &[Ipv4Net], unwanted: &[Ipv4Net]) -> io::Result<()> {
    for net in wanted {
        let gateway = Ipv4Addr::from(u32::from(net.network()) + 1);
        device.add_address_v4(gateway, net.prefix_len()).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot add {gateway}/{} to the TUN device: {e}", net.prefix_len()))
        })?;
    }
    for net in unwanted {
        let _ = device.remove_address(Ipv4Addr::from(u32::from(net.network()) + 1).into());
    }
    Ok(())
}
