//! What a verified reply means for the gateway (PROTOCOLS.md §5.4–5.6): accept with
//! the address, limits, groups and keys the server granted; reject with its reasons; or a
//! challenge (an MFA prompt or the next EAP round).

use std::net::Ipv4Addr;
use std::time::Duration;

use super::auth::{MppeKeyError, decrypt_mppe_key};
use super::packet::{Code, DecodeError, Packet, attr, ms};
use super::request::RequestKind;

/// An MS-CHAP text attribute: MS-CHAP2-Success (`S=<40 hex>`, possibly ` M=...`) or
/// MS-CHAP-Error (`E=691 R=0 C=<32 hex> V=3`), with the PPP CHAP Identifier it answers.
/// The text is what the gateway forwards in its CHAP Success or Failure packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsChapMessage {
    pub ident: u8,
    pub text: String,
}

/// What an Access-Accept grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptInfo {
    /// Framed-IP-Address. `None` also when the server sent 255.255.255.254 ("the NAS
    /// chooses") or 255.255.255.255 ("the user chooses"): the gateway assigns from its pool.
    pub framed_ip: Option<Ipv4Addr>,
    pub session_timeout: Option<Duration>,
    /// Every Class, in order, to echo in accounting.
    pub classes: Vec<Vec<u8>>,
    pub filter_ids: Vec<String>,
    /// Every MS-Azure-Policy-ID value (Microsoft vendor type 65), raw; see
    /// [`super::packet::azure_policy_id_text`] for group matching.
    pub azure_policy_ids: Vec<Vec<u8>>,
    pub acct_interim_interval: Option<Duration>,
    pub reply_message: Option<String>,
    pub ms_chap2_success: Option<MsChapMessage>,
    /// MS-MPPE-Send-Key, decrypted: the gateway's send key.
    pub mppe_send_key: Option<Vec<u8>>,
    /// MS-MPPE-Recv-Key, decrypted: the gateway's receive key.
    pub mppe_recv_key: Option<Vec<u8>>,
    /// The EAP-Message attributes reassembled (EAP-Success).
    pub eap_message: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessReply {
    Accept(AcceptInfo),
    Reject {
        reply_message: Option<String>,
        ms_chap_error: Option<MsChapMessage>,
        /// EAP-Failure, to relay to the peer.
        eap_message: Option<Vec<u8>>,
    },
    /// Answer with another Access-Request echoing `state` to the same server: the user's
    /// one-time code as PAP password after a prompt, or the peer's next EAP packet.
    Challenge {
        state: Option<Vec<u8>>,
        reply_message: Option<String>,
        eap_message: Option<Vec<u8>>,
    },
}

/// A verified reply to a request.
// One per authentication or accounting record: boxing the accept would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Access(AccessReply),
    /// Accounting-Response: the server has the record.
    AccountingResponse,
}

