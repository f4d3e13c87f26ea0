//! Tokens signed in the test with freshly generated RSA-2048 and P-256 keys, checked
//! against a JWKS written from the same keys' public components.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::*;

pub(super) const RSA_KID: &str = "rsa-key-1";
pub(super) const EC_KID: &str = "ec-key-1";
pub(super) const NOW: u64 = 1_750_000_000;
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const ISSUER: &str = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0";
const ISSUER_V1: &str = "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/";
const AUDIENCE: &str = "api://p2sgw-vpn";

struct TestKeys {
    rsa: RsaKeyPair,
    /// A second RSA key, for sets with two RSA keys.
    other_rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
}

/// RSA key generation takes a while in debug builds: once per test binary.
fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| TestKeys {
        rsa: RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA-2048 generation"),
        other_rsa: RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA-2048 generation"),
        ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 generation"),
    })
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_jwk_of(key: &RsaKeyPair, kid: &str) -> Value {
    let public = key.public_key();
    json!({
        "kty": "RSA",
        "use": "sig",
        "kid": kid,
        "n": b64(public.modulus().big_endian_without_leading_zero()),
        "e": b64(public.exponent().big_endian_without_leading_zero()),
    })
}

fn rsa_jwk(kid: &str) -> Value {
    rsa_jwk_of(&keys().rsa, kid)
}

fn ec_jwk(kid: &str) -> Value {
    // The public key is the uncompressed point 04 || x || y.
    let point = keys().ec.public_key().as_ref();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..65])})
}

fn jwks_of(keys: Vec<Value>) -> Jwks {
    Jwks::parse(json!({ "keys": keys }).to_string().as_bytes()).expect("test key set parses")
}

/// The JWKS document of the test keys: one RSA and one EC key.
pub(super) fn test_jwks_json() -> String {
    json!({ "keys": [rsa_jwk(RSA_KID), ec_jwk(EC_KID)] }).to_string()
}

fn test_jwks() -> Jwks {
    Jwks::parse(test_jwks_json().as_bytes()).expect("test key set parses")
}

fn sign_with(rsa: &RsaKeyPair, alg: Algorithm, signing_input: &[u8]) -> Vec<u8> {
    let rng = SystemRandom::new();
    let mut sig = vec![0; rsa.public_modulus_len()];
    match alg {
        Algorithm::Rs256 => rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, signing_input, &mut sig).expect("RSA signing"),
        Algorithm::Ps256 => rsa.sign(&signature::RSA_PSS_SHA256, &rng, signing_input, &mut sig).expect("RSA signing"),
        Algorithm::Es256 => return keys().ec.sign(&rng, signing_input).expect("ECDSA signing").as_ref().to_vec(),
    }
    sig
}

/// A compact JWS of `header` and `payload`, signed with the test key for `alg`.
fn sign_raw(header: &Value, payload: &[u8], alg: Algorithm) -> String {
    let signing_input = format!("{}.{}", b64(header.to_string()), b64(payload));
    let sig = sign_with(&keys().rsa, alg, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(sig))
}

pub(super) fn token(alg: Algorithm, kid: &str, claims: &Value) -> String {
    sign_raw(&json!({"typ": "JWT", "alg": alg.name(), "kid": kid}), claims.to_string().as_bytes(), alg)
}

