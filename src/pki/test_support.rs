//! Helpers for tests that need a PKI on disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Config;

/// The gateway name test PKIs are made for.
pub(crate) const GATEWAY: &str = "vpn.example.com";

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("p2sgw-test-{label}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The default configuration, pointed at the PKI in `pki_dir`.
pub(crate) fn config_for(pki_dir: &Path) -> Config {
    let mut config = Config::default();
    config.gateway.name = Some(GATEWAY.to_string());
    config.pki.dir = Some(pki_dir.to_path_buf());
    config
}
