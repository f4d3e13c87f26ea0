//! From TOML text to a `Config`, with every error located: syntax, unknown keys, types.
//! Also records where each key was written ([`Provenance`]) for the later passes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::{Config, ConfigError, Location};
use crate::crypto::AeadAlgorithm;

/// Every section and its keys, in the order the reference documents them. Kept equal to the
/// serde schema by a test (`schema_table_matches_serde`).
pub(super) const SCHEMA: &[(&str, &[&str])] = &[
    ("gateway", &["name", "state_dir"]),
    ("listen", &["udp", "tcp"]),
    ("network", &["pool", "routes", "full_tunnel", "dns_servers", "dns_search", "group_pools"]),
    (
        "pki",
        &["dir", "server_cert", "server_key", "trusted_roots", "crl_files", "revoked_thumbprints", "tls_crypt_key"],
    ),
    (
        "openvpn",
        &[
            "data_ciphers",
            "tls_crypt",
            "keepalive_interval_secs",
            "keepalive_timeout_secs",
            "reneg_secs",
            "handshake_window_secs",
            "tun_mtu",
        ],
    ),
    ("dataplane", &["workers", "tun_name", "offload", "steering"]),
    ("auth", &["require"]),
    (
        "radius",
        &[
            "servers",
            "accounting_servers",
            "secrets",
            "timeout_secs",
            "tries",
            "nas_identifier",
            "accounting",
            "interim_interval_secs",
            "require_message_authenticator",
        ],
    ),
    (
        "token",
        &[
            "issuers",
            "audiences",
            "tenant",
            "jwks_file",
            "jwks_uri",
            "ca_files",
            "clock_skew_secs",
            "required_claims",
            "allowed_groups",
            "recheck_on_renegotiation",
            "min_key_refresh_secs",
        ],
    ),
    ("admin", &["socket", "tcp", "token_file"]),
    ("sstp", &["enabled", "local_users_file", "allow_sha1_binding"]),
    ("ikev2", &["enabled", "listen", "legacy_windows", "dpd_secs"]),
];

/// Where a configuration came from and where each of its keys was written.
///
/// Keys are named `section` (the table header), `section.key`, and `section.key[i]` for
/// the i-th element (0-based) of an array value.
#[derive(Clone, Default)]
pub struct Provenance {
    file: Option<PathBuf>,
    keys: BTreeMap<String, Location>,
}

impl Provenance {
    /// The file the configuration was read from (`None` when built in code).
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Where `key` (e.g. `"pki.crl_files"` or `"pki.crl_files[1]"`) was written, if it was.
    pub fn location(&self, key: &str) -> Option<Location> {
        self.keys.get(key).copied()
    }

    /// The location of the first of `keys` that was written, else of the first key's section.
    pub(super) fn locate(&self, keys: &[String]) -> Option<Location> {
        let section = keys.first().map(|k| k.split(['.', '[']).next().unwrap_or(k));
        keys.iter().map(String::as_str).chain(section).find_map(|k| self.location(k))
    }
}

/// Provenance is bookkeeping, not configuration: two configurations with the same values are
/// equal wherever they came from.
impl PartialEq for Provenance {
    fn eq(&self, _other: &Provenance) -> bool {
        true
    }
}

impl fmt::Debug for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provenance").field("file", &self.file).finish_non_exhaustive()
    }
}

/// The 1-based line and column of byte `offset` in `text` (clamped to the end of the text).
pub(super) fn location_of(text: &str, offset: usize) -> Location {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location { line: before.matches('\n').count() + 1, column: before[line_start..].chars().count() + 1 }
}

/// A key or array element written in the file: its dotted name and spans.
struct Entry {
    path: String,
    key_span: Range<usize>,
    value_span: Range<usize>,
}

