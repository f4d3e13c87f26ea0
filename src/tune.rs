//! `p2sgw tune --check`: where the running host differs from the sysctl profile in
//! `tuning/99-p2sgw.conf`, and what each difference costs (the profile's comment on the key).

use std::path::Path;

/// The profile shipped in `tuning/`, built into the binary so that the check needs no files.
pub const PROFILE: &str = include_str!("../tuning/99-p2sgw.conf");

/// One key of the profile and why it is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    /// The comment block above the key (its reason, and what a different value costs).
    pub reason: String,
}

/// A key whose running value is not the profile's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub setting: Setting,
    /// `None`: the key does not exist on this host (e.g. conntrack not loaded).
    pub running: Option<String>,
}

/// Reads `key = value` lines; the comment lines just above a key are its reason.
pub fn parse_profile(text: &str) -> Result<Vec<Setting>, String> {
    let mut settings = Vec::new();
    let mut comment: Vec<&str> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix('#') {
            comment.push(c.trim());
        } else if line.is_empty() {
            comment.clear();
        } else {
            let (key, value) =
                line.split_once('=').ok_or_else(|| format!("line {}: expected key = value", index + 1))?;
            // The comment stays: keys written together share it.
            settings.push(Setting { key: key.trim().into(), value: value.trim().into(), reason: comment.join(" ") });
        }
    }
    Ok(settings)
}

/// Compares each setting with what `read` says is running (`None`: no such key).
/// Values compare by their whitespace-separated words ("4096 87380" == "4096\t87380").
pub fn differences(settings: &[Setting], read: impl Fn(&str) -> Option<String>) -> Vec<Difference> {
    let words = |v: &str| v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    settings
        .iter()
        .filter_map(|s| {
            let running = read(&s.key);
            match &running {
                Some(value) if words(value) == words(&s.value) => None,
                _ => Some(Difference { setting: s.clone(), running }),
            }
        })
        .collect()
}

/// The running value of a sysctl key, from /proc/sys.
pub fn read_sysctl(key: &str) -> Option<String> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::fs::read_to_string(path).ok().map(|v| v.trim().to_string())
}

/// The report `p2sgw tune --check` prints.
pub fn report(differences: &[Difference], total: usize) -> String {
    if differences.is_empty() {
        return format!("all {total} settings of the p2sgw sysctl profile are in force\n");
    }
    let mut text = format!("{} of {total} settings differ from the p2sgw sysctl profile:\n", differences.len());
    for d in differences {
        let running = d.running.as_deref().unwrap_or("absent on this host");
        text += &format!("\n{}: {running} (profile: {})\n    {}\n", d.setting.key, d.setting.value, d.setting.reason);
    }
    text += "\nApply: cp tuning/99-p2sgw.conf /etc/sysctl.d/ && sysctl --system\n";
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_profile_parses_and_every_key_has_a_reason() {
        let settings = parse_profile(PROFILE).unwrap();
        assert!(settings.len() >= 8);
        for s in &settings {
            assert!(!s.reason.is_empty(), "{} has no reason line", s.key);
            assert!(!s.value.is_empty() && !s.key.contains(' '), "{s:?}");
        }
        assert!(settings.iter().any(|s| s.key == "net.ipv4.ip_forward" && s.value == "1"));
    }

    #[test]
    fn differences_name_the_key_the_values_and_the_cost() {
        let settings = parse_profile(
            "# Forward between the tunnel and the VNet.\nnet.ipv4.ip_forward = 1\n\n\
             # Buffers.\n# Bursts are dropped otherwise.\nnet.core.rmem_max = 16777216\n\
             net.ipv4.tcp_rmem = 4096 87380 16777216\n# Conntrack.\nnet.netfilter.nf_conntrack_max = 1048576\n",
        )
        .unwrap();
        assert_eq!(settings[1].reason, "Buffers. Bursts are dropped otherwise.");
        assert_eq!(settings[2].reason, "Buffers. Bursts are dropped otherwise.");
        let running = |key: &str| match key {
            "net.ipv4.ip_forward" => Some("1".to_string()),
            "net.core.rmem_max" => Some("212992".to_string()),
            "net.ipv4.tcp_rmem" => Some("4096\t87380\t16777216".to_string()),
            _ => None,
        };
        let found = differences(&settings, running);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].setting.key.as_str(), found[0].running.as_deref()), ("net.core.rmem_max", Some("212992")));
        assert_eq!(found[1].running, None);
        let text = report(&found, settings.len());
        assert!(text.starts_with("2 of 4 settings differ"), "{text}");
        assert!(
            text.contains("net.core.rmem_max: 212992 (profile: 16777216)\n    Buffers. Bursts are dropped otherwise.")
        );
        assert!(text.contains("net.netfilter.nf_conntrack_max: absent on this host"));
        assert_eq!(report(&[], 4), "all 4 settings of the p2sgw sysctl profile are in force\n");
    }
}
