//! ESP security associations: keys from the IKEv2 KEYMAT, sealing with a sequence counter
//! that never wraps, and opening with an anti-replay window (RFC 4303 §3.3–3.4).
//!
//! An [`OutboundSa`] is shared by all workers (`Arc<OutboundSa>`), since any worker may
//! read a TUN packet for any client: sealing takes `&self` and draws sequence numbers
//! from an atomic counter. An [`InboundSa`] belongs to the worker that receives the
//! client's UDP flow: opening takes `&mut self` because it moves the replay window.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::crypto::{AeadAlgorithm, AeadKey, CryptoError, NONCE_LEN, ReplayError, ReplayWindow, TAG_LEN};

/// Salt length at the end of each KEYMAT slice (RFC 4106 §8.1, RFC 7634 §2).
pub const SALT_LEN: usize = 4;
/// Explicit IV carried in every packet (RFC 4106 §3.1, RFC 7634 §2).
pub const IV_LEN: usize = 8;
/// Integrity check value (the AEAD tag; "AES-GCM-16" means a 16-byte ICV).
pub const ICV_LEN: usize = TAG_LEN;
/// SPI and sequence number: the cleartext header, also the AAD without ESN.
const HEADER_LEN: usize = 8;
/// PadLen and NextHeader.
const TRAILER_LEN: usize = 2;
/// Padding keeps the ICV 4-byte aligned (RFC 4303 §2.4); the AEADs here need no
/// block alignment.
const ALIGNMENT: usize = 4;

/// Bytes the caller leaves free in front of the inner packet: SPI, Seq, IV.
pub const HEADROOM: usize = HEADER_LEN + IV_LEN;
/// Most bytes sealing appends behind the inner packet: padding, trailer, ICV.
pub const MAX_TAILROOM: usize = ALIGNMENT - 1 + TRAILER_LEN + ICV_LEN;
/// The shortest ESP packet that can be valid: header, IV, trailer, ICV.
pub const MIN_PACKET_LEN: usize = HEADROOM + TRAILER_LEN + ICV_LEN;

/// Next Header of a tunnelled IPv4 packet (IP-in-IP).
pub const NEXT_HEADER_IPV4: u8 = 4;
/// Next Header of a tunnelled IPv6 packet.
pub const NEXT_HEADER_IPV6: u8 = 41;
/// "No next header": a dummy packet for traffic-flow confidentiality, to be dropped
/// after it was authenticated (RFC 4303 §2.6).
pub const NO_NEXT_HEADER: u8 = 59;

/// Once this sequence number was handed out, the CHILD SA should be rekeyed.
/// A quarter of the space (about 10^9 packets) is left for the CREATE_CHILD_SA exchange
/// and its retransmissions: even one core sealing at its crypto limit (~3.6 Mpps,
/// PERFORMANCE.md) needs about five minutes to use it up.
pub const DEFAULT_REKEY_THRESHOLD: u32 = 0xC000_0000;

/// Length of one direction's KEYMAT slice: the AEAD key followed by the salt.
pub fn keymat_len(algorithm: AeadAlgorithm) -> usize {
    algorithm.key_len() + SALT_LEN
}

/// Padding (1, 2, 3, …) sealing puts after a `payload_len`-byte inner packet.
fn padding_len(payload_len: usize) -> usize {
    (ALIGNMENT - (payload_len + TRAILER_LEN) % ALIGNMENT) % ALIGNMENT
}

/// Length of the ESP packet [`OutboundSa::seal`] makes of a `payload_len`-byte inner
/// packet (`None` if that does not fit in `usize`).
pub fn sealed_len(payload_len: usize) -> Option<usize> {
    let padding = (ALIGNMENT - payload_len.checked_add(TRAILER_LEN)? % ALIGNMENT) % ALIGNMENT;
    payload_len.checked_add(HEADROOM + padding + TRAILER_LEN + ICV_LEN)
}

