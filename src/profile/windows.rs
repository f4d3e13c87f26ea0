//! A PowerShell script that sets up the VPN client built into Windows: trusts the
//! gateway's root CA, then adds an IKEv2 connection with the gateway's algorithms and an
//! SSTP connection, each with the routes of a split tunnel.

use std::fmt::Write as _;

use anyhow::Result;
use base64::Engine as _;
use time::OffsetDateTime;

use super::ProfileFile;
use super::ikev2::{Ikev2Profile, SignIn};
use super::pkcs12::{pkcs12, random_password};
use crate::config::Config;

pub const SCRIPT_FILE: &str = "p2sgw-vpn.ps1";
const UTF8_BOM: &str = "\u{FEFF}";

/// `Set-VpnConnectionIPsecConfiguration` arguments: the profiles' IKE_ENCRYPTION,
/// IKE_PRF, IKE_DH_GROUPS[0] and ESP_ENCRYPTION[0] in Windows' names (a test checks
/// they agree). "AuthenticationTransformConstants GCMAES256" is ESP's integrity: GCM's own.
const IPSEC_CONFIGURATION: &str = "-EncryptionMethod GCMAES256 -IntegrityCheckMethod SHA256 -DHGroup ECP384 \
                                   -CipherTransformConstants GCMAES256 -AuthenticationTransformConstants GCMAES256 \
                                   -PfsGroup ECP384";

