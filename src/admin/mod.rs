//! The admin API: JSON over HTTP/1.1 on a Unix socket only root can open, and optionally
//! over HTTPS with a bearer token (`[admin] tcp`). `docs/admin-api.openapi.json` documents it.
//!
//! Handlers only translate HTTP. Every request becomes an [`AdminCall`] to the control
//! plane, which alone owns the sessions, the trust material and the configuration, and
//! answers it by message like everything else it does.

pub mod client;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::Config;
use crate::pki::{ServerIdentity, Thumbprint};

/// What the control plane is asked.
#[derive(Debug)]
pub enum AdminRequest {
    Health,
    Sessions,
    Disconnect(DisconnectTarget),
    Roots,
    /// A PEM file with one or more CA certificates.
    AddRoot(String),
    RemoveRoot(Thumbprint),
    Revocations,
    Revoke(Thumbprint),
    Unrevoke(Thumbprint),
    Reload,
    Metrics,
    /// A client configuration package, for one user (with their credentials) or any.
    ClientPackage(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectTarget {
    Session(u64),
    User(String),
}

#[derive(Debug)]
pub enum AdminReply {
    Json(serde_json::Value),
    /// Prometheus text exposition.
    Metrics(String),
    Zip(Vec<u8>),
}

/// A refused or failed admin request: an HTTP status and a reason for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    pub status: u16,
    pub message: String,
}

impl AdminError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        AdminError { status: 400, message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        AdminError { status: 404, message: message.into() }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        AdminError { status: 409, message: message.into() }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        AdminError { status: 500, message: message.into() }
    }
}

pub type AdminResult = Result<AdminReply, AdminError>;

/// One request to the control plane and where its answer goes.
#[derive(Debug)]
pub struct AdminCall {
    pub request: AdminRequest,
    pub reply: oneshot::Sender<AdminResult>,
}

/// Bodies larger than this are refused (a root CA bundle is a few KiB).
const MAX_BODY: usize = 256 * 1024;
/// How long a TCP client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the admin listeners and serves them on the current tokio runtime.
pub async fn start(config: &Config, identity: &ServerIdentity, calls: mpsc::Sender<AdminCall>) -> anyhow::Result<()> {
    let routes = router(calls);
    let socket_path = config.admin_socket_path();
    let unix = bind_unix(&socket_path)?;
    info!(socket = %socket_path.display(), "admin API listening");
    let unix_routes = routes.clone();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(unix, unix_routes).await {
            warn!(error = %e, "admin API on the Unix socket stopped");
        }
    });
    if let (Some(address), Some(token_file)) = (config.admin.tcp, &config.admin.token_file) {
        let token = read_token(token_file)?;
        let tls = tls_acceptor(identity)?;
        let listener =
            TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} ([admin] tcp)"))?;
        info!(%address, "admin API listening over HTTPS (bearer token required)");
        let routes = routes.layer(middleware::from_fn_with_state(Arc::new(token), require_bearer));
        tokio::spawn(serve_https(listener, tls, routes));
    }
    Ok(())
}