/// Failures building an SA from negotiated values (IKE-side errors, not packet drops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaError {
    #[error("ESP with {algorithm} needs {expected} bytes of KEYMAT per direction (key + 4-byte salt), got {actual}")]
    WrongKeymatLength { algorithm: AeadAlgorithm, expected: usize, actual: usize },
    #[error("ESP SPI {0} is reserved (SPIs 0-255 are never assigned, RFC 4303 §2.1)")]
    ReservedSpi(u32),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Why a packet could not be sealed. The packet is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealing buffer of {capacity} bytes cannot hold the {needed}-byte ESP packet")]
    BufferTooSmall { needed: usize, capacity: usize },
    #[error("all 2^32-1 sequence numbers of this SA are used up; it had to be rekeyed before")]
    SequenceExhausted,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Why a received ESP packet was dropped, for the caller's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("ESP packet of {len} bytes is shorter than header, IV, trailer and ICV ({MIN_PACKET_LEN})")]
    TooShort { len: usize },
    #[error("ESP packet for SPI {got:#010x} given to the SA with SPI {expected:#010x}")]
    WrongSpi { expected: u32, got: u32 },
    #[error("ESP sequence number refused: {0}")]
    Replay(#[from] ReplayError),
    #[error("ESP ICV check failed: wrong key, or the packet was tampered with")]
    Authentication,
    #[error("ESP padding is not 1, 2, 3, … or longer than the payload")]
    BadPadding,
}

/// The cleartext fields of an ESP packet, read without decrypting (to find the SA by
/// SPI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspHeader {
    pub spi: u32,
    pub seq: u32,
}

impl EspHeader {
    /// Reads SPI and sequence number; refuses packets too short to be valid.
    pub fn parse(packet: &[u8]) -> Result<EspHeader, OpenError> {
        if packet.len() < MIN_PACKET_LEN {
            return Err(OpenError::TooShort { len: packet.len() });
        }
        Ok(EspHeader { spi: read_u32(&packet[0..4]), seq: read_u32(&packet[4..8]) })
    }
}

fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Splits the KEYMAT of an AEAD CHILD SA (RFC 7296 §2.17, PROTOCOLS.md §3.10) into the
/// slice protecting initiator → responder traffic and the one protecting responder →
/// initiator traffic. The order is `encr_i | integ_i | encr_r | integ_r`; AEADs have no
/// integrity keys, so it is `key_i | salt_i | key_r | salt_r`. `keymat` must be exactly
/// `2 * keymat_len(algorithm)` bytes (take that much from prf+).
pub fn split_child_keymat(algorithm: AeadAlgorithm, keymat: &[u8]) -> Result<(&[u8], &[u8]), SaError> {
    let one = keymat_len(algorithm);
    if keymat.len() != 2 * one {
        return Err(SaError::WrongKeymatLength { algorithm, expected: 2 * one, actual: keymat.len() });
    }
    Ok(keymat.split_at(one))
}

/// The pair of SAs of one CHILD SA as the gateway (IKE responder) uses them. The
/// initiator's traffic arrives with the SPI the gateway chose (`inbound_spi`) under the
/// initiator's keys; the gateway sends with the SPI from the client's SA payload
/// (`outbound_spi`) under the responder's keys.
pub fn responder_sas(
    algorithm: AeadAlgorithm,
    keymat: &[u8],
    inbound_spi: u32,
    outbound_spi: u32,
) -> Result<(InboundSa, OutboundSa), SaError> {
    let (initiator_keys, responder_keys) = split_child_keymat(algorithm, keymat)?;
    let inbound = InboundSa::new(inbound_spi, SaKey::from_keymat(algorithm, initiator_keys)?)?;
    let outbound = OutboundSa::new(outbound_spi, SaKey::from_keymat(algorithm, responder_keys)?)?;
    Ok((inbound, outbound))
}

/// The AEAD key and salt of one direction.
pub struct SaKey {
    aead: AeadKey,
    salt: [u8; SALT_LEN],
}

impl SaKey {
    /// Takes one direction's KEYMAT slice as IKEv2 produces it: the AEAD key (16 bytes
    /// for AES-128-GCM, 32 for AES-256-GCM and ChaCha20-Poly1305) followed by the
    /// 4-byte salt.
    pub fn from_keymat(algorithm: AeadAlgorithm, keymat: &[u8]) -> Result<SaKey, SaError> {
        let expected = keymat_len(algorithm);
        let Some((key, salt)) = keymat.split_last_chunk::<SALT_LEN>().filter(|_| keymat.len() == expected) else {
            return Err(SaError::WrongKeymatLength { algorithm, expected, actual: keymat.len() });
        };
        Ok(SaKey { aead: AeadKey::new(algorithm, key)?, salt: *salt })
    }

