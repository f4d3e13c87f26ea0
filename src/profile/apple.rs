//! Apple configuration profiles (`.mobileconfig`, an XML property list) for the IKEv2
//! client built into macOS and iOS: a VPN payload, the gateway's root CA and, for a
//! certificate sign-in, the client's identity as PKCS#12.

use anyhow::{Context as _, Result};
use plist::{Dictionary, Value};

use super::ProfileFile;
use super::ikev2::{ESP_ENCRYPTION, IKE_DH_GROUPS, IKE_ENCRYPTION, IKE_PRF, Ikev2Profile, SignIn};
use super::pkcs12::{pkcs12, random_password};
use crate::pki::KeyAlgorithm;
use crate::proto::ike::crypto::{EncrAlgorithm, PrfAlgorithm};

/// `<gateway>.mobileconfig`, the gateway's name made safe for a file name.
pub fn profile_file_name(gateway: &str) -> String {
    let safe: String =
        gateway.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    format!("{safe}.mobileconfig")
}

/// The profile, or `None` when it would need a certificate the package does not hold (a
/// profile for any user with certificate sign-in): an Apple VPN payload names its
/// identity by the UUID of a payload in the same profile, so it cannot be left for the
/// user to fill in.
pub fn apple_profile(profile: &Ikev2Profile) -> Result<Option<ProfileFile>> {
    if profile.sign_in == SignIn::Certificate(None) {
        return Ok(None);
    }
    let base_identifier = format!("p2sgw.vpn.{}", profile.gateway);
    let holder = profile.client_name.as_deref().unwrap_or("any user");
    let mut payloads = vec![root_payload(profile, &base_identifier)];
    let mut ikev2 = Dictionary::new();
    ikev2.insert("RemoteAddress".into(), profile.gateway.clone().into());
    // The gateway's certificate names it in its subjectAltName, which Apple requires.
    ikev2.insert("RemoteIdentifier".into(), profile.gateway.clone().into());
    if let Some(name) = &profile.client_name {
        ikev2.insert("LocalIdentifier".into(), name.clone().into());
    }
    match profile.identity() {
        Some(identity) => {
            let uuid = payload_uuid(profile, "identity");
            let name = profile.client_name.as_deref().unwrap_or("client");
            let password = random_password();
            let p12 = pkcs12(&identity.cert_der, &identity.key_der, name, &password)?;
            let mut identity_payload = payload(
                "com.apple.security.pkcs12",
                &format!("{base_identifier}.identity"),
                &uuid,
                &format!("VPN certificate of {name}"),
            );
            identity_payload.insert("PayloadContent".into(), Value::Data(p12));
            identity_payload.insert("PayloadCertificateFileName".into(), format!("{name}.p12").into());
            // The profile holds the key and its password together, like the .ovpn file
            // holds the key in clear: whoever has the profile has the identity.
            identity_payload.insert("Password".into(), password.into());
            payloads.push(identity_payload.into());
            ikev2.insert("AuthenticationMethod".into(), "Certificate".into());
            ikev2.insert("PayloadCertificateUUID".into(), uuid.into());
            ikev2.insert("CertificateType".into(), certificate_type(identity.key_algorithm).into());
        }
        None => {
            // EAP-MSCHAPv2: the device asks for the password (and, without a name, the user name).
            ikev2.insert("AuthenticationMethod".into(), "None".into());
            ikev2.insert("ExtendedAuthEnabled".into(), 1.into());
            if let Some(name) = &profile.client_name {
                ikev2.insert("AuthName".into(), name.clone().into());
            }
        }
    }
    if let Some(issuer) = &profile.server_issuer_common_name {
        ikev2.insert("ServerCertificateIssuerCommonName".into(), issuer.clone().into());
    }
    ikev2.insert("IKESecurityAssociationParameters".into(), security_association(IKE_ENCRYPTION).into());
    ikev2.insert("ChildSecurityAssociationParameters".into(), security_association(ESP_ENCRYPTION[0]).into());
    // The DH group of the Child SA parameters then applies to CHILD SA rekeys.
    ikev2.insert("EnablePFS".into(), 1.into());
    ikev2.insert("DeadPeerDetectionRate".into(), dead_peer_detection_rate(profile.dpd_secs).into());
    ikev2.insert("IncludeAllNetworks".into(), profile.full_tunnel.into());

    let mut ipv4 = Dictionary::new();
    ipv4.insert("OverridePrimary".into(), i64::from(profile.full_tunnel).into());
    let mut vpn_payload =
        payload("com.apple.vpn.managed", &format!("{base_identifier}.vpn"), &payload_uuid(profile, "vpn"), "VPN");
    vpn_payload.insert("UserDefinedName".into(), profile.gateway.clone().into());
    vpn_payload.insert("VPNType".into(), "IKEv2".into());
    vpn_payload.insert("IKEv2".into(), ikev2.into());
    vpn_payload.insert("IPv4".into(), ipv4.into());
    payloads.push(vpn_payload.into());

    let mut top = Dictionary::new();
    top.insert("PayloadType".into(), "Configuration".into());
    top.insert("PayloadVersion".into(), 1.into());
    top.insert("PayloadIdentifier".into(), base_identifier.clone().into());
    top.insert("PayloadUUID".into(), payload_uuid(profile, "profile").into());
    top.insert("PayloadDisplayName".into(), format!("VPN {}", profile.gateway).into());
    top.insert(
        "PayloadDescription".into(),
        format!("IKEv2 VPN to {} for {holder}, made by p2sgw.", profile.gateway).into(),
    );
    top.insert("PayloadRemovalDisallowed".into(), false.into());
    top.insert("PayloadContent".into(), Value::Array(payloads));

    let mut xml = Vec::new();
    Value::Dictionary(top).to_writer_xml(&mut xml).context("writing the Apple profile")?;
    Ok(Some(ProfileFile { path: profile_file_name(&profile.gateway), bytes: xml }))
}

