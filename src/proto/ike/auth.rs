//! AUTH payloads (RFC 7296 §2.15, §3.8; RFC 4754; RFC 7427; PROTOCOLS.md §3.7): our
//! signature, verification of the peer's, the shared-key MIC used after EAP, and the
//! identity ↔ certificate check.

use std::fmt;
use std::net::IpAddr;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, RsaKeyPair, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::extensions::GeneralName;

use super::crypto::PrfAlgorithm;
use super::message::{Identification, id_type};

/// Authentication methods (RFC 7296 §3.8, RFC 4754, RFC 7427).
pub mod method {
    pub const RSA_SIGNATURE: u8 = 1;
    pub const SHARED_KEY_MIC: u8 = 2;
    pub const ECDSA_SHA256_P256: u8 = 9;
    pub const ECDSA_SHA384_P384: u8 = 10;
    pub const ECDSA_SHA512_P521: u8 = 11;
    pub const DIGITAL_SIGNATURE: u8 = 14;
}

/// SIGNATURE_HASH_ALGORITHMS values (RFC 7427 §4) we can verify; we announce these.
pub const HASH_SHA1: u16 = 1;
pub const HASH_SHA256: u16 = 2;
pub const HASH_SHA384: u16 = 3;
pub const HASH_SHA512: u16 = 4;
pub const SUPPORTED_HASHES: [u16; 3] = [HASH_SHA256, HASH_SHA384, HASH_SHA512];

/// Why the peer's AUTH was refused, or ours could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the peer's certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("unsupported authentication method {0}")]
    UnsupportedMethod(u8),
    #[error("unsupported signature algorithm in an RFC 7427 AUTH payload")]
    UnsupportedSignatureAlgorithm,
    #[error("authentication method {method} does not fit the certificate's {key} key")]
    KeyMismatch { method: u8, key: &'static str },
    #[error("malformed AUTH payload")]
    Malformed,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the private key is not a PKCS#8 RSA, P-256 or P-384 key")]
    BadPrivateKey,
    #[error("signing failed")]
    SigningFailed,
}

/// The responder's private key.
pub enum SigningKey {
    /// The PKCS#8 DER is kept for method 1 (SHA-1) signatures, which aws-lc-rs' safe API
    /// does not make.
    Rsa(RsaKeyPair, Vec<u8>),
    EcdsaP256(EcdsaKeyPair),
    EcdsaP384(EcdsaKeyPair),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SigningKey::Rsa(..) => "SigningKey(RSA)",
            SigningKey::EcdsaP256(_) => "SigningKey(P-256)",
            SigningKey::EcdsaP384(_) => "SigningKey(P-384)",
        })
    }
}

// AlgorithmIdentifier DER (RFC 7427 Appendix A; PROTOCOLS.md §3.7).
const ALG_SHA1_RSA: &[u8] = &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05, 0x00];
const ALG_SHA256_RSA: &[u8] =
    &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00];
const ALG_SHA384_RSA: &[u8] =
    &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c, 0x05, 0x00];
const ALG_SHA512_RSA: &[u8] =
    &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d, 0x05, 0x00];
const ALG_ECDSA_SHA256: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ALG_ECDSA_SHA384: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ALG_ECDSA_SHA512: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
/// id-RSASSA-PSS (1.2.840.113549.1.1.10) as an OID TLV; its parameters name the hash.
const OID_RSASSA_PSS: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
/// id-sha256/384/512 OID values (2.16.840.1.101.3.4.2.1/2/3) without the last byte.
const OID_SHA2_PREFIX: &[u8] = &[0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02];

