//! The `p2sgw` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use p2sgw::config::DEFAULT_STATE_DIR;
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
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
        Command::Profile { source, name, out, transport } => {
            let config = source.load()?;
            let text = openvpn_profile(&config, &name, transport)?;
            write_atomically(&out, text.as_bytes(), 0o600)?;
            println!("wrote {} (use it with: openvpn --config {})", out.display(), out.display());
            Ok(())
        }
    }
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
