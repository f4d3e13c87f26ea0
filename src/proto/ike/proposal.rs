//! Proposal selection (RFC 7296 §2.7, §3.3; PROTOCOLS.md §3.2): the responder picks one
//! proposal of the initiator's, one transform of each type, and answers with exactly
//! that, keeping the initiator's proposal number.

use super::crypto::{EncrAlgorithm, IkeSuite, IntegAlgorithm, PrfAlgorithm};
use super::message::{Proposal, Transform, protocol, transform_type};
use crate::crypto::dh::DhGroup;

/// What this responder accepts for IKE SAs and CHILD SAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Algorithms {
    /// IKE encryption, AEAD and CBC alike.
    pub ike_encryption: Vec<EncrAlgorithm>,
    /// IKE integrity, for CBC proposals.
    pub ike_integrity: Vec<IntegAlgorithm>,
    pub prf: Vec<PrfAlgorithm>,
    /// In our order of preference: the first acceptable one is asked for in
    /// INVALID_KE_PAYLOAD.
    pub dh_groups: Vec<DhGroup>,
    /// ESP ciphers: AEAD only (the data plane's AEAD contexts).
    pub esp_encryption: Vec<EncrAlgorithm>,
}

impl Default for Algorithms {
    /// Modern algorithms only; group 2 and SHA-1 must be added explicitly for stock Windows.
    fn default() -> Self {
        Algorithms {
            ike_encryption: vec![
                EncrAlgorithm::AesGcm16_256,
                EncrAlgorithm::AesGcm16_128,
                EncrAlgorithm::ChaCha20Poly1305,
                EncrAlgorithm::AesCbc256,
                EncrAlgorithm::AesCbc128,
            ],
            ike_integrity: vec![
                IntegAlgorithm::HmacSha256_128,
                IntegAlgorithm::HmacSha384_192,
                IntegAlgorithm::HmacSha512_256,
            ],
            prf: vec![PrfAlgorithm::HmacSha256, PrfAlgorithm::HmacSha384, PrfAlgorithm::HmacSha512],
            dh_groups: vec![DhGroup::Curve25519, DhGroup::Ecp256, DhGroup::Ecp384, DhGroup::Modp2048],
            esp_encryption: vec![
                EncrAlgorithm::AesGcm16_256,
                EncrAlgorithm::AesGcm16_128,
                EncrAlgorithm::ChaCha20Poly1305,
            ],
        }
    }
}

impl Algorithms {
    /// Adds what stock Windows offers for IKE (PROTOCOLS.md §3.14): DH group 2 and
    /// HMAC-SHA1 as PRF and integrity, last in preference. Its default ESP offer
    /// (CBC + SHA-1) still needs an AEAD policy on the client.
    pub fn with_legacy_windows(mut self) -> Algorithms {
        if !self.ike_integrity.contains(&IntegAlgorithm::HmacSha1_96) {
            self.ike_integrity.push(IntegAlgorithm::HmacSha1_96);
        }
        if !self.prf.contains(&PrfAlgorithm::HmacSha1) {
            self.prf.push(PrfAlgorithm::HmacSha1);
        }
        if !self.dh_groups.contains(&DhGroup::Modp1024) {
            self.dh_groups.push(DhGroup::Modp1024);
        }
        self
    }
}

/// The outcome of IKE proposal selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IkeChoice {
    Chosen {
        suite: IkeSuite,
        group: DhGroup,
        proposal: Proposal,
    },
    /// Acceptable, but the KE payload is for another group: ask for this one.
    WrongGroup(DhGroup),
    NoProposalChosen,
}

/// Chosen ESP proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspChoice {
    pub encr: EncrAlgorithm,
    /// Present when the proposal carried a DH transform (PFS in CREATE_CHILD_SA).
    pub group: Option<DhGroup>,
    /// The initiator's SPI: where we send.
    pub peer_spi: u32,
    pub number: u8,
    /// The peer included an ESN transform (we answer with ESN = none).
    pub has_esn_transform: bool,
}

