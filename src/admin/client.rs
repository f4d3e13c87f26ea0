//! The command line's side of the admin API: one HTTP/1.1 request over the Unix socket.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    pub fn new(socket: &Path) -> Self {
        AdminClient { socket: socket.to_path_buf() }
    }

    /// Sends `method path` with `body`; the answer's body when the status is 2xx, the
    /// gateway's reason otherwise.
    pub fn call(&self, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(self.call_async(method, path, body))
    }

    /// Like [`Self::call`], parsing the answer as JSON.
    pub fn call_json(&self, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<serde_json::Value> {
        let body = self.call(method, path, body)?;
        serde_json::from_slice(&body).context("the gateway's answer is not JSON")
    }

    async fn call_async(&self, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.with_context(|| {
            format!(
                "cannot reach the gateway's admin socket {} (is `p2sgw serve` running, and are you root?)",
                self.socket.display()
            )
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "p2sgw")
            .body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await.context("the admin request failed")?;
        let status = response.status();
        let body = response.into_body().collect().await.context("reading the gateway's answer")?.to_bytes().to_vec();
        if !status.is_success() {
            let reason = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("{reason} ({status})");
        }
        Ok(body)
    }
}