impl SigningKey {
    /// Loads a PKCS#8 DER private key: RSA, P-256 or P-384.
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, AuthError> {
        if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
            return Ok(SigningKey::Rsa(k, der.to_vec()));
        }
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der) {
            return Ok(SigningKey::EcdsaP256(k));
        }
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der)
            .map(SigningKey::EcdsaP384)
            .map_err(|_| AuthError::BadPrivateKey)
    }

    /// Signs `octets`; returns the AUTH method and data. With RFC 7427 support announced
    /// by the peer (`peer_hashes` non-empty) method 14 is used; otherwise RSA keys use
    /// method 1 (PKCS#1 v1.5 with SHA-1, what stock Windows expects) and ECDSA keys
    /// methods 9/10.
    pub fn sign(&self, octets: &[u8], peer_hashes: &[u16]) -> Result<(u8, Vec<u8>), AuthError> {
        let rng = SystemRandom::new();
        match self {
            SigningKey::Rsa(_, pkcs8) if peer_hashes.is_empty() => {
                Ok((method::RSA_SIGNATURE, rsa_pkcs1_sha1_sign(pkcs8, octets)?))
            }
            SigningKey::Rsa(key, _) => {
                let (encoding, alg) = if peer_hashes.contains(&HASH_SHA256) {
                    (&signature::RSA_PKCS1_SHA256, ALG_SHA256_RSA)
                } else if peer_hashes.contains(&HASH_SHA384) {
                    (&signature::RSA_PKCS1_SHA384, ALG_SHA384_RSA)
                } else {
                    (&signature::RSA_PKCS1_SHA512, ALG_SHA512_RSA)
                };
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(encoding, &rng, octets, &mut sig).map_err(|_| AuthError::SigningFailed)?;
                Ok((method::DIGITAL_SIGNATURE, digital_signature(alg, &sig)))
            }
            SigningKey::EcdsaP256(key) | SigningKey::EcdsaP384(key) => {
                let fixed = key.sign(&rng, octets).map_err(|_| AuthError::SigningFailed)?;
                let (raw_method, alg) = match self {
                    SigningKey::EcdsaP256(_) => (method::ECDSA_SHA256_P256, ALG_ECDSA_SHA256),
                    _ => (method::ECDSA_SHA384_P384, ALG_ECDSA_SHA384),
                };
                if peer_hashes.is_empty() {
                    Ok((raw_method, fixed.as_ref().to_vec()))
                } else {
                    Ok((method::DIGITAL_SIGNATURE, digital_signature(alg, &fixed_to_der(fixed.as_ref()))))
                }
            }
        }
    }
}

/// RSASSA-PKCS1-v1_5 with SHA-1 (AUTH method 1) through aws-lc's C API: aws-lc-rs only
/// signs with SHA-2. Only the peer's choice of method makes this SHA-1.
fn rsa_pkcs1_sha1_sign(pkcs8: &[u8], message: &[u8]) -> Result<Vec<u8>, AuthError> {
    use aws_lc_sys as sys;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, message);
    let digest = digest.as_ref();
    // SAFETY: the CBS borrows `pkcs8`, which outlives the call; every pointer returned by
    // aws-lc is checked for NULL before use and freed exactly once; `signature` has
    // RSA_size bytes, the most RSA_sign writes.
    unsafe {
        let mut cbs = sys::CBS { data: pkcs8.as_ptr(), len: pkcs8.len() };
        let pkey = sys::EVP_parse_private_key(&mut cbs);
        if pkey.is_null() {
            return Err(AuthError::BadPrivateKey);
        }
        let rsa = sys::EVP_PKEY_get1_RSA(pkey);
        sys::EVP_PKEY_free(pkey);
        if rsa.is_null() {
            return Err(AuthError::BadPrivateKey);
        }
        let mut signature = vec![0u8; sys::RSA_size(rsa) as usize];
        let mut written: std::os::raw::c_uint = 0;
        let ok = sys::RSA_sign(sys::NID_sha1, digest.as_ptr(), digest.len(), signature.as_mut_ptr(), &mut written, rsa);
        sys::RSA_free(rsa);
        if ok != 1 {
            return Err(AuthError::SigningFailed);
        }
        signature.truncate(written as usize);
        Ok(signature)
    }
}

fn digital_signature(alg: &[u8], sig: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + alg.len() + sig.len());
    out.push(alg.len() as u8);
    out.extend_from_slice(alg);
    out.extend_from_slice(sig);
    out
}

