//! A Windows-like SSTP client for the end-to-end tests: TLS (rustls) to the gateway,
//! the in-tree [`SstpClient`] (HTTP request, SSTP call, PPP with MS-CHAPv2 or EAP-TLS,
//! crypto binding, IPCP), and a TUN device `sstp0` carrying the tunnel's packets.
//!
//! ```text
//! sstp_client --server ADDR:PORT --ca FILE (--user U --password P | --cert FILE --key FILE)
//!             [--server-name NAME] [--route PREFIX]... [--expect-fail]
//! ```
//!
//! With `--cert` and `--key` the client signs in with EAP-TLS (a rustls client inside
//! PPP, checking the gateway's certificate against `--ca` too); `--user` then sets the
//! EAP Identity (the certificate's file name by default).
//!
//! Prints `SSTP connected <address>` when the tunnel is up and runs until the gateway
//! ends the call (then exits 2 with the reason). A refusal exits 1 with the reason, or
//! 0 with `--expect-fail` (which makes a successful connection exit 1). With
//! `SSLKEYLOGFILE` set, the TLS keys are written there (for tshark).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use p2sgw::proto::ppp::client::EapTlsConfig;
use p2sgw::proto::sstp::CertHashes;
use p2sgw::proto::sstp::client::{SstpClient, SstpClientConfig, SstpClientEvent};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const TUN_NAME: &str = "sstp0";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

struct Args {
    server: SocketAddr,
    server_name: Option<String>,
    ca: PathBuf,
    user: String,
    password: String,
    /// Client certificate and key files, for EAP-TLS.
    certificate: Option<(PathBuf, PathBuf)>,
    routes: Vec<String>,
    expect_fail: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let (mut server, mut server_name, mut ca, mut user, mut password) = (None, None, None, None, None);
    let (mut cert, mut key) = (None, None);
    let mut routes = Vec::new();
    let mut expect_fail = false;
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => server = Some(value()?.parse().context("--server must be ADDR:PORT")?),
            "--server-name" => server_name = Some(value()?),
            "--ca" => ca = Some(PathBuf::from(value()?)),
            "--user" => user = Some(value()?),
            "--password" => password = Some(value()?),
            "--cert" => cert = Some(PathBuf::from(value()?)),
            "--key" => key = Some(PathBuf::from(value()?)),
            "--route" => routes.push(value()?),
            "--expect-fail" => expect_fail = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let certificate = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!("--cert and --key go together"),
    };
    let (user, password) = match &certificate {
        Some((cert, _)) => {
            let name = cert.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            (user.unwrap_or(name), String::new())
        }
        None => (user.context("--user is required")?, password.context("--password is required")?),
    };
    Ok(Args {
        server: server.context("--server is required")?,
        server_name,
        ca: ca.context("--ca is required")?,
        user,
        password,
        certificate,
        routes,
        expect_fail,
    })
}

/// How the call ended.
enum Ending {
    /// Refused before the tunnel came up.
    Refused(String),
    /// Ended by the gateway (or the connection) after it was up.
    Disconnected(String),
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("sstp_client: {e:#}");
            return ExitCode::from(64);
        }
    };
    let expect_fail = args.expect_fail;
    match run(args) {
        Ok(Ending::Refused(reason)) if expect_fail => {
            println!("SSTP refused: {reason}");
            ExitCode::SUCCESS
        }
        Ok(Ending::Refused(reason)) => {
            eprintln!("SSTP refused: {reason}");
            ExitCode::from(1)
        }
        Ok(Ending::Disconnected(reason)) => {
            println!("SSTP disconnected: {reason}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("sstp_client: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn roots(ca: &PathBuf) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("cannot read {}", ca.display()))? {
        roots.add(cert.with_context(|| format!("bad certificate in {}", ca.display()))?)?;
    }
    Ok(roots)
}

fn tls_config(ca: &PathBuf) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    config.key_log = Arc::new(rustls::KeyLogFile::new());
    Ok(Arc::new(config))
}

/// The TLS inside EAP-TLS: the client's certificate, and the gateway's checked against
/// the same roots as the outer TLS.
fn eap_tls_config(
    ca: &PathBuf,
    cert: &PathBuf,
    key: &PathBuf,
    name: ServerName<'static>,
) -> anyhow::Result<EapTlsConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad certificate in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("cannot read the key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(chain, key)
        .context("the client certificate and key cannot be used for TLS")?;
    Ok(EapTlsConfig { tls: Arc::new(config), server_name: name })
}

