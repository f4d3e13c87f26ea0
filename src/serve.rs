//! `p2sgw serve`: loads and checks everything, then starts the data plane and runs the
//! control plane until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::config::Config;
use crate::control::ike::{self, SharedTrust};
use crate::control::{ControlPlane, tls};
use crate::dataplane::counters::WorkerCounters;
use crate::dataplane::steering::TunSteering;
use crate::dataplane::table::SessionTable;
use crate::dataplane::{Dataplane, Inbox, Settings, Shared, UdpRole, WorkerIo, reuseport, sys, tun};
use crate::pki::{KeyAlgorithm, Pki, ServerIdentity, TrustStore};
use crate::pool::AddressPool;
use crate::proto::openvpn::keys::Role;
use crate::proto::openvpn::static_key::StaticKey;
use crate::proto::openvpn::tls_crypt::TlsCrypt;

/// Loads the config file, or the embedded defaults when there is none.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

/// Runs the gateway with `config`, read from `config_path` (None: embedded defaults,
/// and a PKI is generated in the state directory if there is none).
pub fn serve(config: Config, config_path: Option<&Path>) -> anyhow::Result<()> {
    let pki_dir = config.pki_dir();
    match config_path {
        Some(p) => info!(config = %p.display(), "p2sgw starting"),
        None => {
            info!(state = %config.gateway.state_dir.display(), "p2sgw starting on embedded defaults (no --config)");
            if !pki_dir.join("ca.crt").exists() {
                let gateway = config.gateway_name();
                let summary = Pki::init(&pki_dir, &gateway, KeyAlgorithm::default())
                    .with_context(|| format!("cannot create the PKI in {}", pki_dir.display()))?;
                info!(dir = %summary.dir.display(), gateway, "generated a PKI (root CA, server certificate, tls-crypt key)");
            }
        }
    }
    config.check_files()?;
    let config_arg = match config_path {
        Some(p) => format!(" --config {}", p.display()),
        None if config.gateway.state_dir != Path::new(crate::config::DEFAULT_STATE_DIR) => {
            format!(" --state-dir {}", config.gateway.state_dir.display())
        }
        None => String::new(),
    };
    info!(pki = %pki_dir.display(), "state: PKI and revocations live here");
    info!(
        "make a client: p2sgw pki issue --dir {} --name alice && p2sgw profile{config_arg} --name alice --out alice.ovpn",
        pki_dir.display()
    );

    if let Some(warning) = crate::package::stale_package_warning(&config) {
        warn!("{warning}");
    }
    let trust = TrustStore::load(&config)?;
    let identity = ServerIdentity::load(&config)?;
    let tls_crypt = if config.openvpn.tls_crypt {
        let path = config.tls_crypt_key_path();
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let key = StaticKey::parse(&text).with_context(|| format!("{}: not an OpenVPN static key", path.display()))?;
        Some(Arc::new(TlsCrypt::new(&key, Role::Server)))
    } else {
        warn!("tls-crypt is off: the control channel is not hidden and unauthenticated packets reach TLS");
        None
    };
    let openvpn = tls::openvpn_settings(&config, &trust, &identity)?;
    let sstp = tls::sstp_listener(&config, &identity)?;

    let cpus = sys::allowed_cpus();
    let workers = if config.dataplane.workers == 0 { cpus.len().max(1) } else { config.dataplane.workers };
    let pool = AddressPool::new(config.network.pool);
    let tun::TunQueues { device: tun_device, fds: tun_queues, offload: tun_offload } = tun::create(
        &config.dataplane.tun_name,
        pool.gateway_address(),
        config.network.pool,
        &config.group_pools().into_iter().map(|(_, net)| net).collect::<Vec<_>>(),
        config.openvpn.tun_mtu,
        workers,
        config.dataplane.offload,
    )?;
    let ike_trust = Arc::new(SharedTrust::new(trust.clone()));
    let ike_credential = if config.ikev2.enabled { Some(ike::credential(&identity)?) } else { None };
    let mut io = Vec::with_capacity(workers);
    for (index, tun) in tun_queues.into_iter().enumerate() {
        let mut udp = config
            .listen
            .udp
            .iter()
            .map(|a| sys::udp_socket(a).with_context(|| format!("cannot listen on UDP {a}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tcp = config
            .listen
            .tcp
            .iter()
            .map(|a| sys::tcp_listener(a).with_context(|| format!("cannot listen on TCP {a}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut udp_roles = vec![UdpRole::OpenVpn; udp.len()];
        let mut ike = None;
        if let Some(credential) = &ike_credential {
            for ip in &config.ikev2.listen {
                for (port, role) in [(500, UdpRole::Ike as fn(SocketAddr) -> UdpRole), (4500, UdpRole::NatT)] {
                    let address = SocketAddr::new(*ip, port);
                    udp.push(
                        sys::udp_socket(&address)
                            .with_context(|| format!("cannot listen for IKEv2 on UDP {address}"))?,
                    );
                    udp_roles.push(role(address));
                }
            }
            let tag = u8::try_from(index).context("IKEv2 serves at most 256 workers")?;
            ike = Some(Arc::new(ike::responder_config(&config, credential.clone(), ike_trust.clone(), tag)));
        }
        io.push(WorkerIo { udp, udp_roles, tcp, tun, tun_offload, udp_gso: config.dataplane.offload, ike });
    }
    reuseport::steer_to_owners(&io);
    let (to_control, events) = tokio::sync::mpsc::unbounded_channel();
    let inboxes = (0..workers).map(|_| Inbox::new().map(Arc::new)).collect::<std::io::Result<Vec<_>>>()?;
    // Twice the pool: a reconnecting client holds a second peer-id while its old session
    // is torn down.
    let mut table = SessionTable::new(
        2 * config.group_pools().iter().map(|(_, net)| AddressPool::client_capacity(*net) as usize).sum::<usize>()
            + 2 * pool.capacity() as usize
            + 16,
    );
    if config.dataplane.steering && workers > 1 {
        // TUN queue i went to worker i above (see `steering` on why the indices agree).
        let attached = TunSteering::load(table.capacity()).and_then(|s| s.attach(tun_device.as_fd()).map(|()| s));
        match attached {
            Ok(steering) => {
                info!("TUN steering on: each packet goes to the queue of the worker owning its session");
                table.steer_with(steering);
            }
            Err(e) => warn!(
                error = %e,
                "cannot steer TUN packets to the worker owning their session (needs CAP_BPF): the kernel picks \
                 queues by flow, and a worker reading another's packet seals it with the session's shared keys \
                 (UDP, IKEv2) or hands it over (TCP, SSTP)"
            ),
        }
    }
    let shared = Arc::new(Shared {
        table,
        settings: ArcSwap::from_pointee(Settings {
            openvpn,
            ping_interval: Duration::from_secs(config.openvpn.keepalive_interval_secs.into()),
            ping_timeout: Duration::from_secs(config.openvpn.keepalive_timeout_secs.into()),
            sstp,
        }),
        tls_crypt,
        inboxes,
        counters: (0..workers).map(|_| WorkerCounters::default()).collect(),
        to_control,
        epoch: Instant::now(),
    });
    let pinned: Vec<usize> = if workers <= cpus.len() { cpus.clone() } else { Vec::new() };
    let dataplane = Dataplane::start(shared.clone(), io, &pinned)?;
    info!(
        workers,
        tun = %config.dataplane.tun_name,
        address = %pool.gateway_address(),
        pool = %config.network.pool,
        udp = ?config.listen.udp,
        tcp = ?config.listen.tcp,
        ikev2 = ?config.ikev2.enabled.then_some(&config.ikev2.listen),
        ciphers = ?config.openvpn.data_ciphers.iter().map(|c| c.openvpn_name()).collect::<Vec<_>>(),
        "gateway up"
    );
    if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "0") {
        warn!(
            "net.ipv4.ip_forward is 0: clients reach this host but not the networks behind it (sysctl -w net.ipv4.ip_forward=1, or tuning/)"
        );
    }

    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the control plane")?;
    let result = runtime.block_on(async {
        let (admin_calls, admin_requests) = tokio::sync::mpsc::channel(64);
        crate::admin::start(&config, &identity, admin_calls).await?;
        let control = ControlPlane::new(
            config,
            config_path.map(Path::to_path_buf),
            shared,
            tun_device,
            identity,
            trust,
            ike_trust,
        )
        .await?;
        control.run(events, admin_requests).await
    });
    dataplane.shutdown();
    result
}

/// `p2sgw check-config`: loads and validates, and checks the referenced files.
pub fn check_config(path: &Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    config.check_files()?;
    Ok(config)
}
