//! PKCS#12 (PFX) files: a client's certificate and private key in the one container Apple
//! configuration profiles and Windows' certificate import take.

use std::ffi::CString;
use std::os::raw::c_long;

use anyhow::{Result, anyhow, bail};
use aws_lc_sys as sys;

/// A PKCS#12 file holding `cert_der` and its private key (`key_pkcs8_der`), both
/// labelled `friendly_name`, protected by `password`.
///
/// Key and certificate are encrypted with PBE-SHA1-3DES and the MAC is HMAC-SHA1, the
/// legacy algorithms: Apple's and older Windows' importers refuse PBES2 (AES) files, and
/// the password travels beside the file in the profiles anyway, so stronger encryption
/// would protect nothing.
pub fn pkcs12(cert_der: &[u8], key_pkcs8_der: &[u8], friendly_name: &str, password: &str) -> Result<Vec<u8>> {
    let password = CString::new(password).map_err(|_| anyhow!("a PKCS#12 password cannot contain a NUL byte"))?;
    let name = CString::new(friendly_name).map_err(|_| anyhow!("a PKCS#12 name cannot contain a NUL byte"))?;
    let cert_len = c_long::try_from(cert_der.len()).map_err(|_| anyhow!("certificate too large"))?;
    let pbe = sys::NID_pbe_WithSHA1And3_Key_TripleDES_CBC;
    // SAFETY: every input pointer borrows a live slice or CString for the duration of the
    // call that uses it; each object aws-lc returns is checked for NULL, freed exactly once,
    // and not used after being freed; `out` has exactly the length i2d_PKCS12 reported.
    unsafe {
        let mut cursor = cert_der.as_ptr();
        let cert = sys::d2i_X509(std::ptr::null_mut(), &mut cursor, cert_len);
        if cert.is_null() {
            bail!("the client certificate is not valid DER");
        }
        let mut cbs = sys::CBS { data: key_pkcs8_der.as_ptr(), len: key_pkcs8_der.len() };
        let key = sys::EVP_parse_private_key(&mut cbs);
        if key.is_null() {
            sys::X509_free(cert);
            bail!("the client private key is not a PKCS#8 key aws-lc can read");
        }
        let p12 = sys::PKCS12_create(
            password.as_ptr(),
            name.as_ptr(),
            key,
            cert,
            std::ptr::null(),
            pbe,
            pbe,
            sys::PKCS12_DEFAULT_ITER,
            sys::PKCS12_DEFAULT_ITER,
            0,
        );
        sys::EVP_PKEY_free(key);
        sys::X509_free(cert);
        if p12.is_null() {
            bail!("making the PKCS#12 file failed");
        }
        let len = sys::i2d_PKCS12(p12, std::ptr::null_mut());
        let Ok(len) = usize::try_from(len) else {
            sys::PKCS12_free(p12);
            bail!("encoding the PKCS#12 file failed");
        };
        let mut out = vec![0u8; len];
        let mut write = out.as_mut_ptr();
        let written = sys::i2d_PKCS12(p12, &mut write);
        sys::PKCS12_free(p12);
        if usize::try_from(written).ok() != Some(len) {
            bail!("encoding the PKCS#12 file failed");
        }
        Ok(out)
    }
}

/// 128 random bits in hex: the PKCS#12 password.
pub fn random_password() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What aws-lc reads back from a PKCS#12 file: the certificate's DER, if the password opens it.
#[cfg(test)]
pub(super) fn certificate_in(p12_der: &[u8], password: &str) -> Option<Vec<u8>> {
    let password = CString::new(password).unwrap();
    // SAFETY: test-only FFI over live buffers; every returned object is freed once.
    unsafe {
        let mut cursor = p12_der.as_ptr();
        let p12 = sys::d2i_PKCS12(std::ptr::null_mut(), &mut cursor, p12_der.len());
        assert!(!p12.is_null(), "not a PKCS#12 structure");
        let (mut key, mut cert, mut chain) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
        let ok = sys::PKCS12_parse(p12, password.as_ptr(), &mut key, &mut cert, &mut chain);
        sys::PKCS12_free(p12);
        if ok != 1 {
            return None;
        }
        assert!(!key.is_null(), "the key is in the file");
        sys::EVP_PKEY_free(key);
        let len = sys::i2d_X509(cert, std::ptr::null_mut());
        let mut der = vec![0u8; len as usize];
        let mut write = der.as_mut_ptr();
        sys::i2d_X509(cert, &mut write);
        sys::X509_free(cert);
        if !chain.is_null() {
            sys::OPENSSL_sk_free(chain.cast());
        }
        Some(der)
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::pem::PemObject as _;

    use super::*;
    use crate::pki::test_support::TempDir;

    fn cert_and_key() -> (Vec<u8>, Vec<u8>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["alice".to_string()]).unwrap().self_signed(&key).unwrap();
        (cert.der().to_vec(), key.serialize_der(), key)
    }

    #[test]
    fn pkcs12_holds_the_certificate_and_needs_the_password() {
        let (cert, key, _) = cert_and_key();
        let p12 = pkcs12(&cert, &key, "alice", "s3cret").unwrap();
        assert_eq!(certificate_in(&p12, "s3cret"), Some(cert));
        assert_eq!(certificate_in(&p12, "wrong"), None);
    }

    /// OpenSSL's reader as a second opinion (3DES is in OpenSSL 3's default provider, so
    /// no `-legacy` is needed), when the openssl command is installed.
    #[test]
    fn openssl_reads_the_pkcs12_file() {
        let (cert, key, key_pair) = cert_and_key();
        let tmp = TempDir::new("pkcs12-openssl");
        std::fs::create_dir_all(tmp.path()).unwrap();
        let path = tmp.path().join("alice.p12");
        std::fs::write(&path, pkcs12(&cert, &key, "alice", "pa'ss word").unwrap()).unwrap();
        let Ok(out) =
            Command::new("openssl").args(["pkcs12", "-nodes", "-passin", "pass:pa'ss word", "-in"]).arg(&path).output()
        else {
            eprintln!("openssl is not installed; skipping the second opinion");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("friendlyName: alice"), "{text}");
        let pem_cert = rustls::pki_types::CertificateDer::pem_slice_iter(text.as_bytes()).next().unwrap().unwrap();
        assert_eq!(pem_cert.as_ref(), cert.as_slice());
        assert!(text.contains(key_pair.serialize_pem().trim()), "{text}");
    }

    #[test]
    fn pkcs12_refuses_a_key_that_is_not_pkcs8() {
        let (cert, _, _) = cert_and_key();
        let err = pkcs12(&cert, b"not a key", "alice", "pw").unwrap_err().to_string();
        assert!(err.contains("PKCS#8"), "{err}");
    }
}
