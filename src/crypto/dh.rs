//! Ephemeral key exchange for IKEv2 (RFC 7296 §3.4): the groups p2sgw offers.
//!
//! Encodings are IKE's, not SEC1's: ECP public values are `x || y` without the 0x04
//! prefix and the shared secret is the x coordinate alone (RFC 5903 §7); X25519 uses the
//! raw 32-byte u-coordinate (RFC 8031); MODP values are big-endian, left-padded to the
//! modulus length (RFC 7296 §3.4).
//!
//! Elliptic curves come from aws-lc-rs (constant time, points validated on receipt).
//! MODP groups use `num-bigint`, which is NOT constant time: group 2 exists only for
//! stock Windows clients and group 14 as a fallback; both are offered only when
//! configured, and the exponent is fresh for every exchange, which bounds what a timing
//! side channel could learn.

use std::fmt;

use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, PrivateKey, UnparsedPublicKey, X25519};
use num_bigint::BigUint;

/// The IKEv2 transform type 4 (key exchange) identifiers p2sgw implements.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// 1024-bit MODP (RFC 2409 §6.2); legacy, only for stock Windows.
    Modp1024,
    /// 2048-bit MODP (RFC 3526 §3).
    Modp2048,
    /// NIST P-256 (RFC 5903).
    Ecp256,
    /// NIST P-384 (RFC 5903).
    Ecp384,
    /// Curve25519 (RFC 8031).
    Curve25519,
}

/// Why a key exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhError {
    #[error("the peer's {group} public value has the wrong length ({actual} bytes, expected {expected})")]
    WrongLength { group: DhGroup, expected: usize, actual: usize },
    #[error("the peer's {group} public value is not a valid group element")]
    InvalidPublicValue { group: DhGroup },
    #[error("the {group} key exchange failed")]
    Failed { group: DhGroup },
}

impl DhGroup {
    pub const ALL: [DhGroup; 5] = [Self::Curve25519, Self::Ecp256, Self::Ecp384, Self::Modp2048, Self::Modp1024];

    /// The IANA "Transform Type 4" number.
    pub fn id(self) -> u16 {
        match self {
            Self::Modp1024 => 2,
            Self::Modp2048 => 14,
            Self::Ecp256 => 19,
            Self::Ecp384 => 20,
            Self::Curve25519 => 31,
        }
    }

    pub fn from_id(id: u16) -> Option<DhGroup> {
        Self::ALL.into_iter().find(|g| g.id() == id)
    }

    /// Length of the public value in a KE payload.
    pub fn public_len(self) -> usize {
        match self {
            Self::Modp1024 => 128,
            Self::Modp2048 => 256,
            Self::Ecp256 => 64,
            Self::Ecp384 => 96,
            Self::Curve25519 => 32,
        }
    }

    /// The strongSwan-style name (`modp1024`, `ecp256`, `curve25519`...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Modp1024 => "modp1024",
            Self::Modp2048 => "modp2048",
            Self::Ecp256 => "ecp256",
            Self::Ecp384 => "ecp384",
            Self::Curve25519 => "curve25519",
        }
    }

    fn modp_prime_hex(self) -> Option<&'static str> {
        match self {
            Self::Modp1024 => Some(MODP_1024_PRIME),
            Self::Modp2048 => Some(MODP_2048_PRIME),
            _ => None,
        }
    }
}

impl fmt::Display for DhGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// RFC 2409 §6.2, the "Second Oakley Group" (generator 2).
const MODP_1024_PRIME: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF";
/// RFC 3526 §3, the 2048-bit MODP group (generator 2).
const MODP_2048_PRIME: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF";

/// Length of a fresh MODP private exponent: twice the groups' security strength
/// (RFC 3526 §8 estimates 2048-bit MODP at 110-160 bits), as strongSwan does.
const MODP_EXPONENT_BYTES: usize = 40;

fn modp_prime(group: DhGroup) -> BigUint {
    let hex = group.modp_prime_hex().expect("modp_prime is only called for MODP groups");
    BigUint::parse_bytes(hex.as_bytes(), 16).expect("the MODP prime constants are valid hex")
}

fn left_padded(value: &BigUint, len: usize) -> Vec<u8> {
    let bytes = value.to_bytes_be();
    let mut out = vec![0; len.saturating_sub(bytes.len())];
    out.extend_from_slice(&bytes);
    out
}

enum Secret {
    Curve(PrivateKey),
    Modp(BigUint),
}

/// One side's ephemeral private value and its public value, ready for the KE payload.
pub struct KeyExchange {
    group: DhGroup,
    secret: Secret,
    public: Vec<u8>,
}

