//! The `p2sgw` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use p2sgw::admin::client::AdminClient;
use p2sgw::config::DEFAULT_STATE_DIR;
use p2sgw::package::{client_package, record_package_settings};
use p2sgw::pki::{KeyAlgorithm, Pki, RevokeTarget, Thumbprint, write_atomically};
use p2sgw::profile::{ProfileTransport, openvpn_profile};
use p2sgw::serve;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// p2sgw: a point-to-site VPN gateway (OpenVPN protocol, UDP and TCP).
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (embedded defaults when no --config is given).
    Serve {
        #[command(flatten)]
        source: ConfigSource,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Manage the gateway's certificate authority.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Write an OpenVPN client profile (.ovpn) for an issued client certificate.
    Profile {
        #[command(flatten)]
        source: ConfigSource,
        /// Client name given to `pki issue`.
        #[arg(long)]
        name: String,
        #[arg(long, value_name = "FILE.ovpn")]
        out: PathBuf,
        /// Transports in the profile: both (UDP first, then TCP), udp or tcp.
        #[arg(long, default_value = "both")]
        transport: ProfileTransport,
    },
    /// Write a client configuration package (zip): settings, root CA, OpenVPN profile, with
    /// IKEv2 strongSwan/macOS/Windows profiles, with SSTP a Windows script, and with token
    /// sign-in an identity-provider profile.
    ClientPackage {
        #[command(flatten)]
        source: ConfigSource,
        /// Put this client's certificate and key in the OpenVPN profile (placeholders otherwise).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_name = "FILE.zip")]
        out: PathBuf,
    },
    /// Compare this host's sysctls with p2sgw's tuning profile and say what each difference costs.
    Tune {
        /// Only check (the one mode there is: the profile is applied with sysctl, see tuning/).
        #[arg(long, required = true)]
        check: bool,
    },
    /// List the connected clients (from the running gateway).
    Sessions {
        #[command(flatten)]
        gateway: RunningGateway,
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disconnect a session now, or every session of a user.
    Disconnect {
        #[command(flatten)]
        gateway: RunningGateway,
        /// Session id, as `p2sgw sessions` shows it.
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        id: Option<u64>,
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a certificate by thumbprint; its live sessions are cut at once.
    Revoke {
        #[command(flatten)]
        gateway: RunningGateway,
        /// SHA-1 thumbprint (hex; colons and spaces allowed).
        thumbprint: Thumbprint,
        /// Take the thumbprint off the revoked list instead.
        #[arg(long)]
        undo: bool,
    },
    /// List, add or remove trusted root CAs of the running gateway.
    Roots {
        #[command(flatten)]
        gateway: RunningGateway,
        #[command(subcommand)]
        command: RootsCommand,
    },
    /// Reload the configuration file without dropping sessions it still allows.
    Reload {
        #[command(flatten)]
        gateway: RunningGateway,
    },
    /// Load-test an OpenVPN-protocol server (p2sgw or OpenVPN 2.6): connect many clients
    /// with a profile, send UDP probes through the tunnels to a `loadgen-sink`, report.
    Loadgen(p2sgw::loadgen::LoadgenArgs),
    /// UDP echo server for `loadgen --sink`, to run behind the server under test.
    LoadgenSink(p2sgw::loadgen::SinkArgs),
}

/// How to reach the running gateway's admin socket.
#[derive(Args)]
struct RunningGateway {
    /// The admin socket (default: from --config, else /var/lib/p2sgw/admin.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The gateway's config file, to find its admin socket.
    #[arg(long, value_name = "FILE", conflicts_with = "socket")]
    config: Option<PathBuf>,
}

impl RunningGateway {
    fn client(&self) -> anyhow::Result<AdminClient> {
        let socket = match (&self.socket, &self.config) {
            (Some(socket), _) => socket.clone(),
            (None, Some(file)) => serve::load_config(Some(file))?.admin_socket_path(),
            (None, None) => p2sgw::config::Config::default().admin_socket_path(),
        };
        Ok(AdminClient::new(&socket))
    }
}

#[derive(Subcommand)]
enum RootsCommand {
    List,
    /// Trust a root CA (a PEM file with one certificate).
    Add {
        file: PathBuf,
    },
    /// Stop trusting a root added with `roots add`.
    Remove {
        thumbprint: Thumbprint,
    },
}

/// Where the configuration comes from: a file, or the embedded defaults.
#[derive(Args)]
struct ConfigSource {
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory for the embedded defaults (default /var/lib/p2sgw).
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    state_dir: Option<PathBuf>,
}

impl ConfigSource {
    fn load(&self) -> anyhow::Result<p2sgw::config::Config> {
        let mut config = serve::load_config(self.config.as_deref())?;
        if let Some(dir) = &self.state_dir {
            config.gateway.state_dir = dir.clone();
        }
        Ok(config)
    }
}

#[derive(Args)]
struct PkiDir {
    /// PKI directory.
    #[arg(long, value_name = "DIR", default_value_os_t = default_pki_dir())]
    dir: PathBuf,
}

fn default_pki_dir() -> PathBuf {
    Path::new(DEFAULT_STATE_DIR).join("pki")
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a root CA, a server certificate and a tls-crypt key.
    Init {
        #[command(flatten)]
        dir: PkiDir,
        /// DNS name or IP address clients use to reach the gateway.
        #[arg(long, value_name = "NAME_OR_IP")]
        gateway: String,
        #[arg(long, default_value = "ecdsa-p256")]
        key: KeyAlgorithm,
    },
    /// Issue a client certificate signed by the root CA.
    Issue {
        #[command(flatten)]
        dir: PkiDir,
        #[arg(long)]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revoke a client certificate (running gateways cut its sessions within seconds).
    Revoke {
        #[command(flatten)]
        dir: PkiDir,
        #[arg(long, conflicts_with = "thumbprint", required_unless_present = "thumbprint")]
        name: Option<String>,
        /// SHA-1 thumbprint (hex; colons and spaces allowed).
        #[arg(long)]
        thumbprint: Option<Thumbprint>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve { .. }));
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2sgw: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(serving: bool) {
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("P2SGW_LOG").unwrap_or_else(|_| default.into());
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    // One JSON object per line, for log shippers: P2SGW_LOG_FORMAT=json.
    if std::env::var("P2SGW_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { source } => serve::serve(source.load()?, source.config.as_deref()),
        Command::CheckConfig { file } => {
            let config = serve::check_config(&file)?;
            print!("{}", config.to_toml_string());
            eprintln!("{}: OK", file.display());
            Ok(())
        }
        Command::Pki { command } => pki(command),
        Command::ClientPackage { source, name, out } => {
            let config = source.load()?;
            let zip = client_package(&config, name.as_deref())?;
            // A named package holds a private key.
            write_atomically(&out, &zip, if name.is_some() { 0o600 } else { 0o644 })?;
            if let Err(e) = record_package_settings(&config) {
                eprintln!(
                    "note: cannot record the package's settings (the gateway will not warn when they change): {e:#}"
                );
            }
            println!("wrote {} ({} bytes)", out.display(), zip.len());
            Ok(())
        }
        Command::Tune { check: _ } => {
            let settings = p2sgw::tune::parse_profile(p2sgw::tune::PROFILE).map_err(anyhow::Error::msg)?;
            let differences = p2sgw::tune::differences(&settings, p2sgw::tune::read_sysctl);
            print!("{}", p2sgw::tune::report(&differences, settings.len()));
            if differences.is_empty() { Ok(()) } else { anyhow::bail!("{} sysctl settings differ", differences.len()) }
        }
        Command::Sessions { gateway, json } => {
            let answer = gateway.client()?.call_json("GET", "/v1/sessions", Vec::new())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print_sessions(&answer);
            }
            Ok(())
        }
        Command::Disconnect { gateway, id, user } => {
            let path = match (id, user) {
                (Some(id), _) => format!("/v1/sessions/{id}"),
                (None, Some(user)) => format!("/v1/users/{}/sessions", percent_encode(&user)),
                (None, None) => anyhow::bail!("give a session id or --user"),
            };
            let answer = gateway.client()?.call_json("DELETE", &path, Vec::new())?;
            println!("disconnected sessions {}", answer["disconnected"]);
            Ok(())
        }
        Command::Revoke { gateway, thumbprint, undo } => {
            let method = if undo { "DELETE" } else { "POST" };
            let answer = gateway.client()?.call_json(method, &format!("/v1/revocations/{thumbprint}"), Vec::new())?;
            if undo {
                println!("{thumbprint} is no longer on the revoked list");
                if answer["still_revoked_by_crl"] == true {
                    println!("note: the PKI's CRL still revokes it; issue a new certificate instead");
                }
            } else if answer["already_revoked"] == true {
                println!("{thumbprint} was already revoked");
            } else {
                println!("revoked {thumbprint}; sessions cut: {}", answer["sessions_cut"]);
            }
            Ok(())
        }
        Command::Roots { gateway, command } => {
            let client = gateway.client()?;
            match command {
                RootsCommand::List => {
                    let answer = client.call_json("GET", "/v1/roots", Vec::new())?;
                    for root in answer["roots"].as_array().into_iter().flatten() {
                        let origin = if root["added_by_api"] == true { "added" } else { "config" };
                        println!(
                            "{}  {}  until {}  ({origin}: {})",
                            text(&root["thumbprint"]),
                            text(&root["subject"]),
                            text(&root["not_after"]),
                            text(&root["file"])
                        );
                    }
                }
                RootsCommand::Add { file } => {
                    let pem = std::fs::read(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    let answer = client.call_json("POST", "/v1/roots", pem)?;
                    println!("trusting {} ({})", text(&answer["added"]), text(&answer["subject"]));
                }
                RootsCommand::Remove { thumbprint } => {
                    client.call_json("DELETE", &format!("/v1/roots/{thumbprint}"), Vec::new())?;
                    println!("no longer trusting {thumbprint}");
                }
            }
            Ok(())
        }
        Command::Reload { gateway } => {
            let answer = gateway.client()?.call_json("POST", "/v1/reload", Vec::new())?;
            println!("reloaded; changed: {}", answer["applied"]);
            if answer["restart_needed"].as_array().is_some_and(|a| !a.is_empty()) {
                println!("these changes take effect after a restart: {}", answer["restart_needed"]);
            }
            Ok(())
        }
        Command::Loadgen(args) => p2sgw::loadgen::run_loadgen(&args),
        Command::LoadgenSink(args) => p2sgw::loadgen::run_sink(args.listen),
        Command::Profile { source, name, out, transport } => {
            let config = source.load()?;
            let text = openvpn_profile(&config, Some(&name), transport)?;
            write_atomically(&out, text.as_bytes(), 0o600)?;
            println!("wrote {} (use it with: openvpn --config {})", out.display(), out.display());
            Ok(())
        }
    }
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

/// A user name as one URL path segment.
fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_sessions(answer: &serde_json::Value) {
    let sessions = answer["sessions"].as_array().cloned().unwrap_or_default();
    println!(
        "{:>5}  {:<20} {:<12} {:<11} {:<15} {:<21} {:>8} {:>12} {:>12}",
        "ID", "USER", "PROTOCOL", "AUTH", "ADDRESS", "FROM", "SECS", "BYTES IN", "BYTES OUT"
    );
    for s in &sessions {
        println!(
            "{:>5}  {:<20} {:<12} {:<11} {:<15} {:<21} {:>8} {:>12} {:>12}",
            s["id"],
            text(&s["user"]),
            text(&s["protocol"]),
            text(&s["auth"]),
            text(&s["virtual_address"]),
            text(&s["public_address"]),
            s["connected_secs"],
            s["bytes_in"],
            s["bytes_out"]
        );
    }
    println!("{} session(s)", sessions.len());
}

fn pki(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init { dir, gateway, key } => {
            let s = Pki::init(&dir.dir, &gateway, key)?;
            println!("PKI created in {} ({})", s.dir.display(), s.key_algorithm);
            println!(
                "root CA:      {} ({}, thumbprint {}, valid until {})",
                s.ca_cert_path.display(),
                s.ca_common_name,
                s.ca_thumbprint,
                s.ca_not_after
            );
            println!("server cert:  {} (CN {})", s.server_cert_path.display(), s.server_common_name);
            println!("tls-crypt:    {}", s.tls_crypt_key_path.display());
            println!("revocations:  {} and {}", s.revoked_list_path.display(), s.crl_path.display());
            Ok(())
        }
        PkiCommand::Issue { dir, name, days } => {
            let issued = Pki::open(&dir.dir)?.issue(&name, days)?;
            println!("{}", issued.thumbprint);
            eprintln!(
                "issued {} (serial {}, valid until {}): {} and {}",
                issued.name,
                issued.serial_hex,
                issued.not_after,
                issued.cert_path.display(),
                issued.key_path.display()
            );
            Ok(())
        }
        PkiCommand::Revoke { dir, name, thumbprint } => {
            let target = match (name, thumbprint) {
                (Some(n), _) => RevokeTarget::Name(n),
                (None, Some(t)) => RevokeTarget::Thumbprint(t),
                (None, None) => anyhow::bail!("give --name or --thumbprint"),
            };
            let r = Pki::open(&dir.dir)?.revoke(target)?;
            let who = r.name.as_deref().unwrap_or("certificate");
            if r.already {
                println!("{who} {} was already revoked", r.thumbprint);
            } else {
                println!("revoked {who} {}", r.thumbprint);
            }
            Ok(())
        }
    }
}