fn run(args: Args) -> anyhow::Result<Ending> {
    let host = args.server_name.clone().unwrap_or_else(|| args.server.ip().to_string());
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => ServerName::try_from(host.clone()).context("bad --server-name")?,
    };
    let eap_tls = match &args.certificate {
        Some((cert, key)) => Some(eap_tls_config(&args.ca, cert, key, name.clone())?),
        None => None,
    };
    let mut tls = rustls::ClientConnection::new(tls_config(&args.ca)?, name)?;
    // Each loop turn writes all of TLS's output to the socket: no need for its limit.
    tls.set_buffer_limit(None);
    let mut socket = TcpStream::connect_timeout(&args.server, CONNECT_TIMEOUT)
        .with_context(|| format!("cannot connect to {}", args.server))?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    while tls.is_handshaking() {
        tls.complete_io(&mut socket).context("TLS handshake")?;
    }
    socket.set_read_timeout(None)?;
    let leaf = tls.peer_certificates().and_then(|c| c.first()).context("the gateway showed no certificate")?;
    let mut sstp = SstpClient::new(SstpClientConfig {
        host,
        user: args.user.clone(),
        password: args.password.clone(),
        eap_tls,
        server_cert_hashes: CertHashes::of_der(leaf),
        call_connected_early: true,
    });
    let started = Instant::now();
    let mut tun: Option<tun_rs::SyncDevice> = None;
    let mut input = vec![0u8; 64 * 1024];
    let mut plaintext = vec![0u8; 64 * 1024];
    let mut packet = vec![0u8; 2048];
    loop {
        // Everything SSTP has to send, through TLS, onto the socket.
        while let Some(bytes) = sstp.poll_transmit() {
            tls.writer().write_all(&bytes)?;
        }
        while tls.wants_write() {
            tls.write_tls(&mut socket).context("sending to the gateway")?;
        }
        while let Some(event) = sstp.poll_event() {
            match event {
                SstpClientEvent::IpUp { address, .. } => {
                    if args.expect_fail {
                        bail!("connected as {address}, but a refusal was expected");
                    }
                    tun = Some(open_tun(address, &args.routes)?);
                    println!("SSTP connected {address}");
                    std::io::stdout().flush()?;
                }
                SstpClientEvent::TunnelPacket(p) => {
                    if let Some(tun) = &tun {
                        // A full TUN queue drops the packet, as a real interface would.
                        let _ = tun.send(&p);
                    }
                }
                SstpClientEvent::Closed(reason) => {
                    return Ok(if tun.is_some() { Ending::Disconnected(reason) } else { Ending::Refused(reason) });
                }
            }
        }
        if tun.is_none() && started.elapsed() > CONNECT_TIMEOUT {
            bail!("the tunnel did not come up within {} s", CONNECT_TIMEOUT.as_secs());
        }
        let mut fds = [
            libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: tun.as_ref().map_or(-1, |t| t.as_raw_fd()), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: fds is a valid array of pollfd for its length.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error.into());
        }
        if fds[0].revents != 0 {
            let n = socket.read(&mut input).context("reading from the gateway")?;
            if n == 0 {
                let reason = "the gateway closed the connection".to_string();
                return Ok(if tun.is_some() { Ending::Disconnected(reason) } else { Ending::Refused(reason) });
            }
            let mut received = &input[..n];
            while !received.is_empty() {
                tls.read_tls(&mut received)?;
                tls.process_new_packets().map_err(|e| anyhow!("TLS: {e}"))?;
                loop {
                    match tls.reader().read(&mut plaintext) {
                        Ok(0) => break,
                        Ok(n) => sstp.handle_input(&plaintext[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        if let Some(device) = &tun
            && fds[1].revents != 0
        {
            // Drain what is queued (the device is non-blocking), up to a batch.
            for _ in 0..64 {
                match device.recv(&mut packet) {
                    Ok(n) => {
                        sstp.send_ip(&packet[..n]);
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

fn open_tun(address: Ipv4Addr, routes: &[String]) -> anyhow::Result<tun_rs::SyncDevice> {
    let device = tun_rs::DeviceBuilder::new()
        .name(TUN_NAME)
        .ipv4(address, 32, None)
        .mtu(1400)
        .packet_information(false)
        .enable(true)
        .build_sync()
        .with_context(|| format!("cannot create TUN device {TUN_NAME}"))?;
    device.set_nonblocking(true).context("non-blocking TUN")?;
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{TUN_NAME}/disable_ipv6"), "1");
    for route in routes {
        let status = Command::new("ip")
            .args(["route", "replace", route, "dev", TUN_NAME])
            .status()
            .context("cannot run ip route")?;
        if !status.success() {
            bail!("ip route replace {route} dev {TUN_NAME} failed");
        }
    }
    Ok(device)
}