impl fmt::Debug for KeyExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyExchange({})", self.group)
    }
}

impl KeyExchange {
    /// A fresh ephemeral key pair.
    pub fn generate(group: DhGroup) -> Result<KeyExchange, DhError> {
        match group {
            DhGroup::Modp1024 | DhGroup::Modp2048 => {
                let mut exponent = [0u8; MODP_EXPONENT_BYTES];
                aws_lc_rs::rand::fill(&mut exponent).map_err(|_| DhError::Failed { group })?;
                Self::from_modp_exponent(group, &exponent)
            }
            _ => {
                let key = PrivateKey::generate(curve_algorithm(group)).map_err(|_| DhError::Failed { group })?;
                Self::from_curve_key(group, key)
            }
        }
    }

    /// A key pair from a known private value (test vectors): a scalar for ECP groups,
    /// the 32-byte scalar for X25519, a big-endian exponent for MODP groups.
    pub fn from_private(group: DhGroup, private: &[u8]) -> Result<KeyExchange, DhError> {
        match group {
            DhGroup::Modp1024 | DhGroup::Modp2048 => Self::from_modp_exponent(group, private),
            _ => {
                let key = PrivateKey::from_private_key(curve_algorithm(group), private)
                    .map_err(|_| DhError::Failed { group })?;
                Self::from_curve_key(group, key)
            }
        }
    }

    fn from_curve_key(group: DhGroup, key: PrivateKey) -> Result<KeyExchange, DhError> {
        let public = key.compute_public_key().map_err(|_| DhError::Failed { group })?;
        let public = match group {
            // SEC1 uncompressed: drop the 0x04 prefix, IKE sends x || y.
            DhGroup::Ecp256 | DhGroup::Ecp384 => public.as_ref()[1..].to_vec(),
            _ => public.as_ref().to_vec(),
        };
        Ok(KeyExchange { group, secret: Secret::Curve(key), public })
    }