/// Parses `text` into a `Config` without the semantic rules; see [`Config::from_toml_str`].
pub(super) fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let located = |span: Option<Range<usize>>, message: String| {
        ConfigError::at(origin, span.map(|s| location_of(text, s.start)), message)
    };
    let document = DeTable::parse(text).map_err(|e| located(e.span(), e.message().to_string()))?;
    check_keys(document.get_ref()).map_err(|(span, message)| located(Some(span), message))?;
    let entries = index(document.get_ref());

    let deserializer = toml::Deserializer::from(document.clone());
    let mut config = Config::deserialize(deserializer).map_err(|e| {
        let (span, message) = explain_type_error(document.get_ref(), &entries, e);
        located(span, message)
    })?;

    let keys = entries.into_iter().map(|e| (e.path, location_of(text, e.key_span.start)));
    config.provenance = Provenance { file: Some(origin.to_path_buf()), keys: keys.collect() };
    Ok(config)
}

/// Refuses unknown sections and keys (serde would too, but without a suggestion), and
/// sections that are not tables.
fn check_keys(document: &DeTable<'_>) -> Result<(), (Range<usize>, String)> {
    for (section, value) in document.iter() {
        let Some(known_keys) = section_keys(section.get_ref()) else {
            let mut message = format!("unknown section `{}`", section.get_ref());
            if let Some(home) = section_of_key(section.get_ref()) {
                message += &format!("; `{}` is a key of [{home}]", section.get_ref());
            } else if let Some(close) = closest(section.get_ref(), SCHEMA.iter().map(|(s, _)| *s)) {
                message += &format!("; did you mean [{close}]?");
            }
            return Err((section.span(), message));
        };
        let DeValue::Table(table) = value.get_ref() else {
            let message = format!("`{0}` must be a table: write its keys under a [{0}] header", section.get_ref());
            return Err((section.span(), message));
        };
        for key in table.keys() {
            let name = key.get_ref().as_ref();
            if known_keys.contains(&name) {
                continue;
            }
            let mut message = format!("unknown key `{name}` in [{}]", section.get_ref());
            if let Some(close) = closest(name, known_keys.iter().copied()) {
                message += &format!("; did you mean `{close}`?");
            } else if let Some(home) = section_of_key(name) {
                message += &format!("; `{name}` belongs in [{home}]");
            }
            return Err((key.span(), message));
        }
    }
    Ok(())
}

fn section_keys(section: &str) -> Option<&'static [&'static str]> {
    SCHEMA.iter().find(|(name, _)| *name == section).map(|(_, keys)| *keys)
}

fn section_of_key(key: &str) -> Option<&'static str> {
    SCHEMA.iter().find(|(_, keys)| keys.contains(&key)).map(|(name, _)| *name)
}

/// The candidate closest to `typo` (case and `-`/`_` ignored), if close enough to be a typo.
fn closest<'a>(typo: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let normalise = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let typo = normalise(typo);
    let (distance, best) = candidates.map(|c| (edit_distance(&typo, &normalise(c)), c)).min_by_key(|(d, _)| *d)?;
    // One edit in three characters, at least one: "tun_mut" -> "tun_mtu", not "pki" -> "dir".
    (distance <= (typo.chars().count() / 3).max(1)).then_some(best)
}

/// Levenshtein distance (insertions, deletions and substitutions).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// Every section, key and array element the file wrote (after `check_keys`, all are known).
fn index(document: &DeTable<'_>) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (section, value) in document.iter() {
        entries.push(Entry { path: section.get_ref().to_string(), key_span: section.span(), value_span: value.span() });
        let DeValue::Table(table) = value.get_ref() else { continue };
        for (key, value) in table.iter() {
            let path = format!("{}.{}", section.get_ref(), key.get_ref());
            if let DeValue::Array(elements) = value.get_ref() {
                for (i, element) in elements.iter().enumerate() {
                    entries.push(Entry {
                        path: format!("{path}[{i}]"),
                        key_span: element.span(),
                        value_span: element.span(),
                    });
                }
            }
            entries.push(Entry { path, key_span: key.span(), value_span: value.span() });
        }
    }
    entries
}