impl EspChoice {
    /// Our reply proposal, with our inbound SPI.
    pub fn reply(&self, our_spi: u32) -> Proposal {
        let (id, key_length) = self.encr.id();
        let mut transforms = vec![Transform::new(transform_type::ENCR, id, key_length)];
        if let Some(group) = self.group {
            transforms.push(Transform::new(transform_type::DH, group.id(), None));
        }
        if self.has_esn_transform {
            transforms.push(Transform::new(transform_type::ESN, 0, None));
        }
        Proposal { number: self.number, protocol: protocol::ESP, spi: our_spi.to_be_bytes().to_vec(), transforms }
    }
}

fn of_type(p: &Proposal, kind: u8) -> impl Iterator<Item = &Transform> {
    p.transforms.iter().filter(move |t| t.transform_type == kind && !t.has_unknown_attributes())
}

/// First transform of a type (initiator's order) that maps to something acceptable.
fn pick<T: Copy + PartialEq>(p: &Proposal, kind: u8, accept: &[T], map: impl Fn(&Transform) -> Option<T>) -> Option<T> {
    of_type(p, kind).filter_map(map).find(|a| accept.contains(a))
}

/// IKE proposal selection, for IKE_SA_INIT and IKE SA rekeying. `ke_group` is the group
/// of the KE payload; `prefer_prf` (on rekey) picks that PRF when the proposal offers it.
pub fn choose_ike(
    proposals: &[Proposal],
    accept: &Algorithms,
    ke_group: u16,
    prefer_prf: Option<PrfAlgorithm>,
) -> IkeChoice {
    let mut wrong_group = None;
    for p in proposals.iter().filter(|p| p.protocol == protocol::IKE) {
        let Some(encr) =
            pick(p, transform_type::ENCR, &accept.ike_encryption, |t| EncrAlgorithm::from_id(t.id, t.key_length()))
        else {
            continue;
        };
        let integ = if encr.is_aead() {
            // AEAD: no integrity transform, or only NONE (0).
            if of_type(p, transform_type::INTEG).any(|t| t.id != 0) {
                continue;
            }
            None
        } else {
            match pick(p, transform_type::INTEG, &accept.ike_integrity, |t| IntegAlgorithm::from_id(t.id)) {
                Some(i) => Some(i),
                None => continue,
            }
        };
        let prf = match prefer_prf.filter(|prf| of_type(p, transform_type::PRF).any(|t| t.id == prf.id())) {
            Some(prf) if accept.prf.contains(&prf) => prf,
            _ => match pick(p, transform_type::PRF, &accept.prf, |t| PrfAlgorithm::from_id(t.id)) {
                Some(prf) => prf,
                None => continue,
            },
        };
        let offered: Vec<DhGroup> = of_type(p, transform_type::DH).filter_map(|t| DhGroup::from_id(t.id)).collect();
        let suite = IkeSuite { encr, integ, prf };
        match DhGroup::from_id(ke_group).filter(|g| offered.contains(g) && accept.dh_groups.contains(g)) {
            Some(group) => return IkeChoice::Chosen { suite, group, proposal: ike_reply(p.number, suite, group) },
            None => {
                if wrong_group.is_none() {
                    wrong_group = accept.dh_groups.iter().copied().find(|g| offered.contains(g));
                }
            }
        }
    }
    wrong_group.map_or(IkeChoice::NoProposalChosen, IkeChoice::WrongGroup)
}

/// The one-proposal SA reply for an IKE SA (SPI set by the caller on rekey).
pub fn ike_reply(number: u8, suite: IkeSuite, group: DhGroup) -> Proposal {
    let (id, key_length) = suite.encr.id();
    let mut transforms = vec![Transform::new(transform_type::ENCR, id, key_length)];
    transforms.push(Transform::new(transform_type::PRF, suite.prf.id(), None));
    if let Some(integ) = suite.integ {
        transforms.push(Transform::new(transform_type::INTEG, integ.id(), None));
    }
    transforms.push(Transform::new(transform_type::DH, group.id(), None));
    Proposal { number, protocol: protocol::IKE, spi: Vec::new(), transforms }
}

/// When the CHILD SA is negotiated: DH transforms are ignored in IKE_AUTH (RFC 7296
/// §1.2) and decide PFS in CREATE_CHILD_SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildContext {
    IkeAuth,
    /// With the KE payload's group, if any.
    CreateChildSa {
        ke_group: Option<u16>,
    },
}

