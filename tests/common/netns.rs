//! Network namespaces with unique names, the per-test log directory, and the sweep that removes
//! leftovers of crashed earlier runs.
//!
//! Naming: every `TestDir` gets a prefix `p2-<creator pid>-<sequence>` (both base 36), and its
//! namespaces are called `<prefix>-<role>`, e.g. `p2-2ht8g-3-gw`. The PID keeps concurrently
//! running test processes apart, the sequence number keeps tests within one process apart, and the
//! sweep uses the PID to tell whether the creator is still alive. Interfaces are created directly
//! inside their namespace, so their names only need to be unique per namespace.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use super::process::{Proc, run_with_timeout, tail};
use super::tools::wait_until;

/// Prefix shared by all namespaces (and log directories) of this harness.
const NAME_PREFIX: &str = "p2";
/// Where `ip netns` keeps its named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";
/// Default timeout for one command run inside a namespace.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of each log printed when a test panics.
const PANIC_DUMP_LINES: usize = 60;
/// Set to keep the log directory also when the test passes.
const KEEP_LOGS_ENV: &str = "P2SGW_KEEP_TEST_LOGS";

/// Prefix for names created by process `pid` as its `sequence`-th test directory.
pub fn harness_prefix_for(pid: u32, sequence: u64) -> String {
    format!("{NAME_PREFIX}-{}-{}", base36(u64::from(pid)), base36(sequence))
}

fn base36(mut value: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut reversed = Vec::new();
    loop {
        reversed.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    reversed.reverse();
    String::from_utf8(reversed).expect("base-36 digits are ASCII")
}

/// The creator PID encoded in a namespace name of this harness, `None` for foreign names.
fn creator_pid(namespace: &str) -> Option<u32> {
    let mut parts = namespace.splitn(4, '-');
    if parts.next()? != NAME_PREFIX {
        return None;
    }
    let pid = u32::from_str_radix(parts.next()?, 36).ok()?;
    u64::from_str_radix(parts.next()?, 36).ok()?;
    let role = parts.next()?;
    (!role.is_empty()).then_some(pid)
}

fn next_prefix() -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    harness_prefix_for(std::process::id(), SEQUENCE.fetch_add(1, Ordering::Relaxed))
}

/// Removes namespaces left behind by crashed earlier runs of this harness: those whose creating
/// process no longer exists. Returns the names removed. Runs automatically (once per process)
/// before the first namespace is created.
///
/// A crashed run whose PID has since been reused by a live process keeps its namespaces until
/// that process is gone too; that is harmless since names never collide with live runs.
pub fn sweep_leftovers() -> Vec<String> {
    sweep(false)
}

fn sweep_once() {
    static SWEEP: Once = Once::new();
    // Before this process creates anything, namespaces carrying its own PID can only come from a
    // crashed run that had the same PID, so they go too.
    SWEEP.call_once(|| {
        sweep(true);
    });
}

fn sweep(include_own_pid: bool) -> Vec<String> {
    let own_pid = std::process::id();
    let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = creator_pid(&name) else {
            continue;
        };
        let is_leftover = if pid == own_pid { include_own_pid } else { !Path::new(&format!("/proc/{pid}")).exists() };
        if !is_leftover {
            continue;
        }
        match remove_namespace(&name) {
            Ok(()) => {
                eprintln!("harness: removed leftover namespace {name} (creator pid {pid} is gone)");
                removed.push(name);
            }
            Err(e) => eprintln!("warning: cannot remove leftover namespace {name}: {e}"),
        }
    }
    removed
}