    pub fn algorithm(&self) -> AeadAlgorithm {
        self.aead.algorithm()
    }

    fn nonce(&self, iv: &[u8; IV_LEN]) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..SALT_LEN].copy_from_slice(&self.salt);
        nonce[SALT_LEN..].copy_from_slice(iv);
        nonce
    }

    /// Seals `buf[HEADROOM..HEADROOM + payload_len]` into an ESP packet at
    /// `buf[..n]` and returns `n`. The caller guarantees `iv` never repeats under this key.
    fn seal_in_place(
        &self,
        spi: u32,
        seq: u32,
        iv: [u8; IV_LEN],
        buf: &mut [u8],
        payload_len: usize,
        next_header: u8,
    ) -> Result<usize, SealError> {
        let total = checked_sealed_len(buf.len(), payload_len)?;
        let padding = padding_len(payload_len);
        buf[0..4].copy_from_slice(&spi.to_be_bytes());
        buf[4..HEADER_LEN].copy_from_slice(&seq.to_be_bytes());
        buf[HEADER_LEN..HEADROOM].copy_from_slice(&iv);
        let trailer_at = HEADROOM + payload_len;
        for (i, byte) in buf[trailer_at..trailer_at + padding].iter_mut().enumerate() {
            *byte = i as u8 + 1;
        }
        buf[trailer_at + padding] = padding as u8;
        buf[trailer_at + padding + 1] = next_header;

        let (header, rest) = buf[..total].split_at_mut(HEADROOM);
        let (plaintext, icv) = rest.split_at_mut(rest.len() - ICV_LEN);
        let tag = self.aead.seal_in_place_separate_tag(&self.nonce(&iv), &header[..HEADER_LEN], plaintext)?;
        icv.copy_from_slice(&tag);
        Ok(total)
    }

    /// Authenticates and decrypts a packet in place; the plaintext (payload, padding,
    /// trailer) then lies at `HEADROOM..len - ICV_LEN`.
    fn decrypt_in_place(&self, packet: &mut [u8]) -> Result<(), OpenError> {
        let too_short = OpenError::TooShort { len: packet.len() };
        let (header, rest) = packet.split_first_chunk_mut::<HEADROOM>().ok_or(too_short)?;
        let (ciphertext, icv) = rest.split_last_chunk_mut::<ICV_LEN>().ok_or(too_short)?;
        let iv: [u8; IV_LEN] = std::array::from_fn(|i| header[HEADER_LEN + i]);
        self.aead
            .open_in_place_separate_tag(&self.nonce(&iv), &header[..HEADER_LEN], icv, ciphertext)
            .map_err(|_| OpenError::Authentication)
    }
}

impl fmt::Debug for SaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaKey({})", self.algorithm())
    }
}

/// Total sealed length for a `payload_len`-byte inner packet, checked against the buffer.
fn checked_sealed_len(capacity: usize, payload_len: usize) -> Result<usize, SealError> {
    let needed = sealed_len(payload_len).unwrap_or(usize::MAX);
    if needed > capacity {
        return Err(SealError::BufferTooSmall { needed, capacity });
    }
    Ok(needed)
}

/// Reads the trailer of a decrypted ESP payload (`payload | padding | PadLen | NextHeader`):
/// returns the inner packet's length and the Next Header. The padding must be 1, 2, 3, …
/// (RFC 4303 §2.4 default; strongSwan checks it too).
pub(crate) fn read_trailer(plaintext: &[u8]) -> Result<(usize, u8), OpenError> {
    let [.., pad_len, next_header] = *plaintext else {
        return Err(OpenError::BadPadding);
    };
    let payload_len = plaintext.len().checked_sub(TRAILER_LEN + usize::from(pad_len)).ok_or(OpenError::BadPadding)?;
    let padding = &plaintext[payload_len..plaintext.len() - TRAILER_LEN];
    if !padding.iter().enumerate().all(|(i, &byte)| usize::from(byte) == i + 1) {
        return Err(OpenError::BadPadding);
    }
    Ok((payload_len, next_header))
}

