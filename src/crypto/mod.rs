//! One place for the cryptography every protocol uses: AEAD contexts, anti-replay
//! windows and legacy PRFs. Protocols say *what* they derive; this module says *how*.

pub mod aead;
pub mod dh;
pub mod mschapv2;
pub mod prf;
pub mod replay;

pub use aead::{AeadAlgorithm, AeadKey, NONCE_LEN, TAG_LEN};
pub use replay::{ReplayError, ReplayWindow};

/// Failures of the cryptographic primitives themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("{algorithm} needs a {expected}-byte key, got {actual} bytes")]
    WrongKeyLength { algorithm: AeadAlgorithm, expected: usize, actual: usize },
    #[error("authentication failed: wrong key, or the data was tampered with")]
    AuthenticationFailed,
    #[error("encryption failed (input too long for the cipher)")]
    SealFailed,
}
