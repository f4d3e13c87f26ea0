//! `p2sgw loadgen`: an OpenVPN-protocol load generator. It connects N clients (real TLS
//! handshakes, tls-crypt, key-method 2, PUSH_REPLY, through the project's sans-IO
//! [`ClientSession`](crate::proto::openvpn::client::ClientSession)) to any OpenVPN 2.6
//! protocol server over UDP, then sends IPv4/UDP probes through every tunnel to an echo
//! sink behind the server ([`sink`], `p2sgw loadgen-sink`) and reports handshake rate,
//! throughput, loss and round-trip times.
//!
//! Limits: UDP only (a TCP profile is refused); renegotiations the server starts are
//! followed, but the load generator never starts one itself. Servers that keep one session
//! per certificate (p2sgw; OpenVPN without `duplicate-cn`) need one profile per client:
//! `--profile` takes several files or a directory, and clients use them in turn.

mod client;
pub(crate) mod packet;
pub(crate) mod profile;
mod report;
mod sink;
mod sys;
mod traffic;

use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::proto::openvpn::client::ClientSettings;
use crate::proto::openvpn::keys::Role;
use crate::proto::openvpn::reliable::Timing;
use crate::proto::openvpn::tls_crypt::TlsCrypt;

use client::{Identity, Plan, Shared, Worker};
use packet::{MAX_PACKET_LEN, MIN_PACKET_LEN};
use profile::Profile;
use report::{HandshakeStats, Report, TrafficStats};
pub use sink::run_sink;

/// `p2sgw loadgen` options.
#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    /// Client profile as `p2sgw profile` writes it (inline <ca>, <cert>, <key>, <tls-crypt>),
    /// or a directory of them. Repeatable; clients take the profiles in turn. A server may
    /// allow one session per certificate (p2sgw, OpenVPN without duplicate-cn): then give
    /// as many profiles (certificates) as clients.
    #[arg(long, value_name = "FILE.ovpn|DIR", required = true)]
    pub profile: Vec<PathBuf>,
    /// Server address instead of the profile's (first UDP) remote.
    #[arg(long, value_name = "IP:PORT")]
    pub remote: Option<SocketAddr>,
    /// Clients to connect; client i uses profile i mod the number of profiles.
    #[arg(long, default_value_t = 1)]
    pub clients: u32,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// UDP echo sink behind the server (`p2sgw loadgen-sink`); without it: connect only.
    #[arg(long, value_name = "IP:PORT")]
    pub sink: Option<SocketAddrV4>,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Probe packets per second over all clients; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Flat out (--rate 0): probes that may await their echo at once, over all clients;
    /// the sender waits for echoes beyond that, so it measures the server, not how much CPU
    /// it can take from it. 0 = no limit (open loop).
    #[arg(long, default_value_t = 128)]
    pub window: u64,
    /// Size of each probe as the tunnel carries it: the whole inner IPv4 packet, headers
    /// included (1400 = a 1372-byte UDP payload).
    #[arg(long, default_value_t = 1400)]
    pub size: usize,
    /// After connecting (and the traffic), keep the sessions up this many seconds.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub hold: f64,
    /// Print one JSON object on stdout at the end instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write a per-second CSV of the echoes (t_secs,mbit_per_s,pps,rtt_p50_us).
    #[arg(long, value_name = "FILE")]
    pub timeline: Option<PathBuf>,
    /// Worker threads (default: the number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds a client may take to connect before it counts as failed.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub handshake_timeout: f64,
    /// Seconds after which a handshake that has not finished starts over, as a real client
    /// would (0 = never; it then fails at --handshake-timeout).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub handshake_restart: f64,
    /// Username, when the profile has `auth-user-pass`.
    #[arg(long)]
    pub username: Option<String>,
    /// Password, when the profile has `auth-user-pass`.
    #[arg(long)]
    pub password: Option<String>,
}

/// `p2sgw loadgen-sink` options.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// Address to echo UDP on.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
}

/// What the load generator says about itself to the server (peer-info). Data channel v2,
/// PUSH_REQUEST answered at once, keys from the TLS exporter.
const IV_PROTO: u32 = {
    use crate::proto::openvpn::key_method::iv_proto;
    iv_proto::DATA_V2 | iv_proto::REQUEST_PUSH | iv_proto::TLS_KEY_EXPORT
};

/// The options string of a 2.6 client with a tun device over UDP (servers only compare it
/// and warn on differences).
const OPTIONS_STRING: &str = "V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,\
     auth [null-digest],keysize 256,key-method 2,tls-client";

