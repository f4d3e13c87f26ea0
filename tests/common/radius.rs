//! A FreeRADIUS 3.2 server (Debian's `freeradius` package) for the end-to-end tests: its own
//! configuration directory in the test's temp directory, `freeradius -X` inside a namespace, and
//! helpers to read back what it did (log, accounting detail file) and to query it with `radclient`.
//!
//! What the generated configuration does:
//! - PAP and MS-CHAP (v1 and v2, with MPPE keys) against each user's cleartext password, and
//!   EAP with `default_eap_type = mschapv2` (EAP-MSCHAPv2 directly, no TLS tunnel); with
//!   `RadiusOptions::eap_tls`, also EAP-TLS (TLS 1.2), which a client gets by answering the first
//!   EAP-MSCHAPv2 request with a Nak that asks for TLS. Any certificate chaining to the
//!   configured CA is accepted, whatever the EAP identity (no users-file entry needed).
//! - Users with a one-time code: a PAP request with the right password (and no State) gets an
//!   Access-Challenge carrying `Reply-Message = MFA_PROMPT` and a server-made State; the next
//!   request echoing that State with `User-Password = <code>` is accepted, a wrong code or an
//!   unknown/used State is rejected. The challenge is remembered in FreeRADIUS's `session-state`,
//!   so a State works once and only for the user it was issued to.
//! - Reply attributes (Framed-IP-Address, Session-Timeout, Class, Filter-Id, MS-Azure-Policy-ID
//!   and free-form extras) only in Access-Accept, never in a Challenge or Reject.
//! - Accounting-Requests are answered and appended to a detail file (`accounting_records`).
//! - Access-Requests without Message-Authenticator are dropped (per-client
//!   `require_message_authenticator`), which proves the gateway sends it; every Access-* reply
//!   carries one (`reply_message_authenticator`), so the gateway may require it in responses.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::netns::Netns;
use super::process::Proc;
use super::tools::wait_until;
use super::topology::VNET_SUBNET;

pub const RADIUS_AUTH_PORT: u16 = 1812;
pub const RADIUS_ACCT_PORT: u16 = 1813;
/// Secret of the default clients.
pub const DEFAULT_RADIUS_SECRET: &str = "p2sgw-radius-test-secret";
/// The Reply-Message of the Access-Challenge sent to users with a one-time code.
pub const MFA_PROMPT: &str = "Enter your one-time code";
/// Reply-Message of the Access-Reject for a wrong one-time code.
pub const MFA_WRONG_CODE: &str = "Wrong one-time code";
/// Reply-Message of the Access-Reject for a State the server did not issue (or already used).
pub const MFA_UNKNOWN_STATE: &str = "Unknown or expired challenge";
/// FreeRADIUS logs this once its sockets are open.
pub const RADIUS_READY_MARKER: &str = "Ready to process requests";
/// Microsoft's vendor id and the vendor type carried as `MS-Azure-Policy-ID` (not in FreeRADIUS's
/// dictionary.microsoft; the rig adds it to its local dictionary).
pub const MS_VENDOR_ID: u32 = 311;
pub const MS_AZURE_POLICY_ID_TYPE: u8 = 65;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// radclient: wait this long for a reply, once (no retransmission, so "no reply" is quick).
const RADCLIENT_TIMEOUT_SECS: u32 = 2;
/// Debian's FreeRADIUS module directory.
const FREERADIUS_LIBDIR: &str = "/usr/lib/freeradius";

/// A network allowed to send requests, and its shared secret.
#[derive(Clone, Debug)]
pub struct RadiusClient {
    /// An address or prefix, e.g. `10.50.0.1` or `127.0.0.0/8`.
    pub network: String,
    pub secret: String,
}

impl RadiusClient {
    pub fn new(network: &str, secret: &str) -> RadiusClient {
        RadiusClient { network: network.to_owned(), secret: secret.to_owned() }
    }
}