/// r || s (equal halves) to an ECDSA-Sig-Value DER SEQUENCE.
fn fixed_to_der(fixed: &[u8]) -> Vec<u8> {
    let (r, s) = fixed.split_at(fixed.len() / 2);
    let mut body = Vec::new();
    for int in [r, s] {
        let trimmed = &int[int.iter().position(|&b| b != 0).unwrap_or(int.len() - 1)..];
        body.push(0x02);
        let pad = trimmed[0] & 0x80 != 0;
        body.push((trimmed.len() + usize::from(pad)) as u8);
        if pad {
            body.push(0);
        }
        body.extend_from_slice(trimmed);
    }
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    out
}

/// The kind of key in a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKey {
    Rsa,
    P256,
    P384,
    P521,
}

impl PeerKey {
    fn name(self) -> &'static str {
        match self {
            PeerKey::Rsa => "RSA",
            PeerKey::P256 => "P-256",
            PeerKey::P384 => "P-384",
            PeerKey::P521 => "P-521",
        }
    }
}

/// The certificate's key type and the raw key aws-lc-rs verifies with (PKCS#1
/// RSAPublicKey, or the uncompressed EC point).
fn certificate_key(cert_der: &[u8]) -> Result<(PeerKey, Vec<u8>), AuthError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| AuthError::BadCertificate(e.to_string()))?;
    let spki = cert.public_key();
    let oid = spki.algorithm.algorithm.to_id_string();
    let key = spki.subject_public_key.data.to_vec();
    let kind = match oid.as_str() {
        "1.2.840.113549.1.1.1" => PeerKey::Rsa,
        "1.2.840.10045.2.1" => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => PeerKey::P256,
                Some("1.3.132.0.34") => PeerKey::P384,
                Some("1.3.132.0.35") => PeerKey::P521,
                _ => return Err(AuthError::BadCertificate("unsupported elliptic curve".into())),
            }
        }
        other => return Err(AuthError::BadCertificate(format!("unsupported public key algorithm {other}"))),
    };
    Ok((kind, key))
}

/// Verifies the peer's AUTH payload (`method`, `data`) over `octets` with the key of its
/// end-entity certificate. Accepts methods 1, 9–11 and 14.
pub fn verify_signature(cert_der: &[u8], auth_method: u8, data: &[u8], octets: &[u8]) -> Result<(), AuthError> {
    let (kind, key) = certificate_key(cert_der)?;
    let mismatch = || AuthError::KeyMismatch { method: auth_method, key: kind.name() };
    let (algorithm, signature): (&'static dyn VerificationAlgorithm, &[u8]) = match auth_method {
        method::RSA_SIGNATURE if kind == PeerKey::Rsa => {
            (&signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, data)
        }
        method::ECDSA_SHA256_P256 if kind == PeerKey::P256 => (&signature::ECDSA_P256_SHA256_FIXED, data),
        method::ECDSA_SHA384_P384 if kind == PeerKey::P384 => (&signature::ECDSA_P384_SHA384_FIXED, data),
        method::ECDSA_SHA512_P521 if kind == PeerKey::P521 => (&signature::ECDSA_P521_SHA512_FIXED, data),
        method::RSA_SIGNATURE | method::ECDSA_SHA256_P256 | method::ECDSA_SHA384_P384 | method::ECDSA_SHA512_P521 => {
            return Err(mismatch());
        }
        method::DIGITAL_SIGNATURE => {
            let (&len, rest) = data.split_first().ok_or(AuthError::Malformed)?;
            if rest.len() < usize::from(len) {
                return Err(AuthError::Malformed);
            }
            let (alg, sig) = rest.split_at(usize::from(len));
            (digital_signature_algorithm(alg, kind).ok_or(AuthError::UnsupportedSignatureAlgorithm)?, sig)
        }
        other => return Err(AuthError::UnsupportedMethod(other)),
    };
    UnparsedPublicKey::new(algorithm, &key).verify(octets, signature).map_err(|_| AuthError::BadSignature)
}