fn root_payload(profile: &Ikev2Profile, base_identifier: &str) -> Value {
    let mut root = payload(
        "com.apple.security.root",
        &format!("{base_identifier}.root"),
        &payload_uuid(profile, "root"),
        "VPN server root CA",
    );
    root.insert("PayloadContent".into(), Value::Data(profile.root.to_vec()));
    root.insert("PayloadCertificateFileName".into(), "VpnServerRoot.cer".into());
    root.into()
}

/// The keys every payload has.
fn payload(payload_type: &str, identifier: &str, uuid: &str, display_name: &str) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("PayloadType".into(), payload_type.into());
    d.insert("PayloadVersion".into(), 1.into());
    d.insert("PayloadIdentifier".into(), identifier.into());
    d.insert("PayloadUUID".into(), uuid.into());
    d.insert("PayloadDisplayName".into(), display_name.into());
    d
}

fn security_association(encryption: EncrAlgorithm) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("EncryptionAlgorithm".into(), encryption_name(encryption).into());
    d.insert("IntegrityAlgorithm".into(), integrity_name(IKE_PRF).into());
    d.insert("DiffieHellmanGroup".into(), i64::from(IKE_DH_GROUPS[0].id()).into());
    d
}

fn encryption_name(algorithm: EncrAlgorithm) -> &'static str {
    match algorithm {
        EncrAlgorithm::AesCbc128 => "AES-128",
        EncrAlgorithm::AesCbc256 => "AES-256",
        EncrAlgorithm::AesGcm16_128 => "AES-128-GCM",
        EncrAlgorithm::AesGcm16_256 => "AES-256-GCM",
        EncrAlgorithm::ChaCha20Poly1305 => "ChaCha20Poly1305",
    }
}

/// With AEAD encryption Apple uses the "integrity" algorithm as the PRF.
fn integrity_name(prf: PrfAlgorithm) -> &'static str {
    match prf {
        PrfAlgorithm::HmacSha1 => "SHA1-160",
        PrfAlgorithm::HmacSha256 => "SHA2-256",
        PrfAlgorithm::HmacSha384 => "SHA2-384",
        PrfAlgorithm::HmacSha512 => "SHA2-512",
    }
}

