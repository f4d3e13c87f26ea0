//! The multi-queue TUN device: one queue per worker, the gateway's tunnel address on
//! it, and the pool's route through it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use ipnet::Ipv4Net;

/// Creates (or reuses) the TUN device `name` with `queues` queues, address `address`
/// with the pool's prefix length, the gateway address of each of `extra_pools`, and
/// `mtu`. Returns the device, kept by the control plane to change its addresses when
/// pools change, and one fd per queue for the workers.
pub fn create(
    name: &str,
    address: Ipv4Addr,
    pool: Ipv4Net,
    extra_pools: &[Ipv4Net],
    mtu: u16,
    queues: usize,
) -> io::Result<(tun_rs::SyncDevice, Vec<OwnedFd>)> {
    let first = tun_rs::DeviceBuilder::new()
        .name(name)
        .ipv4(address, pool.prefix_len(), None)
        .mtu(mtu)
        .multi_queue(queues > 1)
        .packet_information(false)
        .enable(true)
        .build_sync()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create TUN device {name}: {e}")))?;
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
    Ok((first, fds))
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