/// Maps an RFC 7427 AlgorithmIdentifier to a verification algorithm for this key type.
fn digital_signature_algorithm(alg: &[u8], kind: PeerKey) -> Option<&'static dyn VerificationAlgorithm> {
    use signature as s;
    let found: &'static dyn VerificationAlgorithm = match (alg, kind) {
        (ALG_SHA1_RSA, PeerKey::Rsa) => &s::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        (ALG_SHA256_RSA, PeerKey::Rsa) => &s::RSA_PKCS1_2048_8192_SHA256,
        (ALG_SHA384_RSA, PeerKey::Rsa) => &s::RSA_PKCS1_2048_8192_SHA384,
        (ALG_SHA512_RSA, PeerKey::Rsa) => &s::RSA_PKCS1_2048_8192_SHA512,
        (ALG_ECDSA_SHA256, PeerKey::P256) => &s::ECDSA_P256_SHA256_ASN1,
        (ALG_ECDSA_SHA384, PeerKey::P256) => &s::ECDSA_P256_SHA384_ASN1,
        (ALG_ECDSA_SHA512, PeerKey::P256) => &s::ECDSA_P256_SHA512_ASN1,
        (ALG_ECDSA_SHA256, PeerKey::P384) => &s::ECDSA_P384_SHA256_ASN1,
        (ALG_ECDSA_SHA384, PeerKey::P384) => &s::ECDSA_P384_SHA384_ASN1,
        (ALG_ECDSA_SHA512, PeerKey::P384) => &s::ECDSA_P384_SHA512_ASN1,
        (ALG_ECDSA_SHA256, PeerKey::P521) => &s::ECDSA_P521_SHA256_ASN1,
        (ALG_ECDSA_SHA384, PeerKey::P521) => &s::ECDSA_P521_SHA384_ASN1,
        (ALG_ECDSA_SHA512, PeerKey::P521) => &s::ECDSA_P521_SHA512_ASN1,
        (_, PeerKey::Rsa) => {
            // RSASSA-PSS: SEQUENCE { OID, params }, the first hash OID in the params names
            // the hash; aws-lc-rs checks MGF1 with the same hash and salt = hash length,
            // which is what RFC 7427 Appendix A.4 and strongSwan use.
            let after_oid = alg.get(2..)?.strip_prefix(OID_RSASSA_PSS)?;
            let at = after_oid.windows(OID_SHA2_PREFIX.len()).position(|w| w == OID_SHA2_PREFIX)?;
            match after_oid.get(at + OID_SHA2_PREFIX.len())? {
                1 => &s::RSA_PSS_2048_8192_SHA256,
                2 => &s::RSA_PSS_2048_8192_SHA384,
                3 => &s::RSA_PSS_2048_8192_SHA512,
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(found)
}

/// Shared-key MIC (method 2): prf(prf(secret, "Key Pad for IKEv2"), octets); after EAP the
/// secret is the MSK (RFC 7296 §2.15–2.16).
pub fn shared_key_mic(prf: PrfAlgorithm, secret: &[u8], octets: &[u8]) -> Vec<u8> {
    let padded = prf.prf(secret, &[b"Key Pad for IKEv2"]);
    prf.prf(&padded, &[octets])
}

/// Whether an ID payload names the certificate's subject: a DN equal to the subject, or
/// an FQDN / e-mail / IP address present in the subjectAltName (RFC 4945 §3.1).
pub fn identity_matches_certificate(id: &Identification, cert_der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else { return false };
    if id.id_type == id_type::DER_ASN1_DN {
        return cert.subject().as_raw() == id.data.as_slice();
    }
    // Apple's clients send their LocalIdentifier as an FQDN or e-mail ID, and the
    // certificates `p2sgw pki issue` makes name the user in the common name only.
    let names_the_common_name = matches!(id.id_type, id_type::FQDN | id_type::RFC822_ADDR)
        && cert.subject().iter_common_name().any(|cn| cn.as_str().is_ok_and(|cn| cn.as_bytes() == id.data.as_slice()));
    if names_the_common_name {
        return true;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else { return false };
    san.value.general_names.iter().any(|name| match (id.id_type, name) {
        (id_type::FQDN, GeneralName::DNSName(dns)) => dns.as_bytes().eq_ignore_ascii_case(&id.data),
        (id_type::RFC822_ADDR, GeneralName::RFC822Name(mail)) => mail.as_bytes().eq_ignore_ascii_case(&id.data),
        (id_type::IPV4_ADDR | id_type::IPV6_ADDR, GeneralName::IPAddress(ip)) => *ip == id.data.as_slice(),
        _ => false,
    })
}

/// The subject DN of a certificate as text, for events and logs.
pub fn certificate_subject(cert_der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(cert_der).map(|(_, c)| c.subject().to_string()).unwrap_or_default()
}

/// The ID payload that names our certificate: its first DNS name, else its first IP
/// address, else its subject DN.
pub fn identity_for_certificate(cert_der: &[u8]) -> Result<Identification, AuthError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| AuthError::BadCertificate(e.to_string()))?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    return Ok(Identification { id_type: id_type::FQDN, data: dns.as_bytes().to_vec() });
                }
                GeneralName::IPAddress(ip) if ip.len() == 4 || ip.len() == 16 => {
                    let kind = if ip.len() == 4 { id_type::IPV4_ADDR } else { id_type::IPV6_ADDR };
                    return Ok(Identification { id_type: kind, data: ip.to_vec() });
                }
                _ => {}
            }
        }
    }
    Ok(Identification { id_type: id_type::DER_ASN1_DN, data: cert.subject().as_raw().to_vec() })
}

