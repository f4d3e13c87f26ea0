//! Reading PEM/DER material and writing PKI files atomically.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::Thumbprint;

/// Permissions for private keys.
pub(crate) const SECRET_FILE_MODE: u32 = 0o600;
/// Permissions for certificates, CRLs, lists and the index.
pub(crate) const PUBLIC_FILE_MODE: u32 = 0o644;
/// Permissions for directories that hold private keys.
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;

/// Replaces `path` with `contents` so that a reader (or a crash) sees either the old
/// file or the new one, never a partial write: temp file in the same directory, fsync,
/// rename, fsync of the directory.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| anyhow!("{}: not a file path", path.display()))?.to_string_lossy();
    let temp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    // A stale temp file from a crashed run may carry other permissions; `mode` only
    // applies to a newly created file.
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", temp.display())),
    }
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temp);
        anyhow!("writing {}: {e}", path.display())
    })
}

/// Creates `dir` (and missing parents) with mode 0700. An existing directory is left
/// as it is.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .with_context(|| format!("creating directory {}", dir.display()))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// All certificates of a PEM file, in file order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no \"BEGIN CERTIFICATE\" block found", path.display());
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => anyhow!("{}: no unencrypted private key found", path.display()),
        e => anyhow!("{}: bad PEM: {e}", path.display()),
    })
}

/// The CRLs of a file: a PEM file may hold several `X509 CRL` blocks, a DER file holds one.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let bytes = read_file(path)?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: bad PEM: {e}", path.display()))?;
    if crls.is_empty() {
        bail!("{}: no \"BEGIN X509 CRL\" block found", path.display());
    }
    Ok(crls)
}

/// Thumbprints listed in a revoked-list file (one per line, `#` starts a comment).
/// A missing file is an empty list.
pub fn load_revoked_list(path: &Path) -> Result<Vec<Thumbprint>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut thumbprints = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let value = line.split('#').next().unwrap_or("").trim();
        if value.is_empty() {
            continue;
        }
        let thumbprint = value.parse().map_err(|e| anyhow!("{}:{}: {value:?}: {e}", path.display(), index + 1))?;
        thumbprints.push(thumbprint);
    }
    Ok(thumbprints)
}

/// A DER certificate as a PEM block.
pub fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        text.push('\n');
    }
    text.push_str("-----END CERTIFICATE-----\n");
    text
}