/// A user of the server. Build with `RadiusUser::new` and struct update syntax:
/// `RadiusUser { framed_ip: Some(addr), ..RadiusUser::new("bob", "hello") }`.
#[derive(Clone, Debug)]
pub struct RadiusUser {
    pub name: String,
    /// Cleartext, so PAP, MS-CHAPv1/v2 and EAP-MSCHAPv2 all work.
    pub password: String,
    /// With a code, PAP logins take two rounds (password, then this code after the challenge);
    /// other methods are rejected for this user.
    pub one_time_code: Option<String>,
    pub framed_ip: Option<Ipv4Addr>,
    pub session_timeout: Option<u32>,
    pub class: Option<Vec<u8>>,
    pub filter_id: Option<String>,
    /// Sent as Vendor-Specific 311/65 with these raw octets.
    pub ms_azure_policy_id: Option<Vec<u8>>,
    /// Further Access-Accept items in FreeRADIUS syntax, e.g. `Acct-Interim-Interval = 60`.
    pub extra_reply: Vec<String>,
}

impl RadiusUser {
    pub fn new(name: &str, password: &str) -> RadiusUser {
        RadiusUser {
            name: name.to_owned(),
            password: password.to_owned(),
            one_time_code: None,
            framed_ip: None,
            session_timeout: None,
            class: None,
            filter_id: None,
            ms_azure_policy_id: None,
            extra_reply: Vec::new(),
        }
    }

    /// The Access-Accept items of this user, one `Attribute = value` per entry.
    fn reply_items(&self) -> Vec<String> {
        let mut items = Vec::new();
        if let Some(address) = self.framed_ip {
            items.push(format!("Framed-IP-Address = {address}"));
        }
        if let Some(seconds) = self.session_timeout {
            items.push(format!("Session-Timeout = {seconds}"));
        }
        if let Some(class) = &self.class {
            items.push(format!("Class = {}", hex_octets(class)));
        }
        if let Some(filter) = &self.filter_id {
            items.push(format!("Filter-Id = {}", quoted(filter)));
        }
        if let Some(policy) = &self.ms_azure_policy_id {
            items.push(format!("MS-Azure-Policy-ID = {}", hex_octets(policy)));
        }
        items.extend(self.extra_reply.iter().cloned());
        items
    }
}

#[derive(Clone, Debug)]
pub struct RadiusOptions {
    /// Address to listen on: `*` (all), or one address such as `10.50.0.2`.
    pub listen_addr: String,
    pub auth_port: u16,
    pub acct_port: u16,
    pub clients: Vec<RadiusClient>,
    /// Drop Access-Requests that lack Message-Authenticator (FreeRADIUS logs "Insecure packet").
    pub require_message_authenticator: bool,
    /// Put Message-Authenticator into every Access-Accept, -Reject and -Challenge. FreeRADIUS
    /// 3.2.1 by itself adds it only to EAP replies; later versions (BlastRADIUS fixes) always do.
    pub reply_message_authenticator: bool,
    pub users: Vec<RadiusUser>,
    /// Offer EAP-TLS too (unset: EAP-MSCHAPv2 only).
    pub eap_tls: Option<RadiusEapTls>,
}

/// FreeRADIUS's side of EAP-TLS: its certificate and key (PEM), and the CA (PEM) client
/// certificates must chain to. A client without a certificate is refused.
#[derive(Clone, Debug)]
pub struct RadiusEapTls {
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_ca: PathBuf,
}

impl RadiusOptions {
    /// These options with EAP-TLS offered (see [`RadiusEapTls`]).
    pub fn with_eap_tls(self, server_cert: &Path, server_key: &Path, client_ca: &Path) -> RadiusOptions {
        let eap_tls = RadiusEapTls {
            server_cert: server_cert.to_path_buf(),
            server_key: server_key.to_path_buf(),
            client_ca: client_ca.to_path_buf(),
        };
        RadiusOptions { eap_tls: Some(eap_tls), ..self }
    }
}

impl Default for RadiusOptions {
    /// All addresses, ports 1812/1813, clients on loopback and on the vnet subnet (the gateway's
    /// `to-vnet` side) with `DEFAULT_RADIUS_SECRET`, Message-Authenticator required in requests
    /// and sent in replies, no users, no EAP-TLS.
    fn default() -> Self {
        RadiusOptions {
            listen_addr: "*".to_owned(),
            auth_port: RADIUS_AUTH_PORT,
            acct_port: RADIUS_ACCT_PORT,
            clients: vec![
                RadiusClient::new("127.0.0.0/8", DEFAULT_RADIUS_SECRET),
                RadiusClient::new(VNET_SUBNET, DEFAULT_RADIUS_SECRET),
            ],
            require_message_authenticator: true,
            reply_message_authenticator: true,
            users: Vec::new(),
            eap_tls: None,
        }
    }
}