/// An IP address ID payload.
pub fn ip_identity(ip: IpAddr) -> Identification {
    match ip {
        IpAddr::V4(a) => Identification { id_type: id_type::IPV4_ADDR, data: a.octets().to_vec() },
        IpAddr::V6(a) => Identification { id_type: id_type::IPV6_ADDR, data: a.octets().to_vec() },
    }
}

/// SHA-1 of a certificate's SubjectPublicKeyInfo: what CERTREQ carries per trusted CA.
pub fn spki_sha1(cert_der: &[u8]) -> Option<[u8; 20]> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.public_key().raw);
    digest.as_ref().try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ike::test_hex as hex;

    fn cert_and_key(alg: &'static rcgen::SignatureAlgorithm) -> (Vec<u8>, SigningKey) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["peer.test".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::IpAddress("192.0.2.9".parse().unwrap()));
        let cert = params.self_signed(&key).unwrap();
        (cert.der().to_vec(), SigningKey::from_pkcs8(&key.serialize_der()).unwrap())
    }

    /// Round trips through aws-lc-rs' verifiers. The method 1 (SHA-1) signer was also
    /// checked once against Python `cryptography`: PKCS#1 v1.5 is deterministic and its
    /// signature over the same key and message was byte-identical.
    #[test]
    fn signatures_verify_for_every_key_type_and_method() {
        let octets = b"the signed octets";
        for alg in [&rcgen::PKCS_RSA_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let (cert, key) = cert_and_key(alg);
            for hashes in [&[][..], &[HASH_SHA256, HASH_SHA384][..], &[HASH_SHA512][..]] {
                let (m, data) = key.sign(octets, hashes).unwrap();
                verify_signature(&cert, m, &data, octets).unwrap();
                assert_eq!(verify_signature(&cert, m, &data, b"other octets"), Err(AuthError::BadSignature));
                let expected_method = match (&key, hashes.is_empty()) {
                    (_, false) => method::DIGITAL_SIGNATURE,
                    (SigningKey::Rsa(..), true) => method::RSA_SIGNATURE,
                    (SigningKey::EcdsaP256(_), true) => method::ECDSA_SHA256_P256,
                    (SigningKey::EcdsaP384(_), true) => method::ECDSA_SHA384_P384,
                };
                assert_eq!(m, expected_method);
            }
        }
    }

    #[test]
    fn methods_must_match_the_key() {
        let (cert, key) = cert_and_key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, raw) = key.sign(b"x", &[]).unwrap();
        assert_eq!(
            verify_signature(&cert, method::ECDSA_SHA384_P384, &raw, b"x"),
            Err(AuthError::KeyMismatch { method: 10, key: "P-256" })
        );
        assert_eq!(verify_signature(&cert, 3, &raw, b"x"), Err(AuthError::UnsupportedMethod(3)));
        assert_eq!(verify_signature(&cert, 14, &[200, 1], b"x"), Err(AuthError::Malformed));
        // Method 14 with an RSA algorithm for an EC key.
        let mut wrong = vec![ALG_SHA256_RSA.len() as u8];
        wrong.extend_from_slice(ALG_SHA256_RSA);
        assert_eq!(verify_signature(&cert, 14, &wrong, b"x"), Err(AuthError::UnsupportedSignatureAlgorithm));
    }

    /// RSASSA-PSS with SHA-256 (RFC 7427 Appendix A.4.1's AlgorithmIdentifier), signed
    /// with aws-lc-rs' PSS encoding.
    #[test]
    fn rsa_pss_digital_signature_verifies() {
        let (cert, key) = cert_and_key(&rcgen::PKCS_RSA_SHA256);
        let SigningKey::Rsa(rsa, _) = &key else { panic!("RSA key") };
        let alg = hex("3041 0609 2a864886f70d01010a 3034 a00f 300d 0609 608648016503040201 0500
             a11c 301a 0609 2a864886f70d010108 300d 0609 608648016503040201 0500 a203 020120");
        let mut sig = vec![0; rsa.public_modulus_len()];
        rsa.sign(&signature::RSA_PSS_SHA256, &SystemRandom::new(), b"octets", &mut sig).unwrap();
        verify_signature(&cert, 14, &digital_signature(&alg, &sig), b"octets").unwrap();
    }

    /// RFC 4754 §8.1's signature is raw r||s; converting to DER is checked against the
    /// DER ASN.1 rules (leading zero added for a high bit, stripped otherwise).
    #[test]
    fn fixed_signatures_convert_to_der() {
        let mut fixed = vec![0u8; 64];
        fixed[0] = 0x80;
        fixed[63] = 1;
        let der = fixed_to_der(&fixed);
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x21, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x01]);
    }

    /// RFC 4718-style MIC over a known input, computed independently with Python:
    /// hmac(hmac(b"secret", b"Key Pad for IKEv2", sha256).digest(), b"octets", sha256).
    #[test]
    fn shared_key_mic_matches_independent_computation() {
        assert_eq!(shared_key_mic(PrfAlgorithm::HmacSha256, b"secret", b"octets"), hex(PY_MIC));
    }
    const PY_MIC: &str = "93d6b432e988c4c184f49457ef7ddfef938f1179de4120120d1cc523b368d33b";

    #[test]
    fn identities_match_certificates() {
        let (cert, _) = cert_and_key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let fqdn = Identification { id_type: id_type::FQDN, data: b"PEER.test".to_vec() };
        assert!(identity_matches_certificate(&fqdn, &cert));
        assert!(!identity_matches_certificate(
            &Identification { id_type: id_type::FQDN, data: b"x.test".to_vec() },
            &cert
        ));
        assert!(identity_matches_certificate(&ip_identity("192.0.2.9".parse().unwrap()), &cert));
        let dn = Identification {
            id_type: id_type::DER_ASN1_DN,
            data: x509_parser::parse_x509_certificate(&cert).unwrap().1.subject().as_raw().to_vec(),
        };
        assert!(identity_matches_certificate(&dn, &cert));
        assert_eq!(identity_for_certificate(&cert).unwrap(), fqdn_lower());

        // A certificate naming its user in the CN only (as `p2sgw pki issue` makes them),
        // with the FQDN or e-mail ID an Apple client sends.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        let cn_only = params.self_signed(&key).unwrap().der().to_vec();
        for id_type in [id_type::FQDN, id_type::RFC822_ADDR] {
            assert!(identity_matches_certificate(&Identification { id_type, data: b"alice".to_vec() }, &cn_only));
            assert!(!identity_matches_certificate(&Identification { id_type, data: b"alic".to_vec() }, &cn_only));
        }
        assert_eq!(spki_sha1(&cert).map(|h| h.len()), Some(20));
    }

    fn fqdn_lower() -> Identification {
        Identification { id_type: id_type::FQDN, data: b"peer.test".to_vec() }
    }
}