/// ESP proposal selection. Returns `Err(Some(group))` when a proposal would be
/// acceptable with another KE group.
pub fn choose_esp(
    proposals: &[Proposal],
    accept: &Algorithms,
    context: ChildContext,
) -> Result<EspChoice, Option<DhGroup>> {
    let mut wrong_group = None;
    for p in proposals.iter().filter(|p| p.protocol == protocol::ESP && p.spi.len() == 4) {
        let Some(encr) =
            pick(p, transform_type::ENCR, &accept.esp_encryption, |t| EncrAlgorithm::from_id(t.id, t.key_length()))
        else {
            continue;
        };
        if of_type(p, transform_type::INTEG).any(|t| t.id != 0) && !of_type(p, transform_type::INTEG).any(|t| t.id == 0)
        {
            continue;
        }
        let esn: Vec<u16> = of_type(p, transform_type::ESN).map(|t| t.id).collect();
        if !esn.is_empty() && !esn.contains(&0) {
            continue;
        }
        let offered: Vec<DhGroup> = of_type(p, transform_type::DH).filter_map(|t| DhGroup::from_id(t.id)).collect();
        let offers_none = of_type(p, transform_type::DH).any(|t| t.id == 0) || offered.is_empty();
        let group = match context {
            ChildContext::IkeAuth => None,
            // Without KE, the proposal must allow "no PFS".
            ChildContext::CreateChildSa { ke_group: None } if offers_none => None,
            ChildContext::CreateChildSa { ke_group: None } => continue,
            ChildContext::CreateChildSa { ke_group: Some(id) } => {
                match DhGroup::from_id(id).filter(|g| offered.contains(g) && accept.dh_groups.contains(g)) {
                    Some(g) => Some(g),
                    None => {
                        if wrong_group.is_none() {
                            wrong_group = accept.dh_groups.iter().copied().find(|g| offered.contains(g));
                        }
                        continue;
                    }
                }
            }
        };
        let peer_spi = u32::from_be_bytes(p.spi[..].try_into().expect("SPI length checked to be 4"));
        return Ok(EspChoice { encr, group, peer_spi, number: p.number, has_esn_transform: !esn.is_empty() });
    }
    Err(wrong_group)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(number: u8, protocol: u8, spi: Vec<u8>, transforms: &[(u8, u16, Option<u16>)]) -> Proposal {
        Proposal {
            number,
            protocol,
            spi,
            transforms: transforms.iter().map(|&(t, id, kl)| Transform::new(t, id, kl)).collect(),
        }
    }

    use transform_type::{DH, ENCR, ESN, INTEG, PRF};

    fn child(ke_group: Option<u16>) -> ChildContext {
        ChildContext::CreateChildSa { ke_group }
    }

    #[test]
    fn picks_the_first_acceptable_proposal_with_the_ke_group() {
        let accept = Algorithms::default();
        let proposals = [
            // 3DES only: unacceptable.
            proposal(1, protocol::IKE, vec![], &[(ENCR, 3, None), (INTEG, 2, None), (PRF, 2, None), (DH, 2, None)]),
            // CBC with ecp256 and curve25519.
            proposal(
                2,
                protocol::IKE,
                vec![],
                &[(ENCR, 12, Some(256)), (INTEG, 12, None), (PRF, 5, None), (DH, 19, None), (DH, 31, None)],
            ),
            // AEAD with modp2048.
            proposal(3, protocol::IKE, vec![], &[(ENCR, 20, Some(128)), (PRF, 6, None), (DH, 14, None)]),
        ];
        let IkeChoice::Chosen { suite, group, proposal: reply } = choose_ike(&proposals, &accept, 14, None) else {
            panic!("a proposal is acceptable")
        };
        assert_eq!(group, DhGroup::Modp2048);
        assert_eq!(suite, IkeSuite { encr: EncrAlgorithm::AesGcm16_128, integ: None, prf: PrfAlgorithm::HmacSha384 });
        assert_eq!(reply.number, 3);
        assert_eq!(reply.transforms.len(), 3);
        let IkeChoice::Chosen { suite, group, .. } = choose_ike(&proposals, &accept, 19, None) else { panic!() };
        assert_eq!(
            (suite.encr, suite.integ, group),
            (EncrAlgorithm::AesCbc256, Some(IntegAlgorithm::HmacSha256_128), DhGroup::Ecp256)
        );
        // KE for group 20, offered nowhere: ask for our preferred group in the first acceptable proposal.
        assert_eq!(choose_ike(&proposals, &accept, 20, None), IkeChoice::WrongGroup(DhGroup::Curve25519));
        assert_eq!(choose_ike(&proposals[..1], &accept, 2, None), IkeChoice::NoProposalChosen);
        // Group 2 only when configured.
        let legacy = accept.clone().with_legacy_windows();
        assert_eq!(legacy.clone().with_legacy_windows(), legacy, "adding twice changes nothing");
        let windows = [proposal(
            1,
            protocol::IKE,
            vec![],
            &[(ENCR, 12, Some(128)), (INTEG, 2, None), (PRF, 2, None), (DH, 2, None)],
        )];
        assert_eq!(choose_ike(&windows, &accept, 2, None), IkeChoice::NoProposalChosen);
        assert!(matches!(choose_ike(&windows, &legacy, 2, None), IkeChoice::Chosen { group: DhGroup::Modp1024, .. }));
    }

    #[test]
    fn rekey_prefers_the_current_prf() {
        let accept = Algorithms::default();
        let p = [proposal(
            1,
            protocol::IKE,
            vec![1; 8],
            &[(ENCR, 20, Some(256)), (PRF, 5, None), (PRF, 7, None), (DH, 19, None)],
        )];
        let IkeChoice::Chosen { suite, .. } = choose_ike(&p, &accept, 19, Some(PrfAlgorithm::HmacSha512)) else {
            panic!()
        };
        assert_eq!(suite.prf, PrfAlgorithm::HmacSha512);
    }

    #[test]
    fn esp_selection_handles_esn_pfs_and_integrity() {
        let accept = Algorithms::default();
        let spi = vec![0xc0, 0, 0, 1];
        let cbc = proposal(1, protocol::ESP, spi.clone(), &[(ENCR, 12, Some(256)), (INTEG, 12, None), (ESN, 0, None)]);
        let esn_only = proposal(2, protocol::ESP, spi.clone(), &[(ENCR, 20, Some(256)), (ESN, 1, None)]);
        let gcm = proposal(3, protocol::ESP, spi.clone(), &[(ENCR, 20, Some(128)), (ESN, 1, None), (ESN, 0, None)]);
        let choice = choose_esp(&[cbc.clone(), esn_only.clone(), gcm.clone()], &accept, ChildContext::IkeAuth).unwrap();
        assert_eq!(
            (choice.encr, choice.number, choice.peer_spi, choice.group),
            (EncrAlgorithm::AesGcm16_128, 3, 0xc000_0001, None)
        );
        let reply = choice.reply(0xdead_beef);
        assert_eq!(reply.spi, vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(reply.transforms, vec![Transform::new(ENCR, 20, Some(128)), Transform::new(ESN, 0, None)]);
        assert_eq!(choose_esp(&[cbc, esn_only], &accept, ChildContext::IkeAuth), Err(None));
        // PFS: the KE group must be in the proposal.
        let pfs = proposal(4, protocol::ESP, spi, &[(ENCR, 28, None), (DH, 31, None), (ESN, 0, None)]);
        assert_eq!(
            choose_esp(std::slice::from_ref(&pfs), &accept, child(Some(31))).unwrap().group,
            Some(DhGroup::Curve25519)
        );
        assert_eq!(choose_esp(std::slice::from_ref(&pfs), &accept, child(Some(19))), Err(Some(DhGroup::Curve25519)));
        // A CREATE_CHILD_SA proposal demanding PFS without a KE payload is refused.
        assert_eq!(choose_esp(std::slice::from_ref(&pfs), &accept, child(None)), Err(None));
        // ... but in IKE_AUTH the DH transform is ignored.
        assert_eq!(choose_esp(&[pfs], &accept, ChildContext::IkeAuth).map(|c| c.group), Ok(None));
    }
}