/// Which kind of request `radclient` sends (and so which port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RadclientCommand {
    Auth,
    Acct,
    /// Status-Server to the auth port (needs Message-Authenticator in the attributes).
    Status,
}

impl RadclientCommand {
    fn as_str(self) -> &'static str {
        match self {
            RadclientCommand::Auth => "auth",
            RadclientCommand::Acct => "acct",
            RadclientCommand::Status => "status",
        }
    }
}

/// One response as `radclient -x` printed it.
#[derive(Clone, Debug, PartialEq)]
pub struct RadiusReply {
    /// E.g. `Access-Accept`, `Access-Challenge`, `Accounting-Response`.
    pub code: String,
    /// Attributes in packet order; string values unquoted, octets as `0x…`, integers by name
    /// where the dictionary has one.
    pub attributes: Vec<(String, String)>,
}

impl RadiusReply {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(attribute, _)| attribute == name).map(|(_, value)| value.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// One record of the accounting detail file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AccountingRecord {
    /// The detail file's header line (the time the server wrote the record).
    pub written_at: String,
    /// E.g. `Start`, `Stop`, `Interim-Update`, `Accounting-On`.
    pub status_type: String,
    pub user_name: Option<String>,
    pub session_id: Option<String>,
    pub framed_ip: Option<Ipv4Addr>,
    /// Acct-Input-Octets plus Acct-Input-Gigawords × 2^32 (octets from the user).
    pub input_octets: Option<u64>,
    pub output_octets: Option<u64>,
    pub input_packets: Option<u64>,
    pub output_packets: Option<u64>,
    pub session_time: Option<u32>,
    /// By name, e.g. `User-Request`, `Session-Timeout`, `Admin-Reset`.
    pub terminate_cause: Option<String>,
    /// Raw octets of Class.
    pub class: Option<Vec<u8>>,
    /// Where the request came from (the NAS's source address).
    pub packet_src_ip: Option<String>,
    /// Every attribute of the record, in order, values as in `RadiusReply::attributes`.
    pub attributes: Vec<(String, String)>,
}

impl AccountingRecord {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(attribute, _)| attribute == name).map(|(_, value)| value.as_str())
    }

    fn from_attributes(written_at: &str, attributes: Vec<(String, String)>) -> AccountingRecord {
        let mut record = AccountingRecord { written_at: written_at.to_owned(), ..AccountingRecord::default() };
        let number = |name: &str| record_number(&attributes, name);
        let counter = |low: &str, high: &str| match (number(low), number(high)) {
            (None, None) => None,
            (low, high) => Some((high.unwrap_or(0) << 32) + low.unwrap_or(0)),
        };
        record.input_octets = counter("Acct-Input-Octets", "Acct-Input-Gigawords");
        record.output_octets = counter("Acct-Output-Octets", "Acct-Output-Gigawords");
        record.input_packets = number("Acct-Input-Packets");
        record.output_packets = number("Acct-Output-Packets");
        record.session_time = number("Acct-Session-Time").map(|seconds| {
            u32::try_from(seconds).unwrap_or_else(|_| panic!("Acct-Session-Time {seconds} exceeds 32 bits"))
        });
        let text = |name: &str| attributes.iter().find(|(attribute, _)| attribute == name).map(|(_, v)| v.clone());
        record.status_type = text("Acct-Status-Type").unwrap_or_default();
        record.user_name = text("User-Name");
        record.session_id = text("Acct-Session-Id");
        record.framed_ip = text("Framed-IP-Address")
            .map(|address| address.parse().unwrap_or_else(|e| panic!("Framed-IP-Address {address:?}: {e}")));
        record.terminate_cause = text("Acct-Terminate-Cause");
        record.class = text("Class").map(|hex| parse_hex_octets(&hex));
        record.packet_src_ip = text("Packet-Src-IP-Address");
        record.attributes = attributes;
        record
    }
}

fn record_number(attributes: &[(String, String)], name: &str) -> Option<u64> {
    let (_, value) = attributes.iter().find(|(attribute, _)| attribute == name)?;
    Some(value.parse().unwrap_or_else(|e| panic!("{name} = {value:?} is not a number: {e}")))
}