/// A sealed packet: `buf[..len]`, sent with sequence number `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    pub seq: u32,
    pub len: usize,
}

/// An opened packet: the inner packet lies at `packet[inner]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub seq: u32,
    pub inner: Range<usize>,
    /// [`NEXT_HEADER_IPV4`], [`NEXT_HEADER_IPV6`], [`NO_NEXT_HEADER`] (drop it, but it
    /// counts as traffic), or anything else the peer sent (drop it).
    pub next_header: u8,
}

/// Sending side of a CHILD SA: the peer's SPI and a 32-bit sequence counter.
pub struct OutboundSa {
    spi: u32,
    key: SaKey,
    /// Next sequence number. 64 bits wide although ESP's are 32, so that concurrent
    /// `fetch_add`s past 2^32 cannot wrap around to reused nonces: every value above
    /// `u32::MAX` is refused instead.
    next_seq: AtomicU64,
    rekey_threshold: u32,
}

impl OutboundSa {
    /// `spi` is the one the peer chose to receive on (from its SA payload).
    pub fn new(spi: u32, key: SaKey) -> Result<OutboundSa, SaError> {
        Ok(OutboundSa {
            spi: check_spi(spi)?,
            key,
            next_seq: AtomicU64::new(1),
            rekey_threshold: DEFAULT_REKEY_THRESHOLD,
        })
    }