fn certificate_type(key: KeyAlgorithm) -> &'static str {
    match key {
        KeyAlgorithm::EcdsaP256 => "ECDSA256",
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => "RSA",
    }
}

/// Apple's rates check an idle gateway every 1 (High), 10 (Medium) or 30 (Low) minutes:
/// the one closest to, and not slower than, the gateway's own check when possible.
fn dead_peer_detection_rate(dpd_secs: u32) -> &'static str {
    match dpd_secs {
        0..=60 => "High",
        61..=600 => "Medium",
        _ => "Low",
    }
}

/// A UUID that stays the same for the same gateway, holder and payload, so that
/// installing a newer profile replaces the payloads of the older one.
fn payload_uuid(profile: &Ikev2Profile, role: &str) -> String {
    let seed = format!("p2sgw\0{}\0{}\0{role}", profile.gateway, profile.client_name.as_deref().unwrap_or(""));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    // RFC 9562 version 8 (custom), variant 10.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ikev2::test_support::{GATEWAY, password_only, profile, setup};

    fn parse(file: &ProfileFile) -> Dictionary {
        assert_eq!(file.path, profile_file_name(GATEWAY));
        Value::from_reader_xml(file.bytes.as_slice()).unwrap().into_dictionary().unwrap()
    }

    fn string<'a>(d: &'a Dictionary, key: &str) -> &'a str {
        d.get(key).and_then(Value::as_string).unwrap_or_else(|| panic!("no string {key} in {d:?}"))
    }

    fn integer(d: &Dictionary, key: &str) -> i64 {
        d.get(key).and_then(Value::as_signed_integer).unwrap_or_else(|| panic!("no integer {key} in {d:?}"))
    }

    fn dict<'a>(d: &'a Dictionary, key: &str) -> &'a Dictionary {
        d.get(key).and_then(Value::as_dictionary).unwrap_or_else(|| panic!("no dictionary {key} in {d:?}"))
    }

    /// The payloads by type.
    fn payloads_of(top: &Dictionary) -> Vec<(&str, &Dictionary)> {
        let content = top.get("PayloadContent").and_then(Value::as_array).unwrap();
        content
            .iter()
            .map(|p| {
                let p = p.as_dictionary().unwrap();
                (string(p, "PayloadType"), p)
            })
            .collect()
    }

    #[test]
    fn certificate_profile_carries_root_identity_and_vpn_settings() {
        let (_tmp, config) = setup("apple-cert");
        let alice = profile(&config, Some("alice"));
        let top = parse(&apple_profile(&alice).unwrap().unwrap());
        assert_eq!(string(&top, "PayloadType"), "Configuration");
        let payloads = payloads_of(&top);
        let types: Vec<&str> = payloads.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, ["com.apple.security.root", "com.apple.security.pkcs12", "com.apple.vpn.managed"]);
        let mut uuids: Vec<&str> = payloads.iter().map(|(_, p)| string(p, "PayloadUUID")).collect();
        uuids.push(string(&top, "PayloadUUID"));
        uuids.sort();
        uuids.dedup();
        assert_eq!(uuids.len(), 4, "every payload has its own UUID");

        let root = payloads[0].1;
        assert_eq!(root.get("PayloadContent").and_then(Value::as_data), Some(alice.root.as_ref()));
        let identity = payloads[1].1;
        let p12 = identity.get("PayloadContent").and_then(Value::as_data).unwrap();
        let password = string(identity, "Password");
        assert_eq!(password.len(), 32);
        let certificate = crate::profile::pkcs12::certificate_in(p12, password);
        assert_eq!(certificate.as_deref(), Some(alice.identity().unwrap().cert_der.as_slice()));

        let vpn = payloads[2].1;
        assert_eq!(string(vpn, "VPNType"), "IKEv2");
        let ikev2 = dict(vpn, "IKEv2");
        assert_eq!(string(ikev2, "RemoteAddress"), GATEWAY);
        assert_eq!(string(ikev2, "RemoteIdentifier"), GATEWAY);
        assert_eq!(string(ikev2, "LocalIdentifier"), "alice");
        assert_eq!(string(ikev2, "AuthenticationMethod"), "Certificate");
        assert_eq!(string(ikev2, "PayloadCertificateUUID"), string(identity, "PayloadUUID"));
        assert_eq!(string(ikev2, "CertificateType"), "ECDSA256");
        assert_eq!(string(ikev2, "ServerCertificateIssuerCommonName"), alice.server_issuer_common_name.unwrap());
        assert_eq!(string(ikev2, "DeadPeerDetectionRate"), "High");
        assert_eq!(ikev2.get("IncludeAllNetworks").and_then(Value::as_boolean), Some(false));
        assert!(ikev2.get("ExtendedAuthEnabled").is_none());
        for key in ["IKESecurityAssociationParameters", "ChildSecurityAssociationParameters"] {
            let sa = dict(ikev2, key);
            assert_eq!(string(sa, "EncryptionAlgorithm"), "AES-256-GCM", "{key}");
            assert_eq!(string(sa, "IntegrityAlgorithm"), "SHA2-256", "{key}");
            assert_eq!(integer(sa, "DiffieHellmanGroup"), 20, "{key}");
        }
        assert_eq!(integer(dict(vpn, "IPv4"), "OverridePrimary"), 0);
    }

    #[test]
    fn password_profile_uses_eap_and_full_tunnel_includes_all_networks() {
        let (_tmp, mut config) = setup("apple-eap");
        password_only(&mut config);
        config.network.full_tunnel = true;
        config.ikev2.dpd_secs = 300;
        let top = parse(&apple_profile(&profile(&config, Some("alice"))).unwrap().unwrap());
        let payloads = payloads_of(&top);
        let types: Vec<&str> = payloads.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, ["com.apple.security.root", "com.apple.vpn.managed"]);
        let vpn = payloads[1].1;
        let ikev2 = dict(vpn, "IKEv2");
        assert_eq!(string(ikev2, "AuthenticationMethod"), "None");
        assert_eq!(integer(ikev2, "ExtendedAuthEnabled"), 1);
        assert_eq!(string(ikev2, "AuthName"), "alice");
        assert!(ikev2.get("PayloadCertificateUUID").is_none());
        assert_eq!(string(ikev2, "DeadPeerDetectionRate"), "Medium");
        assert_eq!(ikev2.get("IncludeAllNetworks").and_then(Value::as_boolean), Some(true));
        assert_eq!(integer(dict(vpn, "IPv4"), "OverridePrimary"), 1);

        let anyone = parse(&apple_profile(&profile(&config, None)).unwrap().unwrap());
        let ikev2 = dict(payloads_of(&anyone)[1].1, "IKEv2");
        assert!(ikev2.get("AuthName").is_none() && ikev2.get("LocalIdentifier").is_none());
    }

    #[test]
    fn no_profile_without_the_certificate_it_needs() {
        let (_tmp, config) = setup("apple-template");
        assert_eq!(apple_profile(&profile(&config, None)).unwrap(), None);
    }

    #[test]
    fn payload_uuids_are_stable_and_well_formed() {
        let (_tmp, config) = setup("apple-uuid");
        let alice = profile(&config, Some("alice"));
        let uuid = payload_uuid(&alice, "vpn");
        assert_eq!(uuid, payload_uuid(&profile(&config, Some("alice")), "vpn"));
        assert_ne!(uuid, payload_uuid(&alice, "root"));
        assert_ne!(uuid, payload_uuid(&profile(&config, None), "vpn"));
        let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(uuid.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_eq!(&uuid[14..15], "8", "version 8");
        assert!(matches!(&uuid[19..20], "8" | "9" | "A" | "B"), "RFC 9562 variant");
    }

    #[test]
    fn text_with_markup_characters_survives_the_plist() {
        let (_tmp, config) = setup("apple-escape");
        let mut odd = profile(&config, Some("alice"));
        odd.sign_in = SignIn::Password;
        odd.client_name = Some("<Tom & \"Jerry\">".to_string());
        let top = parse(&apple_profile(&odd).unwrap().unwrap());
        let ikev2 = dict(payloads_of(&top)[1].1, "IKEv2");
        assert_eq!(string(ikev2, "AuthName"), "<Tom & \"Jerry\">");
    }
}