/// A running `freeradius -X` with its generated configuration. Dropping it stops the server.
pub struct FreeRadius {
    // Declared first so the process stops before anything else goes.
    process: Proc,
    config_dir: PathBuf,
    detail_path: PathBuf,
    auth_port: u16,
    acct_port: u16,
}

impl FreeRadius {
    /// Writes the configuration to a fresh directory in `ns`'s test directory, starts
    /// `freeradius -X` inside `ns` and waits until it is ready. Panics (with the log tail, which
    /// names any configuration error) if it does not come up.
    pub fn start(ns: &Netns, opts: RadiusOptions) -> FreeRadius {
        assert!(!opts.clients.is_empty(), "a RADIUS server without clients answers nobody");
        let config_dir = fresh_dir(ns.dir().path(), &format!("radius-{}-{}", ns.role(), opts.auth_port));
        let detail_path = config_dir.join("radacct").join("detail");
        for sub in ["radacct", "log", "run"] {
            fs::create_dir_all(config_dir.join(sub)).unwrap_or_else(|e| panic!("create {sub} for FreeRADIUS: {e}"));
        }
        write_file(&config_dir.join("dictionary"), LOCAL_DICTIONARY);
        write_file(&config_dir.join("users"), &users_file(&opts.users));
        write_file(&config_dir.join("users.reply"), &reply_users_file(&opts.users));
        write_file(&config_dir.join("radiusd.conf"), &radiusd_conf(&config_dir, &detail_path, &opts));

        let config_dir_arg = config_dir.to_str().expect("test paths are UTF-8");
        let process = ns.spawn(&["freeradius", "-X", "-d", config_dir_arg], &format!("radius-{}", opts.auth_port));
        if let Err(e) = process.wait_for_log(RADIUS_READY_MARKER, STARTUP_TIMEOUT) {
            panic!("FreeRADIUS did not start: {e}");
        }
        FreeRadius { process, config_dir, detail_path, auth_port: opts.auth_port, acct_port: opts.acct_port }
    }

    pub fn auth_port(&self) -> u16 {
        self.auth_port
    }

    pub fn acct_port(&self) -> u16 {
        self.acct_port
    }

    /// The generated configuration (`radiusd.conf`, `users`, `users.reply`, `dictionary`).
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The accounting detail file (exists after the first Accounting-Request).
    pub fn detail_path(&self) -> &Path {
        &self.detail_path
    }

    pub fn process(&self) -> &Proc {
        &self.process
    }

    /// The full `-X` debug log, e.g. for "Sent Access-Accept" or "Login incorrect".
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// How many lines of the log contain `pattern`.
    pub fn count_in_log(&self, pattern: &str) -> usize {
        self.log_text().lines().filter(|line| line.contains(pattern)).count()
    }

    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> Result<(), String> {
        self.process.wait_for_log(pattern, timeout)
    }

    /// Stops the server (e.g. to test failover); its log and files stay readable.
    pub fn stop(&self) {
        self.process.kill();
    }