    /// Sets the sequence number whose use makes [`Self::rekey_needed`] report true.
    pub fn with_rekey_threshold(mut self, threshold: u32) -> OutboundSa {
        self.rekey_threshold = threshold;
        self
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    pub fn algorithm(&self) -> AeadAlgorithm {
        self.key.algorithm()
    }

    /// True once the sequence number at the rekey threshold was handed out: start a
    /// CREATE_CHILD_SA rekey. Sealing goes on until the numbers run out.
    pub fn rekey_needed(&self) -> bool {
        self.next_seq.load(Ordering::Relaxed) > u64::from(self.rekey_threshold)
    }

    /// Seals the inner packet at `buf[HEADROOM..HEADROOM + payload_len]` in place into
    /// the ESP packet `buf[..sealed.len]` (the buffer needs [`sealed_len`] bytes, at most
    /// [`MAX_TAILROOM`] behind the inner packet). Refuses once sequence number
    /// 2^32-1 was used: ESP sequence numbers never wrap (RFC 4303 §3.3.3).
    pub fn seal(&self, buf: &mut [u8], payload_len: usize, next_header: u8) -> Result<Sealed, SealError> {
        // Check the size first, so a refused packet uses up no sequence number.
        checked_sealed_len(buf.len(), payload_len)?;
        let seq = self.allocate()?;
        self.seal_with_seq(seq, buf, payload_len, next_header)
    }

    /// Seals a batch, as [`Self::seal`] does each packet, setting every job's outcome.
    /// The batch takes its sequence numbers with a single atomic operation; aws-lc-rs has
    /// no multi-buffer AEAD, so the packets are then sealed one after the other.
    pub fn seal_batch(&self, jobs: &mut [SealJob<'_>]) {
        let mut sealable = 0u64;
        for job in jobs.iter_mut() {
            job.outcome = match checked_sealed_len(job.buf.len(), job.payload_len) {
                Ok(_) => {
                    sealable += 1;
                    None
                }
                Err(e) => Some(Err(e)),
            };
        }
        // Relaxed is enough: the read-modify-write alone makes every value unique.
        let first = self.next_seq.fetch_add(sealable, Ordering::Relaxed);
        let pending = jobs.iter_mut().filter(|job| job.outcome.is_none());
        for (next, job) in (first..).zip(pending) {
            job.outcome = Some(match u32::try_from(next) {
                Ok(seq) => self.seal_with_seq(seq, job.buf, job.payload_len, job.next_header),
                Err(_) => Err(SealError::SequenceExhausted),
            });
        }
    }

    fn allocate(&self) -> Result<u32, SealError> {
        let next = self.next_seq.fetch_add(1, Ordering::Relaxed);
        u32::try_from(next).map_err(|_| SealError::SequenceExhausted)
    }

    fn seal_with_seq(
        &self,
        seq: u32,
        buf: &mut [u8],
        payload_len: usize,
        next_header: u8,
    ) -> Result<Sealed, SealError> {
        // The IV is the sequence number, zero-extended: unique under the key because
        // sequence numbers are (RFC 4106 §3.1 allows any unique value).
        let iv = u64::from(seq).to_be_bytes();
        let len = self.key.seal_in_place(self.spi, seq, iv, buf, payload_len, next_header)?;
        Ok(Sealed { seq, len })
    }
}

impl fmt::Debug for OutboundSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundSa")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("key", &self.key)
            .field("next_seq", &self.next_seq.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One packet of [`OutboundSa::seal_batch`].
#[derive(Debug)]
pub struct SealJob<'a> {
    /// The inner packet is at `buf[HEADROOM..HEADROOM + payload_len]`; the ESP packet
    /// is written to `buf[..len]`.
    pub buf: &'a mut [u8],
    pub payload_len: usize,
    pub next_header: u8,
    /// Set by `seal_batch`.
    pub outcome: Option<Result<Sealed, SealError>>,
}

impl<'a> SealJob<'a> {
    pub fn new(buf: &'a mut [u8], payload_len: usize, next_header: u8) -> SealJob<'a> {
        SealJob { buf, payload_len, next_header, outcome: None }
    }
}

/// Receiving side of a CHILD SA: the SPI the gateway chose, and the replay window.
pub struct InboundSa {
    spi: u32,
    key: SaKey,
    replay: ReplayWindow,
}

impl InboundSa {
    /// `spi` is the one the gateway put in its own SA payload.
    pub fn new(spi: u32, key: SaKey) -> Result<InboundSa, SaError> {
        Ok(InboundSa { spi: check_spi(spi)?, key, replay: ReplayWindow::new() })
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    pub fn algorithm(&self) -> AeadAlgorithm {
        self.key.algorithm()
    }

    /// The highest sequence number received and authenticated so far (0 if none).
    pub fn highest_seq(&self) -> u32 {
        // The window only ever holds numbers that came from a 32-bit field.
        u32::try_from(self.replay.highest()).unwrap_or(u32::MAX)
    }

    /// Opens one ESP packet (as received: the whole UDP payload on port 4500) in place.
    /// Checks, in this order (RFC 4303 §3.4): length, SPI, sequence number against the
    /// replay window, ICV (decrypting), then records the sequence number and checks the
    /// padding. On error the bytes after the header are unspecified: drop the packet.
    pub fn open(&mut self, packet: &mut [u8]) -> Result<Opened, OpenError> {
        let header = EspHeader::parse(packet)?;
        if header.spi != self.spi {
            return Err(OpenError::WrongSpi { expected: self.spi, got: header.spi });
        }
        let seq = u64::from(header.seq);
        self.replay.check(seq)?;
        self.key.decrypt_in_place(packet)?;
        // Authentic, so the peer did send this number: record it even if the padding
        // turns out to be wrong.
        self.replay.update(seq);
        let (payload_len, next_header) = read_trailer(&packet[HEADROOM..packet.len() - ICV_LEN])?;
        Ok(Opened { seq: header.seq, inner: HEADROOM..HEADROOM + payload_len, next_header })
    }

    /// Opens a batch in order, as [`Self::open`] does each packet (a duplicate within
    /// the batch is refused as a replay), setting every job's outcome.
    pub fn open_batch(&mut self, jobs: &mut [OpenJob<'_>]) {
        for job in jobs {
            job.outcome = Some(self.open(job.packet));
        }
    }
}

impl fmt::Debug for InboundSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundSa")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("key", &self.key)
            .field("highest_seq", &self.replay.highest())
            .finish_non_exhaustive()
    }
}

/// One packet of [`InboundSa::open_batch`].
#[derive(Debug)]
pub struct OpenJob<'a> {
    pub packet: &'a mut [u8],
    /// Set by `open_batch`.
    pub outcome: Option<Result<Opened, OpenError>>,
}

impl<'a> OpenJob<'a> {
    pub fn new(packet: &'a mut [u8]) -> OpenJob<'a> {
        OpenJob { packet, outcome: None }
    }
}

fn check_spi(spi: u32) -> Result<u32, SaError> {
    if spi < 256 { Err(SaError::ReservedSpi(spi)) } else { Ok(spi) }
}

#[cfg(test)]
mod tests;