/// Turns a serde error into a located message naming the key. toml puts an error raised
/// inside an array element (an unknown cipher, a bad route) on the whole array; this finds
/// the element at fault so that the error lands on its line.
fn explain_type_error(
    document: &DeTable<'_>,
    entries: &[Entry],
    error: toml::de::Error,
) -> (Option<Range<usize>>, String) {
    let Some(span) = error.span() else { return (None, error.message().to_string()) };
    let innermost = entries
        .iter()
        .filter(|e| e.value_span.start <= span.start && span.end <= e.value_span.end)
        .min_by_key(|e| e.value_span.len());
    let Some(entry) = innermost else { return (Some(span), error.message().to_string()) };
    // Messages name the key; the location points at the element.
    let key = entry.path.split('[').next().unwrap_or(&entry.path);
    let hint = expected_form(key).map(|form| format!(" (format: {form})")).unwrap_or_default();

    if let Some(elements) = array_at(document, &entry.path) {
        for element in elements {
            if let Some(message) = element_error(&entry.path, element) {
                return (Some(element.span()), format!("{key}: {message}{hint}"));
            }
        }
    }
    (Some(span), format!("{key}: {}{hint}", error.message()))
}

fn array_at<'a, 'i>(document: &'a DeTable<'i>, path: &str) -> Option<&'a [Spanned<DeValue<'i>>]> {
    let (section, key) = path.split_once('.')?;
    let DeValue::Table(table) = document.get(section)?.get_ref() else { return None };
    match table.get(key)?.get_ref() {
        DeValue::Array(elements) => Some(elements),
        _ => None,
    }
}

/// The error deserializing one element of the array at `path` gives, if any.
fn element_error(path: &str, element: &Spanned<DeValue<'_>>) -> Option<String> {
    fn check<T: for<'de> Deserialize<'de>>(element: &Spanned<DeValue<'_>>) -> Option<String> {
        T::deserialize(ValueDeserializer::from(element.clone())).err().map(|e| e.message().to_string())
    }
    match path {
        "listen.udp" | "listen.tcp" | "radius.servers" | "radius.accounting_servers" => check::<SocketAddr>(element),
        "network.routes" => check::<Ipv4Net>(element),
        "network.dns_servers" | "ikev2.listen" => check::<IpAddr>(element),
        "network.dns_search"
        | "network.group_pools"
        | "pki.revoked_thumbprints"
        | "radius.secrets"
        | "token.issuers"
        | "token.audiences"
        | "token.required_claims"
        | "token.allowed_groups" => check::<String>(element),
        "pki.trusted_roots" | "pki.crl_files" | "token.ca_files" => check::<PathBuf>(element),
        "openvpn.data_ciphers" => check::<AeadAlgorithm>(element),
        "auth.require" => check::<crate::config::AuthRequirement>(element),
        _ => None,
    }
}

/// What a value written as a string must look like, for keys whose parse errors are terse.
fn expected_form(path: &str) -> Option<&'static str> {
    match path {
        "listen.udp" | "listen.tcp" => Some("a list of addresses with ports, e.g. [\"0.0.0.0:1194\", \"[::]:1194\"]"),
        "network.pool" => Some("an IPv4 prefix, e.g. \"10.8.0.0/24\""),
        "network.routes" => Some("a list of IPv4 prefixes, e.g. [\"10.1.0.0/16\"]"),
        "network.dns_servers" => Some("a list of IP addresses, e.g. [\"10.1.0.4\"]"),
        "ikev2.listen" => Some("a list of IP addresses without ports, e.g. [\"0.0.0.0\"]"),
        "radius.servers" | "radius.accounting_servers" => {
            Some("a list of addresses with ports, e.g. [\"10.1.0.5:1812\"]")
        }
        _ => None,
    }
}

/// Keys whose value is an array, as checked element by element above. Used by tests to keep
/// `element_error` complete.
#[cfg(test)]
pub(super) fn has_element_check(path: &str) -> bool {
    let element = DeValue::parse("true").expect("literal TOML value parses");
    element_error(path, &element).is_some()
}
