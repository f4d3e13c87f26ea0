//! Do the files a configuration names exist and can they be read? (Their contents are the
//! PKI loader's business.)

use std::fs::File;
use std::io::ErrorKind;
use std::path::PathBuf;

use super::{Config, Problem};

/// Keys to blame for a path derived from the PKI directory: the directory, or the state
/// directory it defaults to (then the [pki] section, then the whole file).
const PKI_DIR_KEYS: &[&str] = &["pki.dir", "gateway.state_dir"];

/// One file the gateway reads at start-up.
struct FileToCheck {
    what: &'static str,
    path: PathBuf,
    /// The keys that name this file, most specific first; empty when the path is a default
    /// under the PKI directory.
    keys: Vec<String>,
    /// An optional file is read only when it exists.
    optional: bool,
}

/// Every unreadable file `config` names.
pub(super) fn problems(config: &Config) -> Vec<Problem> {
    files_to_check(config).into_iter().filter_map(|file| check(&file)).collect()
}

fn files_to_check(config: &Config) -> Vec<FileToCheck> {
    let pki = &config.pki;
    let named_or_default = |what, key: &str, configured: &Option<PathBuf>, path: PathBuf| FileToCheck {
        what,
        path,
        keys: configured.iter().map(|_| key.to_string()).collect(),
        optional: false,
    };
    let mut files = vec![
        named_or_default("server certificate", "pki.server_cert", &pki.server_cert, config.server_cert_path()),
        named_or_default("server private key", "pki.server_key", &pki.server_key, config.server_key_path()),
    ];
    if config.openvpn.tls_crypt {
        files.push(named_or_default(
            "tls-crypt key",
            "pki.tls_crypt_key",
            &pki.tls_crypt_key,
            config.tls_crypt_key_path(),
        ));
    }
    if pki.trusted_roots.is_empty() {
        files.extend(config.trusted_root_paths().into_iter().map(|path| FileToCheck {
            what: "trusted root",
            path,
            keys: Vec::new(),
            optional: false,
        }));
    } else {
        files.extend(pki.trusted_roots.iter().enumerate().map(|(i, path)| FileToCheck {
            what: "trusted root",
            path: path.clone(),
            keys: vec![format!("pki.trusted_roots[{i}]"), "pki.trusted_roots".to_string()],
            optional: false,
        }));
    }
    files.extend(config.crl_paths().into_iter().map(|path| {
        let index = pki.crl_files.iter().position(|configured| *configured == path);
        FileToCheck {
            what: "CRL",
            path,
            keys: index.map_or_else(Vec::new, |i| vec![format!("pki.crl_files[{i}]"), "pki.crl_files".to_string()]),
            optional: index.is_none(),
        }
    }));
    files.push(FileToCheck {
        what: "revoked-thumbprints list",
        path: config.revoked_list_path(),
        keys: Vec::new(),
        optional: true,
    });
    let token = &config.token;
    if let Some(path) = &token.jwks_file {
        files.push(FileToCheck {
            what: "JWKS file",
            path: path.clone(),
            keys: vec!["token.jwks_file".to_string()],
            optional: false,
        });
    }
    if let Some(path) = &config.admin.token_file {
        files.push(FileToCheck {
            what: "admin token file",
            path: path.clone(),
            keys: vec!["admin.token_file".to_string()],
            optional: false,
        });
    }
    if let Some(path) = config.sstp.local_users_file.as_ref().filter(|_| config.sstp.enabled) {
        files.push(FileToCheck {
            what: "SSTP local users file",
            path: path.clone(),
            keys: vec!["sstp.local_users_file".to_string()],
            optional: false,
        });
    }
    files.extend(token.ca_files.iter().enumerate().map(|(i, path)| FileToCheck {
        what: "token CA file",
        path: path.clone(),
        keys: vec![format!("token.ca_files[{i}]"), "token.ca_files".to_string()],
        optional: false,
    }));
    files
}

fn check(file: &FileToCheck) -> Option<Problem> {
    let FileToCheck { what, path, .. } = file;
    let shown = path.display();
    let message = match std::fs::metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound && file.optional => return None,
        Err(e) if e.kind() == ErrorKind::NotFound && file.keys.is_empty() => format!(
            "{what} {shown} does not exist (a default path under the PKI directory): \
             run `p2sgw pki init` or point [pki] at your files"
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => format!("{what} {shown} does not exist"),
        Err(e) => format!("{what} {shown} cannot be read: {e}"),
        Ok(metadata) if !metadata.is_file() => format!("{what} {shown} is not a regular file"),
        Ok(_) => match File::open(path) {
            Ok(_) => return None,
            Err(e) => format!("{what} {shown} cannot be read: {e}"),
        },
    };
    Some(if file.keys.is_empty() {
        Problem::new(PKI_DIR_KEYS, message)
    } else {
        Problem { keys: file.keys.clone(), message }
    })
}
