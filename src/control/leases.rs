//! Sticky addresses: the tunnel address each client had last, offered to it again when
//! free, kept across restarts in `<state_dir>/leases.json` (written atomically).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::pki::write_atomically;

#[derive(Default, Serialize, Deserialize)]
struct LeaseFile {
    /// Client key (`cert:<thumbprint>` or `user:<method>:<name>`) → address.
    leases: BTreeMap<String, Ipv4Addr>,
}

pub struct Leases {
    path: PathBuf,
    file: LeaseFile,
    dirty: bool,
}

impl Leases {
    /// Reads the leases of an earlier run. A missing file is an empty list; a damaged
    /// one is logged and ignored (it only costs clients their previous address).
    pub fn load(state_dir: &Path) -> Leases {
        let path = state_dir.join("leases.json");
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(file = %path.display(), error = %e, "address leases unreadable; starting without them");
                LeaseFile::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LeaseFile::default(),
            Err(e) => {
                warn!(file = %path.display(), error = %e, "address leases unreadable; starting without them");
                LeaseFile::default()
            }
        };
        Leases { path, file, dirty: false }
    }

    pub fn get(&self, client: &str) -> Option<Ipv4Addr> {
        self.file.leases.get(client).copied()
    }

    pub fn set(&mut self, client: String, address: Ipv4Addr) {
        if self.file.leases.insert(client, address) != Some(address) {
            self.dirty = true;
        }
    }

    /// Writes the leases if they changed since the last write.
    pub fn save_if_changed(&mut self) {
        if !self.dirty {
            return;
        }
        let json = serde_json::to_vec_pretty(&self.file).expect("leases serialize");
        match write_atomically(&self.path, &json, 0o600) {
            Ok(()) => self.dirty = false,
            Err(e) => warn!(error = %format!("{e:#}"), "cannot save the address leases; retrying"),
        }
    }
}

/// The lease key of a client: its certificate when it has one, else its user name.
pub fn client_key(thumbprint: Option<&str>, method: &str, user: &str) -> String {
    match thumbprint {
        Some(t) => format!("cert:{t}"),
        None => format!("user:{method}:{user}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_survive_a_restart_and_a_damaged_file_is_ignored() {
        let dir = std::env::temp_dir().join(format!("p2sgw-leases-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut leases = Leases::load(&dir);
        assert_eq!(leases.get("cert:AB"), None);
        leases.set(client_key(Some("AB"), "certificate", "alice"), Ipv4Addr::new(10, 8, 0, 7));
        leases.set(client_key(None, "radius", "bob"), Ipv4Addr::new(10, 8, 0, 9));
        leases.save_if_changed();
        let again = Leases::load(&dir);
        assert_eq!(again.get("cert:AB"), Some(Ipv4Addr::new(10, 8, 0, 7)));
        assert_eq!(again.get("user:radius:bob"), Some(Ipv4Addr::new(10, 8, 0, 9)));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(dir.join("leases.json")).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(dir.join("leases.json"), b"{not json").unwrap();
        assert_eq!(Leases::load(&dir).get("cert:AB"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
