//! One place for the cryptography every protocol uses: AEAD contexts, anti-replay
//! windows and legacy PRFs. Protocols say *what* they derive; this module says *how*.

pub mod aead;
pub mod prf;
pub mod replay;

pub use aead::AeadAlgorithm;