/// Claims of an Entra ID v2 access token that the test policy accepts.
pub(super) fn good_claims() -> Value {
    json!({
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "exp": NOW + 3600,
        "amr": ["pwd", "mfa"],
        "groups": ["g-staff", "g-admins"],
        "name": "Alice Example",
        "oid": "0b7b1f2e-9d7a-4c7e-8e6e-2f1d1c1b1a19",
        "preferred_username": "alice@example.com",
        "scp": "openid vpn.connect",
        "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        "tid": TENANT,
        "upn": "alice@example.com",
        "ver": "2.0"
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().expect("claims are an object").remove(name);
    claims
}

pub(super) fn test_policy() -> TokenPolicy {
    let mut policy = TokenPolicy::new(vec![ISSUER.to_string(), ISSUER_V1.to_string()], vec![AUDIENCE.to_string()]);
    policy.tenant_id = Some(TENANT.to_string());
    policy
}

fn verify_claims(claims: &Value) -> Result<VerifiedToken, TokenError> {
    verify(&token(Algorithm::Rs256, RSA_KID, claims), &test_jwks(), &test_policy(), NOW)
}

fn verify_with_policy(claims: &Value, policy: &TokenPolicy) -> Result<VerifiedToken, TokenError> {
    verify(&token(Algorithm::Rs256, RSA_KID, claims), &test_jwks(), policy, NOW)
}

#[test]
fn rs256_ps256_and_es256_tokens_are_accepted() {
    let jwks = test_jwks();
    for (alg, kid) in [(Algorithm::Rs256, RSA_KID), (Algorithm::Ps256, RSA_KID), (Algorithm::Es256, EC_KID)] {
        let verified = verify(&token(alg, kid, &good_claims()), &jwks, &test_policy(), NOW)
            .unwrap_or_else(|e| panic!("{alg} token refused: {e}"));
        assert_eq!(verified.subject, "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ");
        assert_eq!(verified.user_name, "alice@example.com");
        assert_eq!(verified.issuer, ISSUER);
        assert_eq!(verified.tenant_id.as_deref(), Some(TENANT));
        assert_eq!(verified.groups, ["g-staff", "g-admins"]);
        assert_eq!(verified.expires_at, NOW + 3600);
        assert_eq!(verified.pool, None);
        assert_eq!(verified.claims["oid"], "0b7b1f2e-9d7a-4c7e-8e6e-2f1d1c1b1a19");
    }
}

#[test]
fn entra_v1_issuer_and_uppercase_tenant_are_accepted() {
    let claims = with(with(good_claims(), "iss", json!(ISSUER_V1)), "tid", json!(TENANT.to_ascii_uppercase()));
    assert_eq!(verify_claims(&claims).expect("v1 token").issuer, ISSUER_V1);
}

#[test]
fn user_name_falls_back_through_the_usual_claims() {
    let claims = without(good_claims(), "upn");
    let claims = with(claims, "preferred_username", json!("alice.pref@example.com"));
    assert_eq!(verify_claims(&claims).expect("token").user_name, "alice.pref@example.com");
    let claims = with(without(claims, "preferred_username"), "unique_name", json!("live.com#alice@example.com"));
    assert_eq!(verify_claims(&claims).expect("token").user_name, "live.com#alice@example.com");
    let claims = with(without(claims, "unique_name"), "email", json!("alice.mail@example.com"));
    assert_eq!(verify_claims(&claims).expect("token").user_name, "alice.mail@example.com");
    let claims = without(claims, "email");
    assert_eq!(verify_claims(&claims).expect("token").user_name, "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ");
    assert_eq!(verify_claims(&without(claims, "sub")), Err(TokenError::MissingClaim("sub".to_string())));
}

#[test]
fn expired_tokens_are_refused_with_their_age() {
    let error = verify_claims(&with(good_claims(), "exp", json!(NOW - 300))).unwrap_err();
    assert_eq!(error, TokenError::Expired { ago_secs: 300 });
    assert_eq!(error.to_string(), "token expired 5 minutes ago");
}

#[test]
fn validity_times_honour_the_clock_skew_and_no_further() {
    // Default skew: 120 s.
    assert!(verify_claims(&with(good_claims(), "exp", json!(NOW - 119))).is_ok());
    assert_eq!(
        verify_claims(&with(good_claims(), "exp", json!(NOW - 120))),
        Err(TokenError::Expired { ago_secs: 120 })
    );
    assert!(verify_claims(&with(good_claims(), "nbf", json!(NOW + 120))).is_ok());
    let error = verify_claims(&with(good_claims(), "nbf", json!(NOW + 121))).unwrap_err();
    assert_eq!(error, TokenError::NotYetValid { in_secs: 121 });
    assert_eq!(error.to_string(), "token not valid for another 2 minutes");
    let error = verify_claims(&with(good_claims(), "iat", json!(NOW + 7200))).unwrap_err();
    assert_eq!(error.to_string(), "token issued 2 hours in the future");

    let mut strict = test_policy();
    strict.clock_skew = Duration::ZERO;
    assert_eq!(
        verify_with_policy(&with(good_claims(), "exp", json!(NOW)), &strict),
        Err(TokenError::Expired { ago_secs: 0 })
    );
    assert!(verify_with_policy(&with(good_claims(), "exp", json!(NOW + 1)), &strict).is_ok());
    assert!(verify_with_policy(&with(good_claims(), "nbf", json!(NOW + 1)), &strict).is_err());
}

#[test]
fn exp_is_required_and_must_be_a_numeric_date() {
    assert_eq!(verify_claims(&without(good_claims(), "exp")), Err(TokenError::MissingClaim("exp".to_string())));
    let error = verify_claims(&with(good_claims(), "exp", json!("tomorrow"))).unwrap_err();
    assert_eq!(error.to_string(), "claim exp is not a time in seconds since 1970");
    assert!(verify_claims(&with(good_claims(), "exp", json!(-5))).is_err());
    // RFC 7519 allows fractional seconds.
    let fractional = verify_claims(&with(good_claims(), "exp", json!((NOW + 10) as f64 + 0.5))).expect("token");
    assert_eq!(fractional.expires_at, NOW + 10);
}

#[test]
fn audience_must_be_allowed_as_a_string_or_in_an_array() {
    let error = verify_claims(&with(good_claims(), "aud", json!("api://other"))).unwrap_err();
    assert_eq!(error.to_string(), "audience api://other not allowed");
    assert!(verify_claims(&with(good_claims(), "aud", json!(["https://graph.microsoft.com", AUDIENCE]))).is_ok());
    let error = verify_claims(&with(good_claims(), "aud", json!(["a", "b"]))).unwrap_err();
    assert_eq!(error.to_string(), "audience a, b not allowed");
    assert_eq!(verify_claims(&without(good_claims(), "aud")), Err(TokenError::MissingClaim("aud".to_string())));
}

#[test]
fn issuer_must_match_exactly() {
    // A trailing slash makes a different issuer: Entra v1 and v2 differ in exactly such ways.
    let error = verify_claims(&with(good_claims(), "iss", json!(format!("{ISSUER}/")))).unwrap_err();
    assert_eq!(error.to_string(), format!("issuer {ISSUER}/ not allowed"));
    assert_eq!(verify_claims(&without(good_claims(), "iss")), Err(TokenError::MissingClaim("iss".to_string())));
}

#[test]
fn tenant_must_match_when_configured() {
    let other = "00000000-0000-0000-0000-000000000001";
    let error = verify_claims(&with(good_claims(), "tid", json!(other))).unwrap_err();
    assert_eq!(error.to_string(), format!("tenant {other} not allowed"));
    assert_eq!(verify_claims(&without(good_claims(), "tid")), Err(TokenError::MissingClaim("tid".to_string())));
    let mut any_tenant = test_policy();
    any_tenant.tenant_id = None;
    assert!(verify_with_policy(&without(good_claims(), "tid"), &any_tenant).is_ok());
}

#[test]
fn unknown_key_id_is_its_own_error() {
    let error =
        verify(&token(Algorithm::Rs256, "rotated-key", &good_claims()), &test_jwks(), &test_policy(), NOW).unwrap_err();
    assert_eq!(error, TokenError::UnknownKeyId("rotated-key".to_string()));
    assert_eq!(error.to_string(), "unknown signing key id rotated-key");
}

#[test]
fn alg_none_is_refused_in_any_case() {
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({"alg": alg, "kid": RSA_KID}).to_string());
        let unsigned = format!("{header}.{}.", b64(good_claims().to_string()));
        let error = verify(&unsigned, &test_jwks(), &test_policy(), NOW).unwrap_err();
        assert_eq!(error, TokenError::AlgorithmRefused(alg.to_string()));
        assert_eq!(error.to_string(), format!("algorithm {alg} refused"));
    }
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    // The classic attack: HMAC with the RSA public key (as published) as the secret.
    let header = b64(json!({"alg": "HS256", "kid": RSA_KID, "typ": "JWT"}).to_string());
    let signing_input = format!("{header}.{}", b64(good_claims().to_string()));
    let public_key = keys().rsa.public_key().as_ref().to_vec();
    let mac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &public_key);
    let mac = aws_lc_rs::hmac::sign(&mac_key, signing_input.as_bytes());
    let forged = format!("{signing_input}.{}", b64(mac));
    assert_eq!(
        verify(&forged, &test_jwks(), &test_policy(), NOW),
        Err(TokenError::AlgorithmRefused("HS256".to_string()))
    );
    for alg in ["HS384", "HS512", "hs256"] {
        assert!(matches!(Algorithm::from_jose_name(alg), Err(TokenError::AlgorithmRefused(_))));
    }
}