    /// Every complete record of the detail file so far, oldest first.
    pub fn accounting_records(&self) -> Vec<AccountingRecord> {
        match fs::read(&self.detail_path) {
            Ok(bytes) => parse_detail(&String::from_utf8_lossy(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("cannot read {}: {e}", self.detail_path.display()),
        }
    }

    /// Waits until a record satisfying `pred` has been written; returns the first such record.
    pub fn wait_for_accounting(
        &self,
        pred: impl Fn(&AccountingRecord) -> bool,
        timeout: Duration,
    ) -> Result<AccountingRecord, String> {
        let mut found = None;
        wait_until(timeout, Duration::from_millis(50), || {
            found = self.accounting_records().into_iter().find(|record| pred(record));
            found.is_some()
        });
        found.ok_or_else(|| {
            let seen: Vec<String> = self
                .accounting_records()
                .iter()
                .map(|r| format!("{} user={:?} session={:?}", r.status_type, r.user_name, r.session_id))
                .collect();
            format!("no matching accounting record within {timeout:?}; records so far: {seen:?}")
        })
    }

    /// Sends one request with `radclient` from namespace `from` to `server_ip` (this server's
    /// address as seen from there) on the port for `command`, with `attributes` in FreeRADIUS
    /// syntax (e.g. `User-Password = "hello"`, `Message-Authenticator = 0x00` to have radclient
    /// compute it). One try, 2 s timeout. `None` if no reply came (dropped or wrong secret).
    pub fn radclient(
        &self,
        from: &Netns,
        server_ip: &str,
        command: RadclientCommand,
        secret: &str,
        attributes: &[&str],
    ) -> Option<RadiusReply> {
        static REQUEST_SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let port = if command == RadclientCommand::Acct { self.acct_port } else { self.auth_port };
        let request_path =
            self.config_dir.join(format!("radclient-{}.txt", REQUEST_SEQUENCE.fetch_add(1, Ordering::Relaxed)));
        write_file(&request_path, &format!("{}\n", attributes.join("\n")));
        let output = from.exec(&[
            "radclient",
            "-x",
            "-r",
            "1",
            "-t",
            &RADCLIENT_TIMEOUT_SECS.to_string(),
            // Our local dictionary, so MS-Azure-Policy-ID prints by name.
            "-d",
            self.config_dir.to_str().expect("test paths are UTF-8"),
            "-f",
            request_path.to_str().expect("test paths are UTF-8"),
            &format!("{server_ip}:{port}"),
            command.as_str(),
            secret,
        ]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let reply = parse_radclient_output(&stdout);
        if reply.is_none() {
            assert!(
                stdout.contains("No reply from server"),
                "radclient neither got a reply nor timed out:\nstdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        reply
    }
}

/// Parses the reply block of `radclient -x` output: the `Received <code> Id …` line and the
/// tab-indented attributes after it. `None` if nothing was received.
pub fn parse_radclient_output(stdout: &str) -> Option<RadiusReply> {
    let mut lines = stdout.lines().skip_while(|line| !line.starts_with("Received "));
    let header = lines.next()?;
    let code = header.split_whitespace().nth(1).unwrap_or_else(|| panic!("radclient header {header:?}")).to_owned();
    let attributes = lines.take_while(|line| line.starts_with('\t')).map(parse_attribute_line).collect();
    Some(RadiusReply { code, attributes })
}

/// Parses a detail file: records of a header line (the time), tab-indented `Name = value` lines,
/// and a blank line. A record still being written (no blank line yet) is left out.
pub fn parse_detail(text: &str) -> Vec<AccountingRecord> {
    let mut records = Vec::new();
    let mut header: Option<&str> = None;
    let mut attributes = Vec::new();
    for line in text.split_inclusive('\n') {
        let Some(line) = line.strip_suffix('\n') else {
            break; // a partial last line: the record is incomplete
        };
        if line.is_empty() {
            if let Some(written_at) = header.take() {
                records.push(AccountingRecord::from_attributes(written_at, std::mem::take(&mut attributes)));
            }
        } else if line.starts_with('\t') {
            assert!(header.is_some(), "detail file attribute line {line:?} before any header");
            attributes.push(parse_attribute_line(line));
        } else {
            header = Some(line);
            attributes.clear();
        }
    }
    records
}

/// `\tName = value` → (Name, value with string quoting removed).
fn parse_attribute_line(line: &str) -> (String, String) {
    let (name, value) = line.trim().split_once(" = ").unwrap_or_else(|| panic!("attribute line {line:?}"));
    (name.to_owned(), unquote(value))
}

/// Removes FreeRADIUS's string quoting: `"a\"b\\c\001"` → `a"b\c` + U+0001. Unquoted values
/// (numbers, names, addresses, `0x…`) pass through.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_owned();
    };
    let mut bytes = Vec::with_capacity(inner.len());
    let mut rest = inner.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        rest = tail;
        if first != b'\\' {
            bytes.push(first);
            continue;
        }
        match rest {
            [a, b, c, tail @ ..] if [a, b, c].iter().all(|d| (b'0'..=b'7').contains(*d)) => {
                bytes.push((a - b'0') * 64 + (b - b'0') * 8 + (c - b'0'));
                rest = tail;
            }
            [escaped, tail @ ..] => {
                bytes.push(match escaped {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    other => *other,
                });
                rest = tail;
            }
            [] => bytes.push(b'\\'),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `0x0102ff` → [1, 2, 255].
pub fn parse_hex_octets(value: &str) -> Vec<u8> {
    let hex = value.strip_prefix("0x").unwrap_or_else(|| panic!("{value:?} is not 0x-prefixed octets"));
    assert!(hex.len().is_multiple_of(2), "odd number of hex digits in {value:?}");
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap_or_else(|e| panic!("{value:?}: {e}")))
        .collect()
}

fn hex_octets(bytes: &[u8]) -> String {
    assert!(!bytes.is_empty(), "FreeRADIUS cannot express empty octets");
    bytes.iter().fold(String::from("0x"), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// A double-quoted FreeRADIUS string.
fn quoted(text: &str) -> String {
    assert!(!text.contains(['\n', '\r']), "line breaks in RADIUS test strings are not supported: {text:?}");
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Creates `<parent>/<stem>` (or `<stem>-2`, ...) and returns it. Also used by the OIDC rig.
pub(super) fn fresh_dir(parent: &Path, stem: &str) -> PathBuf {
    for attempt in 1.. {
        let name = if attempt == 1 { stem.to_owned() } else { format!("{stem}-{attempt}") };
        let path = parent.join(name);
        match fs::create_dir(&path) {
            Ok(()) => return path,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", path.display()),
        }
    }
    unreachable!("the attempt counter is unbounded")
}

pub(super) fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Loaded after the main dictionaries (FreeRADIUS reads `<confdir>/dictionary`; so does
/// `radclient -d <confdir>`). 3000-3999 are server-internal attributes that never go on the wire.
const LOCAL_DICTIONARY: &str = "\
BEGIN-VENDOR\tMicrosoft
ATTRIBUTE\tMS-Azure-Policy-ID\t65\toctets
END-VENDOR\tMicrosoft

# A user's one-time code (a check item in the users file).
ATTRIBUTE\tP2-One-Time-Code\t3000\tstring
# Kept in session-state while a challenge is outstanding: whom it was issued to.
ATTRIBUTE\tP2-Challenged-User\t3001\tstring
";

/// The authorize-time file: check items only (password, one-time code).
fn users_file(users: &[RadiusUser]) -> String {
    let mut text = String::new();
    for user in users {
        let mut check = format!("Cleartext-Password := {}", quoted(&user.password));
        if let Some(code) = &user.one_time_code {
            let _ = write!(check, ", P2-One-Time-Code := {}", quoted(code));
        }
        let _ = writeln!(text, "{}\t{check}\n", quoted(&user.name));
    }
    text
}

/// The post-auth file (applied to Access-Accepts only): reply items.
fn reply_users_file(users: &[RadiusUser]) -> String {
    let mut text = String::new();
    for user in users {
        let items = user.reply_items();
        if !items.is_empty() {
            let _ = writeln!(text, "{}\n\t{}\n", quoted(&user.name), items.join(",\n\t"));
        }
    }
    text
}

/// The `tls-config` and `tls` sections inside `eap { }`. No session resumption (every test
/// client does a full handshake) and no DH file (ECDHE only).
fn eap_tls_conf(tls: &RadiusEapTls) -> String {
    format!(
        r#"		tls-config tls-common {{
			certificate_file = {cert}
			private_key_file = {key}
			ca_file = {ca}
			cipher_list = "DEFAULT"
			tls_min_version = "1.2"
			tls_max_version = "1.2"
			cache {{
				enable = no
			}}
		}}
		tls {{
			tls = tls-common
		}}
"#,
        cert = tls.server_cert.display(),
        key = tls.server_key.display(),
        ca = tls.client_ca.display(),
    )
}

fn radiusd_conf(config_dir: &Path, detail_path: &Path, opts: &RadiusOptions) -> String {
    let mut clients = String::new();
    for (index, client) in opts.clients.iter().enumerate() {
        let _ = write!(
            clients,
            "\tclient c{index} {{\n\t\tipaddr = {}\n\t\tsecret = {}\n\t\trequire_message_authenticator = {}\n\t}}\n",
            client.network,
            quoted(&client.secret),
            if opts.require_message_authenticator { "yes" } else { "no" },
        );
    }
    format!(
        r#"# Generated by the p2sgw test rig (tests/common/radius.rs).
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
confdir = {confdir}
raddbdir = ${{confdir}}
logdir = ${{confdir}}/log
radacctdir = ${{confdir}}/radacct
run_dir = ${{confdir}}/run
db_dir = ${{confdir}}
libdir = {FREERADIUS_LIBDIR}
name = freeradius
pidfile = ${{run_dir}}/${{name}}.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 16384
hostname_lookups = no
proxy_requests = no

log {{
	destination = stdout
	auth = yes
	auth_badpass = yes
	auth_goodpass = yes
}}

security {{
	allow_core_dumps = no
	max_attributes = 200
	# Answer rejects at once; the default 1 s delay only slows tests down.
	reject_delay = 0
	status_server = yes
}}

thread pool {{
	start_servers = 1
	max_servers = 4
	min_spare_servers = 1
	max_spare_servers = 4
}}

modules {{
	always ok {{
		rcode = ok
	}}
	always reject {{
		rcode = reject
	}}
	always handled {{
		rcode = handled
	}}
	pap {{
		normalise = yes
	}}
	mschap {{
		use_mppe = yes
		require_encryption = no
		require_strong = no
		with_ntdomain_hack = yes
	}}
	eap {{
		default_eap_type = mschapv2
		timer_expire = 60
		ignore_unknown_eap_types = no
		max_sessions = ${{max_requests}}
		mschapv2 {{
			send_error = no
		}}
{eap_tls}	}}
	files {{
		filename = ${{confdir}}/users
		postauth_usersfile = ${{confdir}}/users.reply
	}}
	detail {{
		filename = {detail}
		escape_filenames = no
		permissions = 0600
		header = "%t"
		# Adds Packet-Type and Packet-Src/Dst-IP-Address/-Port to every record.
		log_packet_header = yes
	}}
}}

instantiate {{
}}

policy {{
}}

server p2test {{
	listen {{
		type = auth
		ipaddr = {listen}
		port = {auth_port}
	}}
	listen {{
		type = acct
		ipaddr = {listen}
		port = {acct_port}
	}}
{clients}
	authorize {{
		files
		if (&control:P2-One-Time-Code) {{
			if (!&User-Password) {{
				update reply {{
					Reply-Message := "One-time codes need PAP"
				}}
				reject
			}}
			elsif (&session-state:P2-Challenged-User) {{
				# Second round: the State was ours (FreeRADIUS restored its session-state).
				if ((&session-state:P2-Challenged-User == &User-Name) && (&User-Password == &control:P2-One-Time-Code)) {{
					update control {{
						Auth-Type := Accept
					}}
					ok
				}}
				else {{
					update reply {{
						Reply-Message := "{wrong_code}"
					}}
					reject
				}}
			}}
			elsif (&State) {{
				update reply {{
					Reply-Message := "{unknown_state}"
				}}
				reject
			}}
			elsif (&User-Password == &control:Cleartext-Password) {{
				# First round: right password, ask for the code. FreeRADIUS adds the State.
				update session-state {{
					P2-Challenged-User := &User-Name
				}}
				update reply {{
					Reply-Message := "{prompt}"
				}}
{sign_reply}
				update control {{
					Response-Packet-Type := Access-Challenge
				}}
				handled
			}}
			else {{
				reject
			}}
		}}
		else {{
			mschap
			eap {{
				ok = return
			}}
			pap
		}}
	}}

	authenticate {{
		Auth-Type PAP {{
			pap
		}}
		Auth-Type MS-CHAP {{
			mschap
		}}
		eap
	}}

	preacct {{
	}}

	accounting {{
		detail
		ok
	}}

	post-auth {{
		# Runs for Access-Accept only: the users' reply items.
		files
{sign_reply}
		Post-Auth-Type Reject {{
{sign_reply}
			ok
		}}
	}}
}}
"#,
        confdir = config_dir.display(),
        eap_tls = opts.eap_tls.as_ref().map(eap_tls_conf).unwrap_or_default(),
        detail = detail_path.display(),
        listen = opts.listen_addr,
        auth_port = opts.auth_port,
        acct_port = opts.acct_port,
        wrong_code = MFA_WRONG_CODE,
        unknown_state = MFA_UNKNOWN_STATE,
        prompt = MFA_PROMPT,
        // The encoder computes the real HMAC-MD5 in place of this placeholder.
        sign_reply = if opts.reply_message_authenticator {
            "\t\tupdate reply {\n\t\t\tMessage-Authenticator := 0x00\n\t\t}"
        } else {
            ""
        },
    )
}