/// Kills every process inside the namespace, then deletes it. Never panics (used from Drop).
fn remove_namespace(name: &str) -> Result<(), String> {
    // Deleting a namespace does not end the processes in it; the kernel knows which ones are inside.
    let list_pids = || -> Vec<i32> {
        run_with_timeout(Command::new("ip").args(["netns", "pids", name]), EXEC_TIMEOUT)
            .map(|output| {
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .filter_map(|line| line.trim().parse::<i32>().ok())
                    .filter(|&pid| pid > 1 && pid != std::process::id() as i32)
                    .collect()
            })
            .unwrap_or_default()
    };
    for pid in list_pids() {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    if !wait_until(Duration::from_secs(5), Duration::from_millis(20), || list_pids().is_empty()) {
        eprintln!("warning: processes {:?} still inside namespace {name} after SIGKILL", list_pids());
    }
    let output = run_with_timeout(Command::new("ip").args(["netns", "del", name]), EXEC_TIMEOUT)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip netns del {name}: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// The per-test temporary directory holding process logs and any files the test writes
/// (profiles, configs, keys).
///
/// When the last owner drops it while a panic unwinds, the tail of every `*.log` file is printed
/// to stderr (cargo shows it under the failed test) and the directory is kept; otherwise it is
/// removed, unless `P2SGW_KEEP_TEST_LOGS` is set.
pub struct TestDir {
    prefix: String,
    path: PathBuf,
}

impl TestDir {
    pub fn new() -> Arc<TestDir> {
        let prefix = next_prefix();
        let path = std::env::temp_dir().join(format!("p2sgw-e2e-{prefix}"));
        // A directory of the same name can only be a kept one from a run with the same PID.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create test directory {}: {e}", path.display()));
        Arc::new(TestDir { prefix, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unique prefix of the names created for this test, e.g. `p2-2ht8g-3`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates a new, uniquely named log file `<stem>.log` (or `<stem>-2.log`, ...).
    fn new_log_path(&self, stem: &str) -> PathBuf {
        for attempt in 1.. {
            let file_name = if attempt == 1 { format!("{stem}.log") } else { format!("{stem}-{attempt}.log") };
            let path = self.path.join(file_name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => return path,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create log file {}: {e}", path.display()),
            }
        }
        unreachable!("the attempt counter is unbounded")
    }

    fn dump_logs(&self) {
        let mut logs: Vec<PathBuf> = fs::read_dir(&self.path)
            .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
            .unwrap_or_default();
        logs.retain(|path| path.extension().is_some_and(|ext| ext == "log"));
        logs.sort();
        for log in logs {
            let text = fs::read(&log).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default();
            eprintln!(
                "===== {} (last {PANIC_DUMP_LINES} lines) =====\n{}",
                log.display(),
                tail(&text, PANIC_DUMP_LINES)
            );
        }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            eprintln!("===== test logs kept in {} =====", self.path.display());
        } else if std::env::var_os(KEEP_LOGS_ENV).is_some() {
            eprintln!("test logs kept in {} ({KEEP_LOGS_ENV} is set)", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A named network namespace (`ip netns add`) with its loopback up. Dropping it kills every
/// process inside and deletes it; its interfaces (veth ends, tun devices) vanish with it.
pub struct Netns {
    name: String,
    role: String,
    dir: Arc<TestDir>,
}

impl Netns {
    /// A standalone namespace with its own log directory. `role` is a short lowercase
    /// alphanumeric tag such as `gw` or `c0`.
    pub fn new(role: &str) -> Netns {
        Netns::in_dir(&TestDir::new(), role)
    }

    /// A namespace whose process logs go to `dir`, named `<dir prefix>-<role>`.
    pub fn in_dir(dir: &Arc<TestDir>, role: &str) -> Netns {
        assert!(
            !role.is_empty() && role.len() <= 8 && role.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "namespace role {role:?} must be 1-8 lowercase letters or digits"
        );
        sweep_once();
        let name = format!("{}-{role}", dir.prefix());
        {
            // Concurrent first-time `ip netns add` calls race on setting up the /run/netns mount.
            static NETNS_ADD: Mutex<()> = Mutex::new(());
            let _serialised = NETNS_ADD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let output = run_with_timeout(Command::new("ip").args(["netns", "add", &name]), EXEC_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                output.status.success(),
                "ip netns add {name} failed (are we root?): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        // From here on the guard owns the namespace, so a failure below still deletes it.
        let netns = Netns { name, role: role.to_owned(), dir: Arc::clone(dir) };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The name for `ip netns exec` / `ip -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    /// The test directory this namespace logs into.
    pub fn dir(&self) -> &Arc<TestDir> {
        &self.dir
    }

    /// Runs `args` inside the namespace and returns its output whatever the exit status.
    /// Panics if the command cannot start or runs longer than 60 s.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_with_timeout(args, EXEC_TIMEOUT).unwrap_or_else(|e| panic!("in namespace {}: {e}", self.name))
    }

    /// Like `exec`, with a custom timeout and the failure returned instead of panicking.
    pub fn exec_with_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        assert!(!args.is_empty(), "exec needs a program to run");
        run_with_timeout(&mut self.exec_command(args), timeout)
    }

    /// Runs `args` inside the namespace; panics unless it exits 0. Returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let output = self.exec(args);
        expect_success(&self.name, args, output)
    }

    /// Runs `ip -n <namespace> <args>`; panics unless it exits 0. Returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let output = run_with_timeout(Command::new("ip").args(["-n", &self.name]).args(args), EXEC_TIMEOUT)
            .unwrap_or_else(|e| panic!("in namespace {}: {e}", self.name));
        expect_success(&self.name, &[&["ip"], args].concat(), output)
    }

    /// Sets a sysctl of this namespace (e.g. `net.ipv4.ip_forward`); panics on failure.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Whether a network interface called `ifname` exists in this namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        run_with_timeout(Command::new("ip").args(["-n", &self.name, "link", "show", "dev", ifname]), EXEC_TIMEOUT)
            .is_ok_and(|output| output.status.success())
    }

    /// Starts `args` inside the namespace as a long-running process logging to
    /// `<role>-<log_name>.log` in the test directory. `ip netns exec` execs the program, so
    /// the returned PID is the program's own.
    pub fn spawn(&self, args: &[&str], log_name: &str) -> Proc {
        assert!(!args.is_empty(), "spawn needs a program to run");
        let log_path = self.dir.new_log_path(&format!("{}-{log_name}", self.role));
        let label = format!("{}/{log_name}", self.role);
        Proc::start(self.exec_command(args), label, log_path, Arc::clone(&self.dir))
    }

    fn exec_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = remove_namespace(&self.name) {
            eprintln!("warning: cannot remove namespace {}: {e}", self.name);
        }
    }
}

fn expect_success(namespace: &str, args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "in namespace {namespace}: `{}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
