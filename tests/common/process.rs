//! Child processes: one-shot commands with a timeout, and long-running processes (`Proc`)
//! whose stdout and stderr go to a log file in the test's directory.

use std::fs::{self, File};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::netns::TestDir;

/// How long `Proc::kill` waits after SIGTERM before sending SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for the kernel to reap a process after SIGKILL.
const KILL_REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often log files are polled.
const LOG_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of log shown in error messages.
const ERROR_TAIL_LINES: usize = 30;

/// Runs `cmd` to completion with stdin closed, killing it after `timeout`.
///
/// Output is captured through scratch files rather than pipes: a pipe that nobody drains
/// blocks a chatty child, and a daemonised grandchild holding a pipe open would block the reader.
/// Errors (start failure, timeout) carry the command line and whatever output there was.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    static SCRATCH_SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let scratch = std::env::temp_dir().join(format!(
        "p2sgw-cmd-{}-{}",
        std::process::id(),
        SCRATCH_SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let stdout_path = scratch.with_extension("out");
    let stderr_path = scratch.with_extension("err");
    let described = format!("{cmd:?}");

    let outcome = (|| {
        let stdout_file =
            File::create(&stdout_path).map_err(|e| format!("cannot create {}: {e}", stdout_path.display()))?;
        let stderr_file =
            File::create(&stderr_path).map_err(|e| format!("cannot create {}: {e}", stderr_path.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(stdout_file)
            .stderr(stderr_file)
            .spawn()
            .map_err(|e| format!("cannot start {described}: {e}"))?;
        match wait_for_exit(&mut child, timeout) {
            Some(status) => Ok(status),
            None => {
                // Child::kill never signals an already reaped PID, so this cannot hit a stranger.
                let _ = child.kill();
                let _ = wait_for_exit(&mut child, KILL_REAP_TIMEOUT);
                Err(format!("{described} did not finish within {timeout:?}"))
            }
        }
    })();

    let stdout = fs::read(&stdout_path).unwrap_or_default();
    let stderr = fs::read(&stderr_path).unwrap_or_default();
    let _ = fs::remove_file(&stdout_path);
    let _ = fs::remove_file(&stderr_path);
    match outcome {
        Ok(status) => Ok(Output { status, stdout, stderr }),
        Err(message) => Err(format!(
            "{message}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout).trim_end(),
            String::from_utf8_lossy(&stderr).trim_end()
        )),
    }
}

/// Polls `child` until it exits (reaping it) or `timeout` passes.
fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    // Start with a short poll: most commands (ip, sysctl) finish within a few milliseconds.
    let mut poll = Duration::from_millis(1);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(poll.min(deadline - now));
        poll = (poll * 2).min(Duration::from_millis(50));
    }
}

/// Last `lines` lines of `text`.
pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A long-running child process whose stdout and stderr go to a log file.
///
/// Dropping it terminates the process (SIGTERM, then SIGKILL after a grace period) and reaps it.
/// The process is never reaped behind the guard's back, so its PID cannot be reused while the
/// guard exists and signals always reach the right process.
pub struct Proc {
    label: String,
    pid: u32,
    child: Mutex<Child>,
    log_path: PathBuf,
    // Keeps the log directory alive (and its logs dumped on panic) for as long as the process.
    _dir: Arc<TestDir>,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout+stderr appended to `log_path`; panics if it cannot start.
    pub(super) fn start(mut cmd: Command, label: String, log_path: PathBuf, dir: Arc<TestDir>) -> Proc {
        let log =
            File::create(&log_path).unwrap_or_else(|e| panic!("cannot create log file {}: {e}", log_path.display()));
        let log_for_stderr =
            log.try_clone().unwrap_or_else(|e| panic!("cannot duplicate log file handle {}: {e}", log_path.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}): {e}"));
        Proc { label, pid: child.id(), child: Mutex::new(child), log_path, _dir: dir }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Short name used in messages, e.g. `gw/p2sgw`.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process has written so far.
    pub fn log_text(&self) -> String {
        fs::read(&self.log_path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_text(), lines)
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        self.lock_child().try_wait().ok().flatten()
    }

    pub fn is_running(&self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) unless the process has already exited.
    pub fn signal(&self, signal: i32) {
        let mut child = self.lock_child();
        // Only an unreaped child's PID is guaranteed to still be ours.
        if let Ok(None) = child.try_wait() {
            send_signal(self.pid, signal);
        }
    }

    /// Waits until the process exits by itself.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus, String> {
        wait_for_exit(&mut self.lock_child(), timeout).ok_or_else(|| {
            format!(
                "{} (pid {}) still running after {timeout:?}; log tail:\n{}",
                self.label,
                self.pid,
                self.log_tail(ERROR_TAIL_LINES)
            )
        })
    }

    /// Stops the process: SIGTERM, then SIGKILL if it is still alive after a grace period.
    /// Returns its exit status (`None` only if even SIGKILL did not end it in time).
    pub fn kill(&self) -> Option<ExitStatus> {
        let mut child = self.lock_child();
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        send_signal(self.pid, libc::SIGTERM);
        if let Some(status) = wait_for_exit(&mut child, TERMINATE_GRACE) {
            return Some(status);
        }
        let _ = child.kill();
        wait_for_exit(&mut child, KILL_REAP_TIMEOUT)
    }

    /// Waits until the log contains `pattern`. Fails early if the process exits without
    /// logging it; the error includes the log tail.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> Result<(), String> {
        self.wait_for_log_with(timeout, &format!("{pattern:?}"), |text| text.contains(pattern).then_some(Ok(())))
    }

    /// Polls the log until `check` returns a verdict: `Some(Ok(()))` (done) or `Some(Err(reason))`
    /// (give up now). Fails if the process exits or `timeout` passes first. `awaited` describes
    /// what is awaited, for the error message.
    pub fn wait_for_log_with(
        &self,
        timeout: Duration,
        awaited: &str,
        mut check: impl FnMut(&str) -> Option<Result<(), String>>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read the log after checking for exit, so the last lines of an exited process are seen.
            let exit_status = self.try_exit_status();
            let text = self.log_text();
            let failure = match check(&text) {
                Some(Ok(())) => return Ok(()),
                Some(Err(reason)) => reason,
                None => match exit_status {
                    Some(status) => format!("exited ({}) before logging {awaited}", describe_status(status)),
                    None if Instant::now() >= deadline => {
                        format!("did not log {awaited} within {timeout:?}")
                    }
                    None => {
                        std::thread::sleep(LOG_POLL_INTERVAL);
                        continue;
                    }
                },
            };
            return Err(format!(
                "{} (pid {}) {failure}; log {} ends with:\n{}",
                self.label,
                self.pid,
                self.log_path.display(),
                tail(&text, ERROR_TAIL_LINES)
            ));
        }
    }

    fn lock_child(&self) -> MutexGuard<'_, Child> {
        // A panic while holding the lock leaves the Child itself intact.
        self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.kill().is_none() {
            eprintln!("warning: {} (pid {}) survived SIGKILL", self.label, self.pid);
        }
    }
}

fn send_signal(pid: u32, signal: i32) {
    let pid = libc::pid_t::try_from(pid).expect("Linux PIDs fit in pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// "exit code 3" or "killed by signal 9".
pub(super) fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("{status}"),
    }
}