#[test]
fn other_algorithms_are_unsupported() {
    for alg in ["RS512", "ES384", "EdDSA", "PS384", "rs256"] {
        let error = Algorithm::from_jose_name(alg).unwrap_err();
        assert_eq!(error.to_string(), format!("algorithm {alg} not supported (RS256, PS256 and ES256 are)"));
    }
}

#[test]
fn tampered_tokens_are_refused() {
    let genuine = token(Algorithm::Rs256, RSA_KID, &good_claims());
    let [header, _, sig]: [&str; 3] = genuine.split('.').collect::<Vec<_>>().try_into().expect("three parts");
    let elevated = with(good_claims(), "groups", json!(["g-domain-admins"]));
    let tampered = format!("{header}.{}.{sig}", b64(elevated.to_string()));
    let error = verify(&tampered, &test_jwks(), &test_policy(), NOW).unwrap_err();
    assert_eq!(error, TokenError::BadSignature { kid: Some(RSA_KID.to_string()), alg: Algorithm::Rs256 });
    assert_eq!(error.to_string(), format!("bad RS256 signature for key {RSA_KID}"));

    let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig).expect("base64url signature");
    sig_bytes[10] ^= 1;
    let flipped = format!("{header}.{}.{}", genuine.split('.').nth(1).expect("payload"), b64(sig_bytes));
    assert!(matches!(verify(&flipped, &test_jwks(), &test_policy(), NOW), Err(TokenError::BadSignature { .. })));

    // An ES256 signature one byte short of the 64 that r || s takes.
    let es = token(Algorithm::Es256, EC_KID, &good_claims());
    let (signing_input, es_sig) = es.rsplit_once('.').expect("three parts");
    let es_sig = URL_SAFE_NO_PAD.decode(es_sig).expect("base64url signature");
    let truncated = format!("{signing_input}.{}", b64(&es_sig[..63]));
    assert!(matches!(verify(&truncated, &test_jwks(), &test_policy(), NOW), Err(TokenError::BadSignature { .. })));
}