/// Why an authentic reply cannot be understood: a server (or its policy) sending
/// something malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("{code} does not answer {}", match request { RequestKind::Access => "an Access-Request", RequestKind::Accounting => "an Accounting-Request" })]
    UnexpectedCode { code: Code, request: RequestKind },
    #[error("{attribute} is {length} bytes long; expected {expected}")]
    BadLength { attribute: &'static str, length: usize, expected: &'static str },
    #[error(transparent)]
    VendorSpecific(#[from] DecodeError),
    #[error("{attribute}: {error}")]
    MppeKey { attribute: &'static str, error: MppeKeyError },
}

impl Reply {
    /// Interprets an authentic reply to a request of `kind` whose Request Authenticator
    /// was `request_authenticator` (MPPE keys are encrypted with it).
    pub fn from_packet(
        kind: RequestKind,
        packet: &Packet,
        secret: &[u8],
        request_authenticator: &[u8; 16],
    ) -> Result<Reply, ReplyError> {
        match (kind, packet.code) {
            (RequestKind::Access, _) => {
                AccessReply::from_packet(packet, secret, request_authenticator).map(Reply::Access)
            }
            (RequestKind::Accounting, Code::AccountingResponse) => Ok(Reply::AccountingResponse),
            (request, code) => Err(ReplyError::UnexpectedCode { code, request }),
        }
    }
}

impl AccessReply {
    /// Interprets an authentic Access-Accept, Access-Reject or Access-Challenge.
    pub fn from_packet(packet: &Packet, secret: &[u8], request_authenticator: &[u8; 16]) -> Result<Self, ReplyError> {
        let reply_message = reply_message(packet);
        let eap_message = eap_message(packet);
        match packet.code {
            Code::AccessAccept => Ok(AccessReply::Accept(AcceptInfo {
                framed_ip: framed_ip(packet)?,
                session_timeout: seconds(packet, attr::SESSION_TIMEOUT, "Session-Timeout")?,
                classes: packet.attributes(attr::CLASS).map(<[u8]>::to_vec).collect(),
                filter_ids: packet
                    .attributes(attr::FILTER_ID)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect(),
                azure_policy_ids: packet
                    .vendor_attributes(ms::VENDOR_ID, ms::AZURE_POLICY_ID)?
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect(),
                acct_interim_interval: seconds(packet, attr::ACCT_INTERIM_INTERVAL, "Acct-Interim-Interval")?,
                reply_message,
                ms_chap2_success: ms_chap_message(packet, ms::CHAP2_SUCCESS, "MS-CHAP2-Success")?,
                mppe_send_key: mppe_key(packet, ms::MPPE_SEND_KEY, "MS-MPPE-Send-Key", secret, request_authenticator)?,
                mppe_recv_key: mppe_key(packet, ms::MPPE_RECV_KEY, "MS-MPPE-Recv-Key", secret, request_authenticator)?,
                eap_message,
            })),
            Code::AccessChallenge => Ok(AccessReply::Challenge {
                state: packet.attribute(attr::STATE).map(<[u8]>::to_vec),
                reply_message,
                eap_message,
            }),
            Code::AccessReject => Ok(AccessReply::Reject {
                reply_message,
                ms_chap_error: ms_chap_message(packet, ms::CHAP_ERROR, "MS-CHAP-Error")?,
                eap_message,
            }),
            code => Err(ReplyError::UnexpectedCode { code, request: RequestKind::Access }),
        }
    }
}

/// Reply-Message attributes concatenated: a long message is split over several
/// (RFC 2865 §5.18 requires displaying them in order).
fn reply_message(packet: &Packet) -> Option<String> {
    let parts: Vec<&[u8]> = packet.attributes(attr::REPLY_MESSAGE).collect();
    (!parts.is_empty()).then(|| String::from_utf8_lossy(&parts.concat()).into_owned())
}

fn eap_message(packet: &Packet) -> Option<Vec<u8>> {
    let parts: Vec<&[u8]> = packet.attributes(attr::EAP_MESSAGE).collect();
    (!parts.is_empty()).then(|| parts.concat())
}

fn framed_ip(packet: &Packet) -> Result<Option<Ipv4Addr>, ReplyError> {
    let Some(value) = packet.attribute(attr::FRAMED_IP_ADDRESS) else {
        return Ok(None);
    };
    let octets: [u8; 4] = value.try_into().map_err(|_| ReplyError::BadLength {
        attribute: "Framed-IP-Address",
        length: value.len(),
        expected: "4",
    })?;
    let address = Ipv4Addr::from(octets);
    let chosen_elsewhere = address == Ipv4Addr::new(255, 255, 255, 254) || address == Ipv4Addr::BROADCAST;
    Ok((!chosen_elsewhere).then_some(address))
}

fn seconds(packet: &Packet, kind: u8, attribute: &'static str) -> Result<Option<Duration>, ReplyError> {
    let Some(value) = packet.attribute(kind) else {
        return Ok(None);
    };
    let bytes: [u8; 4] =
        value.try_into().map_err(|_| ReplyError::BadLength { attribute, length: value.len(), expected: "4" })?;
    Ok(Some(Duration::from_secs(u64::from(u32::from_be_bytes(bytes)))))
}

fn ms_chap_message(
    packet: &Packet,
    vendor_type: u8,
    attribute: &'static str,
) -> Result<Option<MsChapMessage>, ReplyError> {
    let values = packet.vendor_attributes(ms::VENDOR_ID, vendor_type)?;
    let Some(value) = values.first() else {
        return Ok(None);
    };
    let Some((&ident, text)) = value.split_first() else {
        return Err(ReplyError::BadLength { attribute, length: 0, expected: "at least 1 (the CHAP identifier)" });
    };
    Ok(Some(MsChapMessage { ident, text: String::from_utf8_lossy(text).into_owned() }))
}

fn mppe_key(
    packet: &Packet,
    vendor_type: u8,
    attribute: &'static str,
    secret: &[u8],
    request_authenticator: &[u8; 16],
) -> Result<Option<Vec<u8>>, ReplyError> {
    let values = packet.vendor_attributes(ms::VENDOR_ID, vendor_type)?;
    let Some(value) = values.first() else {
        return Ok(None);
    };
    decrypt_mppe_key(value, secret, request_authenticator)
        .map(Some)
        .map_err(|error| ReplyError::MppeKey { attribute, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::radius::auth::tests::encrypt_mppe_key;
    use crate::proto::radius::packet::Attribute;

    const RA: [u8; 16] = [0x33; 16];

    fn packet(code: Code, attributes: Vec<Attribute>) -> Packet {
        Packet { code, identifier: 1, authenticator: [0; 16], attributes }
    }

    #[test]
    fn accept_with_everything() {
        let mut policy = vec![0x6a, 0xd1, 0xbd];
        policy.extend_from_slice(&[0x11; 13]);
        let accept = packet(
            Code::AccessAccept,
            vec![
                Attribute::ipv4(attr::FRAMED_IP_ADDRESS, Ipv4Addr::new(10, 8, 0, 50)),
                Attribute::integer(attr::SESSION_TIMEOUT, 28800),
                Attribute::new(attr::CLASS, "c1"),
                Attribute::new(attr::CLASS, vec![0xff, 0]),
                Attribute::new(attr::FILTER_ID, "vpn-users"),
                Attribute::new(attr::FILTER_ID, "admins"),
                Attribute::vendor(ms::VENDOR_ID, ms::AZURE_POLICY_ID, &policy),
                Attribute::integer(attr::ACCT_INTERIM_INTERVAL, 300),
                Attribute::new(attr::REPLY_MESSAGE, "Hello, "),
                Attribute::new(attr::REPLY_MESSAGE, "nemo"),
                Attribute::vendor(ms::VENDOR_ID, ms::CHAP2_SUCCESS, b"\x07S=407A5589115FD0D6209F510FE9C04566932CDA56"),
                Attribute::vendor(ms::VENDOR_ID, ms::MPPE_SEND_KEY, &encrypt_mppe_key(&[1; 16], [0x80, 1], b"s", &RA)),
                Attribute::vendor(ms::VENDOR_ID, ms::MPPE_RECV_KEY, &encrypt_mppe_key(&[2; 32], [0x80, 2], b"s", &RA)),
                Attribute::new(attr::EAP_MESSAGE, [3, 7]),
                Attribute::new(attr::EAP_MESSAGE, [0, 4]),
            ],
        );
        let Ok(Reply::Access(AccessReply::Accept(info))) = Reply::from_packet(RequestKind::Access, &accept, b"s", &RA)
        else {
            panic!("an accept");
        };
        assert_eq!(info.framed_ip, Some(Ipv4Addr::new(10, 8, 0, 50)));
        assert_eq!(info.session_timeout, Some(Duration::from_secs(28800)));
        assert_eq!(info.classes, vec![b"c1".to_vec(), vec![0xff, 0]]);
        assert_eq!(info.filter_ids, ["vpn-users", "admins"]);
        assert_eq!(info.azure_policy_ids, vec![policy]);
        assert_eq!(info.acct_interim_interval, Some(Duration::from_secs(300)));
        assert_eq!(info.reply_message.as_deref(), Some("Hello, nemo"));
        assert_eq!(
            info.ms_chap2_success,
            Some(MsChapMessage { ident: 7, text: "S=407A5589115FD0D6209F510FE9C04566932CDA56".into() })
        );
        assert_eq!(info.mppe_send_key, Some(vec![1; 16]));
        assert_eq!(info.mppe_recv_key, Some(vec![2; 32]));
        assert_eq!(info.eap_message, Some(vec![3, 7, 0, 4]));
    }

    #[test]
    fn bare_accept_and_pool_addresses() {
        let accept = packet(Code::AccessAccept, vec![]);
        assert_eq!(AccessReply::from_packet(&accept, b"s", &RA), Ok(AccessReply::Accept(AcceptInfo::default())));
        for nas_or_user_chooses in [Ipv4Addr::new(255, 255, 255, 254), Ipv4Addr::BROADCAST] {
            let accept =
                packet(Code::AccessAccept, vec![Attribute::ipv4(attr::FRAMED_IP_ADDRESS, nas_or_user_chooses)]);
            let Ok(AccessReply::Accept(info)) = AccessReply::from_packet(&accept, b"s", &RA) else { panic!() };
            assert_eq!(info.framed_ip, None);
        }
    }

    #[test]
    fn reject_and_challenge() {
        let reject = packet(
            Code::AccessReject,
            vec![
                Attribute::new(attr::REPLY_MESSAGE, "Denied"),
                Attribute::vendor(
                    ms::VENDOR_ID,
                    ms::CHAP_ERROR,
                    b"\x01E=691 R=0 C=00112233445566778899AABBCCDDEEFF V=3",
                ),
                Attribute::new(attr::EAP_MESSAGE, [4, 9, 0, 4]),
            ],
        );
        assert_eq!(
            AccessReply::from_packet(&reject, b"s", &RA),
            Ok(AccessReply::Reject {
                reply_message: Some("Denied".into()),
                ms_chap_error: Some(MsChapMessage {
                    ident: 1,
                    text: "E=691 R=0 C=00112233445566778899AABBCCDDEEFF V=3".into()
                }),
                eap_message: Some(vec![4, 9, 0, 4]),
            })
        );
        let challenge = packet(
            Code::AccessChallenge,
            vec![Attribute::new(attr::REPLY_MESSAGE, "Enter your OTP"), Attribute::new(attr::STATE, [9; 12])],
        );
        assert_eq!(
            AccessReply::from_packet(&challenge, b"s", &RA),
            Ok(AccessReply::Challenge {
                state: Some(vec![9; 12]),
                reply_message: Some("Enter your OTP".into()),
                eap_message: None
            })
        );
    }

    #[test]
    fn malformed_attributes_are_errors() {
        let cases = [
            (Attribute::new(attr::FRAMED_IP_ADDRESS, [10, 0, 0]), "Framed-IP-Address"),
            (Attribute::new(attr::SESSION_TIMEOUT, [0; 5]), "Session-Timeout"),
            (Attribute::vendor(ms::VENDOR_ID, ms::CHAP2_SUCCESS, b""), "MS-CHAP2-Success"),
        ];
        for (attribute, name) in cases {
            let accept = packet(Code::AccessAccept, vec![attribute]);
            assert!(
                matches!(AccessReply::from_packet(&accept, b"s", &RA), Err(ReplyError::BadLength { attribute, .. }) if attribute == name)
            );
        }
        let bad_key =
            packet(Code::AccessAccept, vec![Attribute::vendor(ms::VENDOR_ID, ms::MPPE_SEND_KEY, &[0x80, 1, 2])]);
        assert!(matches!(
            AccessReply::from_packet(&bad_key, b"s", &RA),
            Err(ReplyError::MppeKey { attribute: "MS-MPPE-Send-Key", .. })
        ));
        let bad_vsa = packet(Code::AccessAccept, vec![Attribute::new(attr::VENDOR_SPECIFIC, [0, 0, 1, 0x37, 26, 40])]);
        assert!(matches!(AccessReply::from_packet(&bad_vsa, b"s", &RA), Err(ReplyError::VendorSpecific(_))));
        let wrong_kind = packet(Code::AccountingResponse, vec![]);
        assert!(matches!(
            Reply::from_packet(RequestKind::Access, &wrong_kind, b"s", &RA),
            Err(ReplyError::UnexpectedCode { .. })
        ));
        assert_eq!(Reply::from_packet(RequestKind::Accounting, &wrong_kind, b"s", &RA), Ok(Reply::AccountingResponse));
    }
}