/// The script, with an IKEv2 connection when `ikev2` is given and an SSTP connection when
/// `[sstp] enabled`; `None` when there is neither.
pub fn windows_script(
    config: &Config,
    client_name: Option<&str>,
    root_der: &[u8],
    ikev2: Option<&Ikev2Profile>,
) -> Result<Option<ProfileFile>> {
    let sstp_port = config.listen.tcp.first().map(|a| a.port()).filter(|_| config.sstp.enabled);
    if ikev2.is_none() && sstp_port.is_none() {
        return Ok(None);
    }
    let gateway = config.gateway_name();
    let network = &config.network;
    let holder = client_name.unwrap_or("any user");
    let b64 = base64::engine::general_purpose::STANDARD;

    // Windows PowerShell 5.1 reads a script without a byte order mark as Windows-1252,
    // where some UTF-8 bytes become typographic quotes that would end a quoted string.
    let mut out = String::from(UTF8_BOM);
    let _ = writeln!(
        out,
        "# VPN connections to {gateway} for {holder:?}, made by p2sgw on {}.",
        OffsetDateTime::now_utc().date()
    );
    out.push_str(
        "# Run in an elevated PowerShell:  powershell -ExecutionPolicy Bypass -File .\\p2sgw-vpn.ps1\n\
         #Requires -RunAsAdministrator\n\
         $ErrorActionPreference = 'Stop'\n\n",
    );
    let _ = writeln!(out, "$Gateway = {}", quote(&gateway));
    let _ = writeln!(
        out,
        "$Routes = @({})",
        network.routes.iter().map(|r| quote(&r.to_string())).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(out, "$SplitTunneling = ${}", !network.full_tunnel);
    let dns_suffix = network.dns_search.first().map(|s| format!(" -DnsSuffix {}", quote(s))).unwrap_or_default();
    out.push_str(
        "\n# The root CA of the gateway's certificate, trusted by the machine.\n\
         $RootFile = Join-Path $env:TEMP 'p2sgw-VpnServerRoot.cer'\n",
    );
    let _ =
        writeln!(out, "[IO.File]::WriteAllBytes($RootFile, [Convert]::FromBase64String('{}'))", b64.encode(root_der));
    out.push_str(
        "Import-Certificate -FilePath $RootFile -CertStoreLocation 'Cert:\\LocalMachine\\Root' | Out-Null\n\
         Remove-Item $RootFile\n\n\
         # A connection of the same name is replaced.\n\
         function Reset-VpnConnection([string] $Name) {\n\
         \x20   if (Get-VpnConnection -Name $Name -AllUserConnection -ErrorAction SilentlyContinue) {\n\
         \x20       Remove-VpnConnection -Name $Name -AllUserConnection -Force\n\
         \x20   }\n\
         }\n\n\
         function Add-Routes([string] $Name) {\n\
         \x20   if ($SplitTunneling) {\n\
         \x20       foreach ($Route in $Routes) {\n\
         \x20           Add-VpnConnectionRoute -ConnectionName $Name -AllUserConnection -DestinationPrefix $Route\n\
         \x20       }\n\
         \x20   }\n\
         }\n",
    );

    if let Some(profile) = ikev2 {
        out.push_str("\n# IKEv2.\n");
        let _ = writeln!(out, "$Name = {}", quote(&format!("{gateway} (IKEv2)")));
        let authentication = match &profile.sign_in {
            SignIn::Certificate(identity) => {
                match identity {
                    Some(identity) => {
                        let password = random_password();
                        let name = client_name.unwrap_or("client");
                        let pfx = pkcs12(&identity.cert_der, &identity.key_der, name, &password)?;
                        let _ = write!(
                            out,
                            "# The certificate and private key of {holder:?}, into the machine's store (IKEv2 machine\n\
                             # certificate sign-in). This script holds the key: keep it secret.\n\
                             $PfxFile = Join-Path $env:TEMP 'p2sgw-client.pfx'\n\
                             [IO.File]::WriteAllBytes($PfxFile, [Convert]::FromBase64String('{}'))\n\
                             $PfxPassword = ConvertTo-SecureString -String {} -AsPlainText -Force\n\
                             Import-PfxCertificate -FilePath $PfxFile -CertStoreLocation 'Cert:\\LocalMachine\\My' -Password $PfxPassword | Out-Null\n\
                             Remove-Item $PfxFile\n",
                            b64.encode(pfx),
                            quote(&password)
                        );
                    }
                    None => out.push_str(
                        "# Sign-in is by the user's certificate, which must be in the machine's store first:\n\
                         #   Import-PfxCertificate -FilePath USER.pfx -CertStoreLocation 'Cert:\\LocalMachine\\My'\n",
                    ),
                }
                "-AuthenticationMethod MachineCertificate".to_string()
            }
            // New-EapConfiguration's default is EAP-MSCHAPv2 (the user name and password).
            SignIn::Password => {
                "-AuthenticationMethod Eap -EapConfigXmlStream (New-EapConfiguration).EapConfigXmlStream".to_string()
            }
        };
        let _ = write!(
            out,
            "Reset-VpnConnection $Name\n\
             Add-VpnConnection -Name $Name -ServerAddress $Gateway -TunnelType Ikev2 {authentication} `\n\
             \x20   -EncryptionLevel Required -SplitTunneling $SplitTunneling -AllUserConnection{dns_suffix} -Force\n\
             Set-VpnConnectionIPsecConfiguration -ConnectionName $Name -AllUserConnection {IPSEC_CONFIGURATION} -Force\n\
             Add-Routes $Name\n"
        );
    }

    if let Some(port) = sstp_port {
        let server = match gateway.parse::<std::net::Ipv6Addr>() {
            _ if port == 443 => "$Gateway".to_string(),
            Ok(_) => quote(&format!("[{gateway}]:{port}")),
            Err(_) => quote(&format!("{gateway}:{port}")),
        };
        out.push_str("\n# SSTP (HTTPS), signing in with the user name and password (MS-CHAPv2).\n");
        let _ = writeln!(out, "$Name = {}", quote(&format!("{gateway} (SSTP)")));
        let _ = write!(
            out,
            "Reset-VpnConnection $Name\n\
             Add-VpnConnection -Name $Name -ServerAddress {server} -TunnelType Sstp -AuthenticationMethod MSChapv2 `\n\
             \x20   -EncryptionLevel Required -SplitTunneling $SplitTunneling -AllUserConnection{dns_suffix} -Force\n\
             Add-Routes $Name\n\
             # Windows checks the revocation of the gateway's certificate for SSTP; a private CA\n\
             # without a reachable CRL then fails. Only if yours has none:\n\
             #   Set-ItemProperty 'HKLM:\\SYSTEM\\CurrentControlSet\\Services\\SstpSvc\\Parameters' NoCertRevocationCheck 1 -Type DWord\n"
        );
    }
    out.push_str("\nWrite-Host \"VPN connections to $Gateway added: see Settings > Network & internet > VPN.\"\n");
    Ok(Some(ProfileFile { path: SCRIPT_FILE.to_string(), bytes: out.into_bytes() }))
}

/// A PowerShell verbatim string: single quotes, each quote inside doubled. PowerShell
/// takes the typographic single quotes (U+2018..U+201B) for quotes too, so those are
/// doubled as well.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;
    use crate::crypto::dh::DhGroup;
    use crate::profile::ikev2::test_support::{GATEWAY, password_only, profile, root, setup};
    use crate::profile::ikev2::{ESP_ENCRYPTION, IKE_DH_GROUPS, IKE_ENCRYPTION, IKE_PRF};
    use crate::proto::ike::crypto::{EncrAlgorithm, PrfAlgorithm};

    fn script(config: &Config, name: Option<&str>, with_ikev2: bool) -> Option<String> {
        let ikev2 = with_ikev2.then(|| profile(config, name));
        let file = windows_script(config, name, &root(config), ikev2.as_ref()).unwrap()?;
        assert_eq!(file.path, SCRIPT_FILE);
        Some(String::from_utf8(file.bytes).unwrap())
    }

    /// The single-quoted argument that follows `prefix` in the script, unquoted.
    fn quoted_after<'a>(script: &'a str, prefix: &str) -> &'a str {
        let start = script.find(prefix).unwrap_or_else(|| panic!("no {prefix} in\n{script}")) + prefix.len();
        let rest = script[start..].strip_prefix('\'').unwrap();
        &rest[..rest.find('\'').unwrap()]
    }

    #[test]
    fn powershell_strings_double_every_kind_of_single_quote() {
        assert_eq!(quote("vpn.example.com"), "'vpn.example.com'");
        assert_eq!(quote("O'Brien’s \"VPN\" $x"), "'O''Brien’’s \"VPN\" $x'");
        assert_eq!(quote("‘a‚b‛"), "'‘‘a‚‚b‛‛'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn ipsec_configuration_names_the_profiles_algorithms() {
        // IPSEC_CONFIGURATION spells these in Windows' names.
        assert_eq!(IKE_ENCRYPTION, EncrAlgorithm::AesGcm16_256);
        assert_eq!(IKE_PRF, PrfAlgorithm::HmacSha256);
        assert_eq!(IKE_DH_GROUPS[0], DhGroup::Ecp384);
        assert_eq!(ESP_ENCRYPTION[0], EncrAlgorithm::AesGcm16_256);
    }

    #[test]
    fn ikev2_certificate_script_imports_root_and_identity_and_adds_routes() {
        let (_tmp, config) = setup("windows-cert");
        let text = script(&config, Some("alice"), true).unwrap();
        assert!(text.starts_with(UTF8_BOM), "PowerShell 5.1 needs the BOM to read UTF-8");
        assert!(text.contains("#Requires -RunAsAdministrator\n"));
        assert!(text.contains(&format!("$Gateway = '{GATEWAY}'\n")));
        assert!(text.contains("$Routes = @('10.1.0.0/16', '192.168.7.0/24')\n"));
        assert!(text.contains("$SplitTunneling = $true\n"));
        let root_b64 = quoted_after(&text, "[IO.File]::WriteAllBytes($RootFile, [Convert]::FromBase64String(");
        let root_der = base64::engine::general_purpose::STANDARD.decode(root_b64).unwrap();
        assert_eq!(root_der, root(&config).as_ref());
        assert!(text.contains("Import-Certificate -FilePath $RootFile -CertStoreLocation 'Cert:\\LocalMachine\\Root'"));

        let pfx_b64 = quoted_after(&text, "[IO.File]::WriteAllBytes($PfxFile, [Convert]::FromBase64String(");
        let pfx = base64::engine::general_purpose::STANDARD.decode(pfx_b64).unwrap();
        let password = quoted_after(&text, "$PfxPassword = ConvertTo-SecureString -String ");
        let alice = profile(&config, Some("alice"));
        let certificate = crate::profile::pkcs12::certificate_in(&pfx, password);
        assert_eq!(certificate.as_deref(), Some(alice.identity().unwrap().cert_der.as_slice()));
        assert!(text.contains("-CertStoreLocation 'Cert:\\LocalMachine\\My' -Password $PfxPassword"));

        assert!(text.contains(&format!("$Name = '{GATEWAY} (IKEv2)'\n")));
        assert!(text.contains(
            "Add-VpnConnection -Name $Name -ServerAddress $Gateway -TunnelType Ikev2 -AuthenticationMethod \
             MachineCertificate `\n    -EncryptionLevel Required -SplitTunneling $SplitTunneling -AllUserConnection \
             -DnsSuffix 'corp.example' -Force\n"
        ));
        assert!(text.contains(
            "Set-VpnConnectionIPsecConfiguration -ConnectionName $Name -AllUserConnection -EncryptionMethod GCMAES256 \
             -IntegrityCheckMethod SHA256 -DHGroup ECP384 -CipherTransformConstants GCMAES256 \
             -AuthenticationTransformConstants GCMAES256 -PfsGroup ECP384 -Force\n"
        ));
        assert!(
            text.contains(
                "Add-VpnConnectionRoute -ConnectionName $Name -AllUserConnection -DestinationPrefix $Route\n"
            )
        );
        assert!(text.contains("Add-Routes $Name\n"));
        assert!(!text.contains("Sstp"), "SSTP is off");
    }

    #[test]
    fn password_script_with_sstp_on_another_port_and_a_quoted_suffix() {
        let (_tmp, mut config) = setup("windows-sstp");
        password_only(&mut config);
        config.sstp.enabled = true;
        config.listen.tcp = vec!["0.0.0.0:8443".parse().unwrap()];
        config.network.dns_search = vec!["o'brien.example".into()];
        let text = script(&config, None, true).unwrap();
        assert!(text.contains(
            "-TunnelType Ikev2 -AuthenticationMethod Eap -EapConfigXmlStream (New-EapConfiguration).EapConfigXmlStream"
        ));
        assert!(!text.contains("PfxFile"));
        assert!(text.contains(&format!("$Name = '{GATEWAY} (SSTP)'\n")));
        assert!(text.contains(&format!(
            "Add-VpnConnection -Name $Name -ServerAddress '{GATEWAY}:8443' -TunnelType Sstp -AuthenticationMethod MSChapv2"
        )));
        assert!(text.contains("-DnsSuffix 'o''brien.example'"), "{text}");
        assert_eq!(text.matches("Add-Routes $Name\n").count(), 2);
    }

    #[test]
    fn sstp_only_full_tunnel_script() {
        let (_tmp, mut config) = setup("windows-sstp-only");
        password_only(&mut config);
        config.ikev2.enabled = false;
        config.network.full_tunnel = true;
        assert_eq!(script(&config, None, false), None, "neither IKEv2 nor SSTP");
        config.sstp.enabled = true;
        let text = script(&config, None, false).unwrap();
        assert!(!text.contains("Ikev2") && !text.contains("Set-VpnConnectionIPsecConfiguration"));
        assert!(text.contains("-ServerAddress $Gateway -TunnelType Sstp"), "port 443 needs no port");
        assert!(text.contains("$SplitTunneling = $false\n"));
        assert!(text.contains("Import-Certificate"));

        config.gateway.name = Some("2001:db8::1".into());
        config.listen.tcp = vec!["[::]:8443".parse().unwrap()];
        let text = script(&config, None, false).unwrap();
        assert!(text.contains("-ServerAddress '[2001:db8::1]:8443' -TunnelType Sstp"), "{text}");
    }
}