#[test]
fn a_signature_made_with_another_padding_does_not_verify() {
    // Signed with PSS but labelled RS256: the PKCS#1 v1.5 check must fail.
    let header = json!({"alg": "RS256", "kid": RSA_KID});
    let signing_input = format!("{}.{}", b64(header.to_string()), b64(good_claims().to_string()));
    let pss = sign_with(&keys().rsa, Algorithm::Ps256, signing_input.as_bytes());
    let mislabelled = format!("{signing_input}.{}", b64(pss));
    assert!(matches!(verify(&mislabelled, &test_jwks(), &test_policy(), NOW), Err(TokenError::BadSignature { .. })));
}

#[test]
fn header_algorithm_must_fit_the_key() {
    // ES256 naming the RSA key.
    let error =
        verify(&token(Algorithm::Es256, RSA_KID, &good_claims()), &test_jwks(), &test_policy(), NOW).unwrap_err();
    assert_eq!(error.to_string(), format!("algorithm ES256 does not match signing key {RSA_KID} (RSA-2048)"));
    // RS256 naming the EC key.
    let error =
        verify(&token(Algorithm::Rs256, EC_KID, &good_claims()), &test_jwks(), &test_policy(), NOW).unwrap_err();
    assert!(matches!(error, TokenError::KeyAlgorithmMismatch { alg: Algorithm::Rs256, .. }), "{error}");
    // An RSA key pinned to PS256 refuses RS256, and accepts PS256.
    let pinned = jwks_of(vec![with(rsa_jwk(RSA_KID), "alg", json!("PS256"))]);
    let error = verify(&token(Algorithm::Rs256, RSA_KID, &good_claims()), &pinned, &test_policy(), NOW).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("algorithm RS256 does not match signing key {RSA_KID} (RSA-2048 for PS256 only)")
    );
    assert!(verify(&token(Algorithm::Ps256, RSA_KID, &good_claims()), &pinned, &test_policy(), NOW).is_ok());
}

#[test]
fn tokens_without_kid_need_a_single_candidate_key() {
    let unnamed = |alg: Algorithm| sign_raw(&json!({"alg": alg.name()}), good_claims().to_string().as_bytes(), alg);
    // One RSA and one EC key: each algorithm has a single candidate.
    assert!(verify(&unnamed(Algorithm::Rs256), &test_jwks(), &test_policy(), NOW).is_ok());
    assert!(verify(&unnamed(Algorithm::Es256), &test_jwks(), &test_policy(), NOW).is_ok());
    let two_rsa = jwks_of(vec![rsa_jwk("a"), rsa_jwk_of(&keys().other_rsa, "b")]);
    assert_eq!(verify(&unnamed(Algorithm::Rs256), &two_rsa, &test_policy(), NOW), Err(TokenError::AmbiguousKey));
    assert_eq!(
        verify(&unnamed(Algorithm::Es256), &two_rsa, &test_policy(), NOW),
        Err(TokenError::NoKeyForAlgorithm(Algorithm::Es256))
    );
}

#[test]
fn a_token_signed_by_another_key_with_the_same_kid_fails() {
    let impostor_set = jwks_of(vec![rsa_jwk_of(&keys().other_rsa, RSA_KID)]);
    let error = verify(&token(Algorithm::Rs256, RSA_KID, &good_claims()), &impostor_set, &test_policy(), NOW);
    assert!(matches!(error, Err(TokenError::BadSignature { .. })));
}

