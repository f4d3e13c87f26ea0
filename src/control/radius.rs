//! The RADIUS service of the control plane: one UDP socket and the sans-IO
//! [`RadiusClient`] driven by a tokio task. Authentication asks by message and awaits
//! the reply; a slow or dead server delays only the requests waiting on it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::config::RadiusConfig;
use crate::proto::radius::{
    AccessReply, AccessRequest, AccountingRequest, ClientConfig, ClientEvent, NasInfo, RadiusClient, Reply, RequestId,
    ServerChoice, ServerConfig,
};

/// How long new requests skip a server that let a request time out.
const DEAD_TIME: Duration = Duration::from_secs(30);

enum Job {
    Access(AccessRequest, oneshot::Sender<Result<AccessReply, String>>),
    Accounting(AccountingRequest),
}

/// A handle to the RADIUS task; cheap to clone.
#[derive(Clone)]
pub struct RadiusService {
    jobs: mpsc::UnboundedSender<Job>,
}

impl RadiusService {
    /// Binds the client socket and starts the task on the current tokio runtime.
    pub async fn start(config: &RadiusConfig) -> anyhow::Result<RadiusService> {
        let accounting = config.accounting_addresses();
        let servers = config
            .servers
            .iter()
            .enumerate()
            .map(|(i, &auth_address)| ServerConfig {
                auth_address,
                acct_address: accounting.get(i).copied().unwrap_or(SocketAddr::new(auth_address.ip(), 1813)),
                secret: config.secret_for(i).as_bytes().to_vec(),
            })
            .collect();
        let mut client_config = ClientConfig::new(servers);
        // The configured timeout is the whole wait on one server, shared by its tries.
        client_config.timeout = Duration::from_secs(config.timeout_secs.into()) / config.tries.max(1);
        client_config.tries_per_server = config.tries;
        client_config.dead_time = DEAD_TIME;
        client_config.require_message_authenticator = config.require_message_authenticator;
        let client = RadiusClient::new(client_config).context("RADIUS client configuration")?;
        let bind: SocketAddr =
            if config.servers.iter().all(|a| a.is_ipv6()) { "[::]:0".parse()? } else { "0.0.0.0:0".parse()? };
        let socket = UdpSocket::bind(bind).await.context("cannot open the RADIUS client socket")?;
        let nas = NasInfo { identifier: config.nas_identifier.clone(), ip_address: None };
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, socket, nas, rx));
        Ok(RadiusService { jobs })
    }

    /// Sends an Access-Request and waits for the server's answer (or for every server
    /// to have failed, with a reason naming them).
    pub async fn access(&self, request: AccessRequest) -> Result<AccessReply, String> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(Job::Access(request, tx)).map_err(|_| "the RADIUS client stopped".to_string())?;
        rx.await.map_err(|_| "the RADIUS client stopped".to_string())?
    }

    /// Sends an Accounting-Request; retried and failed over in the background, and
    /// logged if no server takes it.
    pub fn account(&self, request: AccountingRequest) {
        let _ = self.jobs.send(Job::Accounting(request));
    }
}

async fn run(mut client: RadiusClient, socket: UdpSocket, nas: NasInfo, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut waiting: HashMap<RequestId, oneshot::Sender<Result<AccessReply, String>>> = HashMap::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let deadline = client.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { return };
                let now = Instant::now();
                match job {
                    Job::Access(request, reply_to) => match request.build(&nas) {
                        Ok(r) => {
                            let id = client.send(now, r, ServerChoice::Any);
                            waiting.insert(id, reply_to);
                        }
                        Err(e) => {
                            let _ = reply_to.send(Err(format!("cannot build the Access-Request: {e}")));
                        }
                    },
                    Job::Accounting(request) => match request.build(&nas) {
                        Ok(r) => {
                            client.send(now, r, ServerChoice::Any);
                        }
                        Err(e) => warn!(error = %e, "cannot build an Accounting-Request"),
                    },
                }
            }
            received = socket.recv_from(&mut buf) => {
                match received {
                    Ok((n, from)) => {
                        if let Err(e) = client.handle_datagram(Instant::now(), from, &buf[..n]) {
                            debug!(%from, reason = %e, "RADIUS datagram dropped");
                        }
                    }
                    Err(e) => warn!(error = %e, "RADIUS socket error"),
                }
            }
            _ = sleep_until(deadline) => client.handle_timeout(Instant::now()),
        }
        while let Some((to, bytes)) = client.poll_transmit() {
            if let Err(e) = socket.send_to(&bytes, to).await {
                debug!(%to, error = %e, "cannot send to a RADIUS server");
            }
        }
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::Reply { id, reply, .. } => match (waiting.remove(&id), reply) {
                    (Some(reply_to), Reply::Access(r)) => {
                        let _ = reply_to.send(Ok(r));
                    }
                    (Some(reply_to), Reply::AccountingResponse) => {
                        let _ = reply_to.send(Err("an Accounting-Response answered an Access-Request".into()));
                    }
                    (None, _) => {} // accounting acknowledged
                },
                ClientEvent::Failed { id, reason } => match waiting.remove(&id) {
                    Some(reply_to) => {
                        let _ = reply_to.send(Err(reason.to_string()));
                    }
                    None => warn!(%reason, "accounting record not delivered"),
                },
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