/// Runs the load test and prints the report; fails when no client connected.
pub fn run_loadgen(args: &LoadgenArgs) -> Result<()> {
    let plan = plan(args)?;
    let open_files = sys::raise_open_files_limit().context("raising the open-files limit")?;
    if u64::from(args.clients) + 64 > open_files {
        bail!("{} clients need a socket each, but the open-files limit is {open_files}", args.clients);
    }
    let started = Instant::now();
    let shared = Shared::default();
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..plan.workers)
            .map(|w| {
                let ids: Vec<u32> = (0..args.clients).filter(|id| *id as usize % plan.workers == w).collect();
                let (plan, shared) = (&plan, &shared);
                scope.spawn(move || Worker::new(plan, shared, w, ids)?.run())
            })
            .collect();
        workers
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let result = w.join().map_err(|_| anyhow!("worker {i} panicked"))?;
                result.with_context(|| format!("worker {i}: socket I/O"))
            })
            .collect::<Result<Vec<_>>>()
    })?;

    let mut handshakes = HandshakeStats::default();
    let mut traffic = plan.sink.map(|_| TrafficStats::new(plan.duration.as_secs_f64().ceil() as u64));
    for r in results {
        handshakes.merge(r.handshakes);
        if let (Some(total), Some(t)) = (&mut traffic, &r.traffic) {
            total.merge(t);
        }
    }
    let report = Report::new(u64::from(args.clients), &handshakes, traffic.as_ref().map(|t| (t, plan.duration)));
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
        println!("{:<22} {:.1} s", "total run time", started.elapsed().as_secs_f64());
    }
    for (reason, count) in &handshakes.failures {
        eprintln!("loadgen: {count} client(s) failed: {reason}");
    }
    if let (Some(path), Some(t)) = (&args.timeline, &traffic) {
        std::fs::write(path, t.timeline_csv()).with_context(|| format!("writing {}", path.display()))?;
    }
    if handshakes.connected == 0 && args.clients > 0 {
        bail!("no client connected");
    }
    Ok(())
}

fn plan(args: &LoadgenArgs) -> Result<Plan> {
    let profiles = read_profiles(&args.profile)?;
    let (first_path, first) = &profiles[0];
    let (remote, remote_name) = match args.remote {
        Some(addr) => {
            let named = first.udp_remote().ok().cloned().unwrap_or(profile::Remote {
                host: addr.ip().to_string(),
                port: addr.port(),
                transport: profile::Transport::Udp,
            });
            (addr, named)
        }
        None => {
            let r = first.udp_remote().with_context(|| format!("profile {}", first_path.display()))?;
            let addr = (r.host.as_str(), r.port)
                .to_socket_addrs()
                .with_context(|| format!("resolving {}", r.host))?
                .next()
                .ok_or_else(|| anyhow!("{} has no address", r.host))?;
            (addr, r.clone())
        }
    };
    if first.asks_password && (args.username.is_none() || args.password.is_none()) {
        bail!("the profile has auth-user-pass: give --username and --password");
    }
    if !(MIN_PACKET_LEN..=MAX_PACKET_LEN).contains(&args.size) {
        bail!("--size must lie in {MIN_PACKET_LEN}..={MAX_PACKET_LEN} (the inner IP packet, headers included)");
    }
    let seconds = |what: &str, secs: f64| {
        Duration::try_from_secs_f64(secs).map_err(|_| anyhow!("{what} must be a non-negative number of seconds"))
    };
    let duration = seconds("--duration", args.duration)?;
    if args.sink.is_some() && duration.is_zero() {
        bail!("--duration must be positive with --sink");
    }
    let workers = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, (args.clients as usize).max(1));
    let identities = profiles
        .iter()
        .map(|(path, profile)| {
            let settings = ClientSettings {
                tls: profile.tls_config().with_context(|| format!("profile {}", path.display()))?,
                server_name: profile.server_name(&remote_name),
                username: args.username.clone().unwrap_or_default(),
                password: args.password.clone().unwrap_or_default(),
                peer_info: format!(
                    "IV_VER=2.6.14\nIV_PLAT=linux\nIV_GUI_VER=p2sgw-loadgen\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n\
                     IV_CIPHERS={}\nIV_PROTO={IV_PROTO}\n",
                    profile.iv_ciphers()
                ),
                options: OPTIONS_STRING.to_string(),
                reliable: Timing::default(),
            };
            let tls_crypt = profile.tls_crypt.as_ref().map(|k| Arc::new(TlsCrypt::new(k, Role::Client)));
            Ok(Identity { settings: Arc::new(settings), tls_crypt })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan {
        identities,
        remote,
        sink: args.sink,
        packet_len: args.size,
        rate_pps: args.rate,
        window: args.window,
        duration,
        hold: seconds("--hold", args.hold)?,
        handshake_timeout: seconds("--handshake-timeout", args.handshake_timeout)?,
        handshake_restart: Some(seconds("--handshake-restart", args.handshake_restart)?).filter(|d| !d.is_zero()),
        workers,
        concurrency: args.concurrency.max(1),
        epoch: Instant::now(),
    })
}

/// The profiles named on the command line, directories expanded to their `.ovpn` files
/// (sorted by name); never empty.
fn read_profiles(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Profile)>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "ovpn"))
                .collect();
            if in_dir.is_empty() {
                bail!("{} holds no .ovpn profile", path.display());
            }
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        bail!("give at least one --profile");
    }
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let profile = Profile::parse(&text).with_context(|| format!("profile {}", path.display()))?;
            Ok((path, profile))
        })
        .collect()
}