    fn from_modp_exponent(group: DhGroup, exponent: &[u8]) -> Result<KeyExchange, DhError> {
        let prime = modp_prime(group);
        let exponent = BigUint::from_bytes_be(exponent);
        let public = BigUint::from(2u8).modpow(&exponent, &prime);
        Ok(KeyExchange { group, public: left_padded(&public, group.public_len()), secret: Secret::Modp(exponent) })
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// Our public value, as it goes into the KE payload.
    pub fn public_value(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret g^ir in IKE's encoding, after checking the peer's value.
    pub fn agree(&self, peer_public: &[u8]) -> Result<Vec<u8>, DhError> {
        let group = self.group;
        let expected = group.public_len();
        if peer_public.len() != expected {
            return Err(DhError::WrongLength { group, expected, actual: peer_public.len() });
        }
        match &self.secret {
            Secret::Curve(key) => {
                let mut encoded = Vec::with_capacity(expected + 1);
                if matches!(group, DhGroup::Ecp256 | DhGroup::Ecp384) {
                    encoded.push(0x04);
                }
                encoded.extend_from_slice(peer_public);
                let peer = UnparsedPublicKey::new(curve_algorithm(group), &encoded);
                let secret = agreement::agree(key, peer, DhError::InvalidPublicValue { group }, |s| Ok(s.to_vec()))?;
                // RFC 7748 §6.1 / RFC 8031 §2.3: an all-zero output means a small-order point.
                if secret.iter().all(|&b| b == 0) {
                    return Err(DhError::InvalidPublicValue { group });
                }
                Ok(secret)
            }
            Secret::Modp(exponent) => {
                let prime = modp_prime(group);
                let peer = BigUint::from_bytes_be(peer_public);
                // 1 < y < p-1 (RFC 2631 §2.1.5 style check): rejects the values that
                // would force a trivial shared secret.
                let one = BigUint::from(1u8);
                if peer <= one || peer >= &prime - &one {
                    return Err(DhError::InvalidPublicValue { group });
                }
                Ok(left_padded(&peer.modpow(exponent, &prime), expected))
            }
        }
    }
}

fn curve_algorithm(group: DhGroup) -> &'static agreement::Algorithm {
    match group {
        DhGroup::Ecp256 => &ECDH_P256,
        DhGroup::Ecp384 => &ECDH_P384,
        _ => &X25519,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hex;

    /// RFC 5903 §8.1 (ECP-256): i, g^i, g^r and the shared x coordinate.
    #[test]
    fn ecp256_rfc5903_vector() {
        let i = KeyExchange::from_private(
            DhGroup::Ecp256,
            &hex("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433"),
        )
        .unwrap();
        assert_eq!(
            i.public_value(),
            hex("DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180
                 5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3")
        );
        let gr = hex("D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63
                      56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB");
        assert_eq!(i.agree(&gr).unwrap(), hex("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE"));
    }

    /// RFC 5903 §8.2 (ECP-384); g^i recomputed with Python `cryptography` to match.
    #[test]
    fn ecp384_rfc5903_vector() {
        let i = KeyExchange::from_private(
            DhGroup::Ecp384,
            &hex("099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655E35B538041E649EE3FAEF896783AB194"),
        )
        .unwrap();
        assert_eq!(
            i.public_value(),
            hex("667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6DE3AC808ACB4BDB4C88732AEE95F41AA
                 9482ED1FC0EEB9CAFC4984625CCFC23F65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C")
        );
        let gr = hex(
            "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D0D1AC43A0336DEF96FDA41D0774A3571
                      DCFBEC7AACF3196472169E838430367F66EEBE3C6E70C416DD5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
        );
        assert_eq!(
            i.agree(&gr).unwrap(),
            hex("11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4D603135569B9E9D09CF5D4A270F59746")
        );
    }

    /// RFC 7748 §6.1 (Alice's key and Bob's public value).
    #[test]
    fn x25519_rfc7748_vector() {
        let alice = KeyExchange::from_private(
            DhGroup::Curve25519,
            &hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
        )
        .unwrap();
        assert_eq!(alice.public_value(), hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
        let bob_public = hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        assert_eq!(
            alice.agree(&bob_public).unwrap(),
            hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        );
        // The all-zero point has small order: the output would be zero.
        assert_eq!(alice.agree(&[0; 32]), Err(DhError::InvalidPublicValue { group: DhGroup::Curve25519 }));
    }

    #[test]
    fn ecp_rejects_points_off_the_curve_and_wrong_lengths() {
        let k = KeyExchange::generate(DhGroup::Ecp256).unwrap();
        let mut bad = KeyExchange::generate(DhGroup::Ecp256).unwrap().public_value().to_vec();
        bad[63] ^= 1;
        assert_eq!(k.agree(&bad), Err(DhError::InvalidPublicValue { group: DhGroup::Ecp256 }));
        assert!(matches!(k.agree(&bad[..32]), Err(DhError::WrongLength { expected: 64, actual: 32, .. })));
    }

    /// Typos in a prime constant would break interop silently; this checks both are safe
    /// primes with generator 2 in the prime-order subgroup: 2^(p-1) = 1 (Fermat) and
    /// 2^q = 1 with q = (p-1)/2 (2 is a quadratic residue since p = 7 mod 8).
    #[test]
    fn modp_primes_are_the_rfc_safe_primes() {
        for (group, bits) in [(DhGroup::Modp1024, 1024u64), (DhGroup::Modp2048, 2048)] {
            let p = modp_prime(group);
            assert_eq!(p.bits(), bits);
            let one = BigUint::from(1u8);
            let two = BigUint::from(2u8);
            assert_eq!(two.modpow(&(&p - &one), &p), one, "{group}: Fermat test");
            assert_eq!(two.modpow(&((&p - &one) >> 1), &p), one, "{group}: 2 generates the q-subgroup");
            assert_eq!(&p % BigUint::from(8u8), BigUint::from(7u8));
            // RFC 3526: the top and bottom 64 bits are all ones.
            assert!(p.to_bytes_be()[..8].iter().chain(&p.to_bytes_be()[bits as usize / 8 - 8..]).all(|&b| b == 0xff));
        }
    }

    #[test]
    fn every_group_agrees_both_ways() {
        for group in DhGroup::ALL {
            let a = KeyExchange::generate(group).unwrap();
            let b = KeyExchange::generate(group).unwrap();
            assert_eq!(a.public_value().len(), group.public_len());
            let ab = a.agree(b.public_value()).unwrap();
            assert_eq!(ab, b.agree(a.public_value()).unwrap(), "{group}");
            let expected_secret_len = if matches!(group, DhGroup::Ecp256 | DhGroup::Ecp384) {
                group.public_len() / 2
            } else {
                group.public_len()
            };
            assert_eq!(ab.len(), expected_secret_len);
            assert_eq!(DhGroup::from_id(group.id()), Some(group));
        }
    }

    #[test]
    fn modp_rejects_trivial_values() {
        let k = KeyExchange::generate(DhGroup::Modp1024).unwrap();
        let mut one = vec![0; 128];
        one[127] = 1;
        assert!(k.agree(&one).is_err());
        assert!(k.agree(&[0xff; 128]).is_err());
        assert!(k.agree(&[0; 128]).is_err());
    }
}