fn router(calls: mpsc::Sender<AdminCall>) -> Router {
    Router::new()
        .route("/v1/health", get(|s: State<_>| ask(s, AdminRequest::Health)))
        .route("/v1/sessions", get(|s: State<_>| ask(s, AdminRequest::Sessions)))
        .route("/v1/sessions/{id}", delete(disconnect_session))
        .route("/v1/users/{name}/sessions", delete(disconnect_user))
        .route("/v1/roots", get(|s: State<_>| ask(s, AdminRequest::Roots)).post(add_root))
        .route("/v1/roots/{thumbprint}", delete(remove_root))
        .route("/v1/revocations", get(|s: State<_>| ask(s, AdminRequest::Revocations)))
        .route("/v1/revocations/{thumbprint}", post(revoke).delete(unrevoke))
        .route("/v1/reload", post(|s: State<_>| ask(s, AdminRequest::Reload)))
        .route("/metrics", get(|s: State<_>| ask(s, AdminRequest::Metrics)))
        .route("/v1/client-package", get(client_package))
        .fallback(|| async {
            error_response(AdminError::not_found("no such endpoint; see docs/admin-api.openapi.json"))
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(calls)
}

async fn ask(State(calls): State<mpsc::Sender<AdminCall>>, request: AdminRequest) -> Response {
    let (reply, answer) = oneshot::channel();
    if calls.send(AdminCall { request, reply }).await.is_err() {
        return error_response(AdminError { status: 503, message: "the gateway is shutting down".into() });
    }
    match answer.await {
        Ok(Ok(AdminReply::Json(value))) => axum::Json(value).into_response(),
        Ok(Ok(AdminReply::Zip(bytes))) => ([(header::CONTENT_TYPE, "application/zip")], bytes).into_response(),
        Ok(Ok(AdminReply::Metrics(text))) => {
            ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
                .into_response()
        }
        Ok(Err(e)) => error_response(e),
        Err(_) => error_response(AdminError { status: 503, message: "the gateway is shutting down".into() }),
    }
}

fn error_response(error: AdminError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(serde_json::json!({ "error": error.message }))).into_response()
}

fn thumbprint_of(text: &str) -> Result<Thumbprint, AdminError> {
    text.parse().map_err(|e| AdminError::bad_request(format!("{text:?} is not a thumbprint: {e}")))
}

async fn disconnect_session(calls: State<mpsc::Sender<AdminCall>>, UrlPath(id): UrlPath<String>) -> Response {
    match id.parse() {
        Ok(id) => ask(calls, AdminRequest::Disconnect(DisconnectTarget::Session(id))).await,
        Err(_) => error_response(AdminError::bad_request(format!("{id:?} is not a session id (a number)"))),
    }
}

async fn disconnect_user(calls: State<mpsc::Sender<AdminCall>>, UrlPath(name): UrlPath<String>) -> Response {
    ask(calls, AdminRequest::Disconnect(DisconnectTarget::User(name))).await
}

async fn add_root(calls: State<mpsc::Sender<AdminCall>>, body: Bytes) -> Response {
    match String::from_utf8(body.to_vec()) {
        Ok(pem) => ask(calls, AdminRequest::AddRoot(pem)).await,
        Err(_) => error_response(AdminError::bad_request("the body must be PEM text")),
    }
}

async fn remove_root(calls: State<mpsc::Sender<AdminCall>>, UrlPath(t): UrlPath<String>) -> Response {
    match thumbprint_of(&t) {
        Ok(t) => ask(calls, AdminRequest::RemoveRoot(t)).await,
        Err(e) => error_response(e),
    }
}

async fn revoke(calls: State<mpsc::Sender<AdminCall>>, UrlPath(t): UrlPath<String>) -> Response {
    match thumbprint_of(&t) {
        Ok(t) => ask(calls, AdminRequest::Revoke(t)).await,
        Err(e) => error_response(e),
    }
}

async fn unrevoke(calls: State<mpsc::Sender<AdminCall>>, UrlPath(t): UrlPath<String>) -> Response {
    match thumbprint_of(&t) {
        Ok(t) => ask(calls, AdminRequest::Unrevoke(t)).await,
        Err(e) => error_response(e),
    }
}

#[derive(serde::Deserialize)]
struct PackageQuery {
    name: Option<String>,
}

async fn client_package(calls: State<mpsc::Sender<AdminCall>>, query: Query<PackageQuery>) -> Response {
    ask(calls, AdminRequest::ClientPackage(query.0.name)).await
}

async fn require_bearer(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), token.as_bytes()).is_err() {
        let mut response =
            error_response(AdminError { status: 401, message: "a valid bearer token is required".into() });
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// Binds the socket with mode 0600. A stale socket from a previous run is replaced;
/// one that a running gateway answers on is not.
fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket; remove it or set [admin] socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use: is another p2sgw running with the same state directory?", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to root", path.display()))?;
    Ok(listener)
}

/// The bearer token: the file's first line, trimmed.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    const MIN_TOKEN_LEN: usize = 32;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < MIN_TOKEN_LEN {
        bail!(
            "{}: the admin token must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)",
            path.display()
        );
    }
    Ok(token)
}

fn tls_acceptor(identity: &ServerIdentity) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .context("the server certificate cannot be used for the admin listener")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve_https(listener: TcpListener, tls: tokio_rustls::TlsAcceptor, routes: Router) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "admin API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, routes) = (tls.clone(), routes.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return warn!(%peer, error = %e, "admin API: TLS handshake failed"),
                Err(_) => return warn!(%peer, "admin API: TLS handshake timed out"),
            };
            let service = TowerToHyperService::new(routes);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                warn!(%peer, error = %e, "admin API connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    const OPENAPI: &str = include_str!("../../docs/admin-api.openapi.json");

    /// A stand-in control plane that answers every call with `null`.
    fn answering_router() -> Router {
        let (calls, mut requests) = mpsc::channel::<AdminCall>(8);
        tokio::spawn(async move {
            while let Some(call) = requests.recv().await {
                let _ = call.reply.send(Ok(AdminReply::Json(serde_json::Value::Null)));
            }
        });
        router(calls)
    }

    async fn status(router: &Router, method: &str, uri: &str) -> u16 {
        let request = Request::builder().method(method).uri(uri).body(axum::body::Body::empty()).unwrap();
        router.clone().oneshot(request).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn every_documented_endpoint_is_served_and_nothing_else() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("the OpenAPI file is JSON");
        let router = answering_router();
        let mut documented = 0;
        for (path, operations) in doc["paths"].as_object().expect("paths") {
            let uri = path
                .replace("{id}", "7")
                .replace("{name}", "alice")
                .replace("{thumbprint}", "0123456789ABCDEF0123456789ABCDEF01234567");
            for method in operations.as_object().expect("operations").keys() {
                let got = status(&router, &method.to_uppercase(), &uri).await;
                // POST /v1/roots wants a PEM body; an empty one is a 400 from the handler.
                assert!(got == 200 || (got == 400 && uri == "/v1/roots"), "{method} {uri}: {got}");
                documented += 1;
            }
        }
        assert_eq!(documented, 13);
        assert_eq!(status(&router, "GET", "/v1/nothing").await, 404);
        assert_eq!(status(&router, "PUT", "/v1/sessions").await, 405);
        assert_eq!(status(&router, "DELETE", "/v1/sessions/not-a-number").await, 400);
        assert_eq!(status(&router, "POST", "/v1/revocations/xyz").await, 400);
    }
}
