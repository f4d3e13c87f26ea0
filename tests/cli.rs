//! The command line as an operator meets it: PKI verbs, profiles, and bad configs
//! refused with file, line and reason before anything starts.

mod common;

use std::process::{Command, Output};

use common::{P2SGW, TestDir, path};

fn run(args: &[&str]) -> Output {
    Command::new(P2SGW).args(args).output().expect("run p2sgw")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn pki_verbs_and_profiles() {
    let dir = TestDir::new();
    let pki = dir.path().join("pki");
    let init = run(&["pki", "init", "--dir", path(&pki), "--gateway", "vpn.example.com"]);
    assert!(init.status.success(), "{}", stderr(&init));
    let again = run(&["pki", "init", "--dir", path(&pki), "--gateway", "vpn.example.com"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already initialised"), "{}", stderr(&again));

    let issue = run(&["pki", "issue", "--dir", path(&pki), "--name", "alice", "--days", "30"]);
    assert!(issue.status.success(), "{}", stderr(&issue));
    let thumbprint = String::from_utf8_lossy(&issue.stdout).trim().to_string();
    assert_eq!(thumbprint.len(), 40, "SHA-1 thumbprint printed: {thumbprint:?}");
    assert!(thumbprint.chars().all(|c| c.is_ascii_hexdigit()));

    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!("[gateway]\nname = \"vpn.example.com\"\nstate_dir = \"{}\"\n", dir.path().display()),
    )
    .unwrap();
    let out = dir.path().join("alice.ovpn");
    let profile = run(&["profile", "--config", path(&config), "--name", "alice", "--out", path(&out)]);
    assert!(profile.status.success(), "{}", stderr(&profile));
    let text = std::fs::read_to_string(&out).unwrap();
    for needle in [
        "<connection>",
        "remote vpn.example.com 1194 udp",
        "remote vpn.example.com 443 tcp-client",
        "<tls-crypt>",
        "verify-x509-name vpn.example.com name",
    ] {
        assert!(text.contains(needle), "profile lacks {needle:?}");
    }
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600, "the profile holds a key");

    let revoke = run(&["pki", "revoke", "--dir", path(&pki), "--thumbprint", &thumbprint.to_lowercase()]);
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    assert!(String::from_utf8_lossy(&revoke.stdout).contains(&thumbprint));
    assert!(std::fs::read_to_string(pki.join("revoked.txt")).unwrap().contains(&thumbprint));
    let refused = run(&["profile", "--config", path(&config), "--name", "alice", "--out", path(&out)]);
    assert!(!refused.status.success(), "no profile for a revoked client");
    let unknown = run(&["profile", "--config", path(&config), "--name", "nobody", "--out", path(&out)]);
    assert!(!unknown.status.success());
}

#[test]
fn bad_configs_are_refused_with_file_line_and_reason() {
    let dir = TestDir::new();
    let cases = [
        ("[network]\npool = \"10.0.0.0/30\"\n", 2, "too small"),
        ("[network]\npool = \"10.8.0.0/24\"\nroutes = [\"10.8.0.0/16\"]\n", 3, "overlap"),
        ("[openvpn]\ndata_ciphers = [\"AES-256-GCM\", \"BF-CBC\"]\n", 2, "BF-CBC"),
        ("[listen]\nudp = [\"0.0.0.0:1194\"]\n\n[gatway]\nname = \"x\"\n", 4, "gatway"),
        ("[openvpn]\nkeepalive_interval_secs = 10\nkeepalive_timeout_secs = 15\n", 3, "keepalive"),
        ("[network\npool = 1\n", 1, ""),
    ];
    for (i, (text, line, reason)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        for verb in [&["check-config", path(&file)][..], &["serve", "--config", path(&file)][..]] {
            let out = run(verb);
            assert!(!out.status.success(), "{verb:?} accepted {text:?}");
            let err = stderr(&out);
            let prefix = format!("{}:{line}:", file.display());
            assert!(err.contains(&prefix), "{verb:?}: expected {prefix} in {err:?}");
            assert!(err.contains(reason), "{verb:?}: expected {reason:?} in {err:?}");
            assert!(!err.contains("gateway up"), "nothing started");
        }
    }
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let dir = TestDir::new();
    let pki = dir.path().join("pki");
    assert!(run(&["pki", "init", "--dir", path(&pki), "--gateway", "10.1.2.3"]).status.success());
    let file = dir.path().join("gw.toml");
    std::fs::write(
        &file,
        format!(
            "[gateway]\nname = \"10.1.2.3\"\nstate_dir = \"{}\"\n[network]\nroutes = [\"10.50.0.0/16\"]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = run(&["check-config", path(&file)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    for needle in ["pool = \"172.16.201.0/24\"", "routes = [\"10.50.0.0/16\"]", "tls_crypt = true", "[dataplane]"] {
        assert!(printed.contains(needle), "effective config lacks {needle:?}:\n{printed}");
    }
}

#[test]
fn the_systemd_unit_verifies() {
    // The unit names the installed binary; verify a copy that names the one just built.
    let dir = TestDir::new();
    let unit = include_str!("../systemd/p2sgw.service").replace("/usr/local/bin/p2sgw", P2SGW);
    let unit_path = dir.path().join("p2sgw.service");
    std::fs::write(&unit_path, unit).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", path(&unit_path)]).output().expect("run systemd-analyze");
    // Its only complaint may be the documentation file, absent before `make install`-style packaging.
    let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("/usr/share/doc/p2sgw"))
        .map(str::to_string)
        .collect();
    assert!(out.status.success() && complaints.is_empty(), "systemd-analyze verify: {complaints:?}");
}

#[test]
fn tune_check_reports_differences_with_their_reasons() {
    let out = run(&["tune", "--check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        assert!(text.starts_with("all ") && text.contains("are in force"), "{text}");
    } else {
        assert!(stderr(&out).contains("sysctl settings differ"), "{}", stderr(&out));
        assert!(text.contains("(profile: ") && text.contains("Apply: cp tuning/99-p2sgw.conf"), "{text}");
    }
}