#[test]
fn malformed_tokens_are_refused_before_any_key_is_used() {
    let good = token(Algorithm::Rs256, RSA_KID, &good_claims());
    let malformed = |text: &str| match verify(text, &test_jwks(), &test_policy(), NOW) {
        Err(TokenError::Malformed(reason)) => reason,
        other => panic!("{text:?}: expected a malformed-token error, got {other:?}"),
    };
    assert_eq!(malformed("abc.def"), "not three dot-separated parts");
    assert_eq!(malformed(&format!("{good}.extra")), "not three dot-separated parts");
    assert_eq!(malformed(".."), "a part is empty");
    assert_eq!(malformed("@@@.e30.c2ln"), "the header is not base64url");
    assert_eq!(malformed(&format!("{}.e30.c2ln", b64("not json"))), "the header is not a JSON object");
    assert_eq!(malformed(&format!("{}.e30.c2ln", b64("[1]"))), "the header is not a JSON object");
    assert_eq!(malformed(&format!("{}.e30.c2ln", b64(r#"{"kid":"x"}"#))), "the header has no alg");
    assert_eq!(malformed(&format!("{}.e30.c2ln", b64(r#"{"alg":256}"#))), "the header's alg is not a string");
    let header = b64(r#"{"alg":"RS256","kid":"x"}"#);
    assert_eq!(malformed(&format!("{header}.e30=.c2ln")), "the payload is not base64url");
    assert_eq!(malformed(&format!("{header}.e30.c2ln=")), "the signature is not base64url");
    assert_eq!(malformed(&format!("{header}.e30.")), "the signature is empty");
    // A correctly signed payload that is not a JSON object.
    let array_payload = sign_raw(&json!({"alg": "RS256", "kid": RSA_KID}), b"[1,2]", Algorithm::Rs256);
    assert_eq!(malformed(&array_payload), "the payload is not a JSON object");
    let text_payload = sign_raw(&json!({"alg": "RS256", "kid": RSA_KID}), b"hello", Algorithm::Rs256);
    assert_eq!(malformed(&text_payload), "the payload is not JSON");
}

#[test]
fn huge_tokens_are_refused_by_size() {
    let padding: Vec<String> = (0..600).map(|i| format!("group-{i:020}")).collect();
    let huge = token(Algorithm::Rs256, RSA_KID, &with(good_claims(), "groups", json!(padding)));
    assert!(huge.len() > MAX_TOKEN_LEN);
    let error = verify(&huge, &test_jwks(), &test_policy(), NOW).unwrap_err();
    assert_eq!(error, TokenError::TooLarge { len: huge.len() });
}

#[test]
fn critical_header_extensions_are_refused() {
    let header = json!({"alg": "RS256", "kid": RSA_KID, "crit": ["exp"], "exp": NOW});
    let token = sign_raw(&header, good_claims().to_string().as_bytes(), Algorithm::Rs256);
    assert_eq!(verify(&token, &test_jwks(), &test_policy(), NOW), Err(TokenError::CriticalHeader));
}

#[test]
fn required_claim_conditions() {
    let mut policy = test_policy();
    policy.required_claims =
        vec![ClaimCondition::contains("amr", "mfa"), ClaimCondition::contains("scp", "vpn.connect")];
    assert!(verify_with_policy(&good_claims(), &policy).is_ok());

    let error = verify_with_policy(&with(good_claims(), "amr", json!(["pwd"])), &policy).unwrap_err();
    assert_eq!(error.to_string(), "missing claim amr containing mfa");
    assert!(verify_with_policy(&without(good_claims(), "amr"), &policy).is_err());
    // `scp` is a space-separated list: whole words only.
    let error = verify_with_policy(&with(good_claims(), "scp", json!("openid vpn.connected")), &policy).unwrap_err();
    assert_eq!(error.to_string(), "missing claim scp containing vpn.connect");

    policy.required_claims = vec![ClaimCondition::equals("acr", "x"), ClaimCondition::equals("ver", "2.0")];
    let error = verify_with_policy(&good_claims(), &policy).unwrap_err();
    assert_eq!(error, TokenError::ConditionNotMet("claim acr equal to x".to_string()));
    assert_eq!(error.to_string(), "missing claim acr equal to x");
    assert!(verify_with_policy(&with(good_claims(), "acr", json!("x")), &policy).is_ok());
    // Equality is on the value, not on array membership.
    assert!(verify_with_policy(&with(good_claims(), "acr", json!(["x"])), &policy).is_err());
    policy.required_claims = vec![ClaimCondition::equals("acr", "1")];
    assert!(verify_with_policy(&with(good_claims(), "acr", json!(1)), &policy).is_ok());
    policy.required_claims = vec![ClaimCondition::equals("email_verified", "true")];
    assert!(verify_with_policy(&with(good_claims(), "email_verified", json!(true)), &policy).is_ok());
    assert!(verify_with_policy(&with(good_claims(), "email_verified", json!(false)), &policy).is_err());
}

#[test]
fn allowed_groups_must_intersect_the_token_groups() {
    let mut policy = test_policy();
    policy.allowed_groups = vec!["g-vpn".to_string(), "g-admins".to_string()];
    assert!(verify_with_policy(&good_claims(), &policy).is_ok());
    let error = verify_with_policy(&with(good_claims(), "groups", json!(["g-staff"])), &policy).unwrap_err();
    assert_eq!(error, TokenError::NotInAllowedGroup);
    assert_eq!(verify_with_policy(&without(good_claims(), "groups"), &policy), Err(TokenError::NotInAllowedGroup));
    let error = verify_with_policy(&with(good_claims(), "groups", json!("g-admins")), &policy).unwrap_err();
    assert_eq!(error.to_string(), "claim groups is not an array of strings");

    // Entra app roles instead of groups.
    policy.groups_claim = "roles".to_string();
    policy.allowed_groups = vec!["VPN.User".to_string()];
    assert!(verify_with_policy(&with(good_claims(), "roles", json!(["VPN.User"])), &policy).is_ok());
    assert!(verify_with_policy(&good_claims(), &policy).is_err());
}

#[test]
fn entra_group_overage_is_reported_when_groups_matter() {
    let overage = with(without(good_claims(), "groups"), "_claim_names", json!({"groups": "src1"}));
    let overage = with(
        overage,
        "_claim_sources",
        json!({"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}),
    );
    assert!(verify_claims(&overage).is_ok(), "no group policy: the overage does not matter");
    let mut policy = test_policy();
    policy.allowed_groups = vec!["g-admins".to_string()];
    let error = verify_with_policy(&overage, &policy).unwrap_err();
    assert_eq!(error, TokenError::GroupOverage { claim: "groups".to_string() });
    assert!(error.to_string().contains("group overage"), "{error}");
    let mut pools_only = test_policy();
    pools_only.group_pools = vec![GroupPool { group: "g-admins".to_string(), pool: "admins".to_string(), priority: 1 }];
    assert!(matches!(verify_with_policy(&overage, &pools_only), Err(TokenError::GroupOverage { .. })));
}

#[test]
fn the_highest_priority_matching_group_chooses_the_pool() {
    let mapping = |group: &str, pool: &str, priority| GroupPool { group: group.into(), pool: pool.into(), priority };
    let mut policy = test_policy();
    policy.group_pools = vec![
        mapping("g-staff", "staff", 10),
        mapping("g-admins", "admins", 20),
        mapping("g-ops", "ops", 20),
        mapping("g-contractors", "contractors", 5),
    ];
    let pool_of =
        |groups: Value| verify_with_policy(&with(good_claims(), "groups", groups), &policy).expect("token").pool;
    assert_eq!(pool_of(json!(["g-staff", "g-admins"])).as_deref(), Some("admins"));
    assert_eq!(pool_of(json!(["g-contractors", "g-staff"])).as_deref(), Some("staff"));
    // A tie goes to the mapping listed first.
    assert_eq!(pool_of(json!(["g-ops", "g-admins"])).as_deref(), Some("admins"));
    assert_eq!(pool_of(json!(["g-other"])), None);
    assert_eq!(pool_of(json!([])), None);
}

#[test]
fn token_supplied_text_in_errors_is_escaped_and_bounded() {
    let hostile = format!("https://evil.example/\n\u{202e}{}", "x".repeat(500));
    let error = verify_claims(&with(good_claims(), "iss", json!(hostile))).unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with("issuer https://evil.example/\\n\\u{202e}xxx"), "{message}");
    assert!(message.ends_with("... not allowed"), "{message}");
    assert!(message.len() < 200, "{message}");
    assert!(message.chars().all(|c| c == ' ' || c.is_ascii_graphic()), "{message}");
}

#[test]
fn looks_like_jwt_tells_tokens_from_passwords() {
    assert!(looks_like_jwt(&token(Algorithm::Rs256, RSA_KID, &good_claims())));
    assert!(looks_like_jwt(&token(Algorithm::Es256, EC_KID, &good_claims())));
    // Refused later, but a token all the same: it must not go to RADIUS.
    assert!(looks_like_jwt(&format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"))));
    for password in ["hunter2", "correct.horse.battery", "a.b.c", "x.y", "", "..", "eyJ.eyJ.sig"] {
        assert!(!looks_like_jwt(password), "{password:?}");
    }
    assert!(!looks_like_jwt(&format!("{}.{}.sig", b64(r#"{"typ":"JWT"}"#), b64("{}"))));
    assert!(!looks_like_jwt(&format!("{}.{}.sig", b64(r#"{"alg":1}"#), b64("{}"))));
}

#[test]
fn unusable_keys_are_skipped_with_a_reason() {
    let point = keys().ec.public_key().as_ref();
    let short_modulus = [&[0xC5][..], &[0x5A; 127]].concat();
    let document = json!({"keys": [
        rsa_jwk(RSA_KID),
        with(rsa_jwk("enc-key"), "use", json!("enc")),
        {"kty": "oct", "kid": "hmac-key", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-384", "kid": "p384", "x": b64([1; 48]), "y": b64([2; 48])},
        {"kty": "EC", "crv": "P-256", "kid": "off-curve", "x": b64([1; 32]), "y": b64([2; 32])},
        {"kty": "EC", "crv": "P-256", "kid": "short-x", "x": b64(&point[2..33]), "y": b64(&point[33..65])},
        {"kty": "RSA", "kid": "rsa-1024", "n": b64(short_modulus), "e": "AQAB"},
        with(rsa_jwk("even-e"), "e", json!(b64([0x01, 0x00, 0x00]))),
        with(rsa_jwk("rs512"), "alg", json!("RS512")),
        with(ec_jwk("ec-as-rsa"), "alg", json!("RS256")),
        with(rsa_jwk("wrap-only"), "key_ops", json!(["wrapKey"])),
        "not an object",
    ]});
    let jwks = Jwks::parse(document.to_string().as_bytes()).expect("one usable key");
    assert_eq!(jwks.key_count(), 1);
    assert!(verify(&token(Algorithm::Rs256, RSA_KID, &good_claims()), &jwks, &test_policy(), NOW).is_ok());
    let reasons: Vec<String> = jwks.skipped().iter().map(ToString::to_string).collect();
    assert_eq!(
        reasons,
        [
            "key enc-key: use is \"enc\", not sig",
            "key hmac-key: key type oct not supported",
            "key p384: curve P-384 not supported",
            "key off-curve: not a point on P-256",
            "key short-x: P-256 coordinates must be 32 bytes each",
            "key rsa-1024: RSA key of 1024 bits (2048 to 8192 accepted)",
            "key even-e: RSA exponent is not an odd number from 3 to 2^32 - 1",
            "key rs512: alg RS512 not supported",
            "key ec-as-rsa: alg RS256 does not fit the key type (EC P-256)",
            "key wrap-only: key_ops does not include verify",
            "key without kid: not a JSON object",
        ]
    );
    assert!(jwks.to_string().starts_with(&format!("1 key(s): {RSA_KID} RSA-2048; 11 skipped (key enc-key:")));
}

#[test]
fn rsa_components_with_a_leading_zero_are_accepted() {
    let public = keys().rsa.public_key();
    let n = [&[0][..], public.modulus().big_endian_without_leading_zero()].concat();
    let jwks = jwks_of(vec![json!({"kty": "RSA", "kid": RSA_KID, "n": b64(n), "e": "AAEAAQ"})]);
    assert!(verify(&token(Algorithm::Rs256, RSA_KID, &good_claims()), &jwks, &test_policy(), NOW).is_ok());
}

#[test]
fn key_sets_without_usable_keys_are_refused() {
    assert!(matches!(Jwks::parse(b"not json"), Err(JwksError::NotJson(_))));
    assert!(matches!(Jwks::parse(b"[]"), Err(JwksError::NotJson(_))));
    assert_eq!(Jwks::parse(br#"{"issuer":"x"}"#).unwrap_err(), JwksError::NoKeysArray);
    assert_eq!(Jwks::parse(br#"{"keys":[]}"#).unwrap_err(), JwksError::NoUsableKeys(Vec::new()));
    let error = Jwks::parse(br#"{"keys":[{"kty":"oct","kid":"k"}]}"#).unwrap_err();
    assert_eq!(error.to_string(), "no usable signing key (key k: key type oct not supported)");
}

#[test]
fn durations_read_naturally() {
    let cases = [
        (0, "0 seconds"),
        (1, "1 second"),
        (119, "119 seconds"),
        (120, "2 minutes"),
        (3599, "59 minutes"),
        (7199, "119 minutes"),
        (7200, "2 hours"),
        (172_799, "47 hours"),
        (172_800, "2 days"),
    ];
    for (secs, text) in cases {
        assert_eq!(human_duration(secs), text);
    }
}

// ---- KeyCache, on virtual time ----

fn fetch_failure() -> FetchError {
    FetchError::Http { url: "https://idp.example/keys".to_string(), reason: "connection refused".to_string() }
}

#[test]
fn cache_fetches_at_start_then_every_refresh_interval() {
    let t0 = Instant::now();
    let at = |secs| t0 + Duration::from_secs(secs);
    let mut cache = KeyCache::new(RefreshTiming::default());
    assert!(cache.keys().is_none());
    assert_eq!(cache.time_until_scheduled_refresh(t0), Duration::ZERO);
    assert_eq!(cache.start_scheduled_refresh(t0), Some(RefreshReason::Initial));
    // The fetch is under way: nothing more is due.
    assert_eq!(cache.start_scheduled_refresh(at(1)), None);
    let stored = cache.finish_refresh(Ok(test_jwks()), at(2)).expect("stored");
    assert!(Arc::ptr_eq(&stored, &cache.keys().expect("keys")));
    assert_eq!(cache.last_success(), Some(at(2)));
    assert_eq!(cache.time_until_scheduled_refresh(at(2)), Duration::from_secs(3600));
    assert_eq!(cache.start_scheduled_refresh(at(3601)), None);
    assert_eq!(cache.start_scheduled_refresh(at(3602)), Some(RefreshReason::Periodic));
}

#[test]
fn cache_keeps_the_last_good_keys_when_a_fetch_fails() {
    let t0 = Instant::now();
    let at = |secs| t0 + Duration::from_secs(secs);
    let mut cache = KeyCache::new(RefreshTiming::default());
    cache.start_scheduled_refresh(t0);
    let good = cache.finish_refresh(Ok(test_jwks()), t0).expect("stored");
    assert_eq!(cache.start_scheduled_refresh(at(3600)), Some(RefreshReason::Periodic));
    assert_eq!(cache.finish_refresh(Err(fetch_failure()), at(3601)).unwrap_err(), fetch_failure());
    assert!(Arc::ptr_eq(&good, &cache.keys().expect("last good keys kept")));
    // Retried once the minimum interval has passed, not before.
    assert_eq!(cache.time_until_scheduled_refresh(at(3630)), Duration::from_secs(30));
    assert_eq!(cache.start_scheduled_refresh(at(3659)), None);
    assert_eq!(cache.start_scheduled_refresh(at(3660)), Some(RefreshReason::RetryAfterFailure));
    cache.finish_refresh(Ok(test_jwks()), at(3661)).expect("stored");
    assert!(!Arc::ptr_eq(&good, &cache.keys().expect("keys")));
    assert_eq!(cache.start_scheduled_refresh(at(3721)), None, "back to the hourly schedule");
}

#[test]
fn cache_retries_a_failing_first_fetch_at_the_minimum_interval() {
    let t0 = Instant::now();
    let at = |secs| t0 + Duration::from_secs(secs);
    let mut cache = KeyCache::new(RefreshTiming::default());
    assert_eq!(cache.start_scheduled_refresh(t0), Some(RefreshReason::Initial));
    assert!(cache.finish_refresh(Err(fetch_failure()), t0).is_err());
    assert!(cache.keys().is_none());
    assert_eq!(cache.start_scheduled_refresh(at(59)), None);
    assert_eq!(cache.start_scheduled_refresh(at(60)), Some(RefreshReason::RetryAfterFailure));
}

#[test]
fn unknown_key_refreshes_are_rate_limited() {
    let t0 = Instant::now();
    let at = |secs| t0 + Duration::from_secs(secs);
    let timing =
        RefreshTiming { refresh_interval: Duration::from_secs(3600), min_fetch_interval: Duration::from_secs(60) };
    let mut cache = KeyCache::new(timing);
    cache.start_scheduled_refresh(t0);
    cache.finish_refresh(Ok(test_jwks()), t0).expect("stored");
    assert!(!cache.start_refresh_for_unknown_key(at(59)));
    assert!(cache.start_refresh_for_unknown_key(at(60)));
    assert!(!cache.start_refresh_for_unknown_key(at(61)), "a second unknown kid waits");
    // A flood of tokens with random kids, one per second: one fetch a minute.
    let fetches = (61..661).filter(|&secs| cache.start_refresh_for_unknown_key(at(secs))).count();
    assert_eq!(fetches, 10, "at 120, 180, ... 660 s");
    // Scheduled fetches count as attempts too.
    assert_eq!(cache.start_scheduled_refresh(at(3600)), Some(RefreshReason::Periodic));
    assert!(!cache.start_refresh_for_unknown_key(at(3601)));
}
