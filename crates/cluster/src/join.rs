//! The join exchange's pure parts: what a proxy sends, what the controller
//! checks and answers, and what the proxy checks in the answer. No I/O: the
//! caller carries the JSON over the first-contact TLS connection.
//!
//! ```text
//! proxy                                     controller
//!   PendingJoin::new(token, id)
//!   -- JoinRequest {proxy_id, csr_pem, secret_proof} -->
//!                                             verify_join(request, token, ca)
//!   <-- JoinResponse {client_cert_pem, ca_cert_pem} --
//!   PendingJoin::finish(response)
//! ```
//!
//! # The secret proof
//! The request does not carry the token's secret but
//! `HMAC-SHA256(secret, "portico join v1" 0x00 ‖ CA digest ‖ len(id) as
//! u16 BE ‖ id ‖ CSR DER)`, in lower-case base32. The controller recomputes
//! it and compares in constant time. Why not the secret itself: the proof is
//! bound to this proxy id and this CSR's key, so a request that leaks
//! (logged, captured by a debugging proxy) is good for nothing but a
//! certificate for a key its finder does not hold; and the secret itself is
//! never written anywhere but the token file.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::base32;
use crate::ca::{
    csr_der_from_pem, CaDigest, CaError, CertFacts, ClusterCa, Credentials, CsrError, IssuedCert,
};
use crate::id::{ProxyId, ProxyIdError};
use crate::tls::{self, TlsError};
use crate::token::{JoinToken, Secret};

/// Domain separation: this HMAC means "join", in this version of the
/// exchange, and nothing else keyed by the token's secret.
const PROOF_LABEL: &[u8] = b"portico join v1";

/// What a proxy sends to join.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Unvalidated as received: [`verify_join`] checks it.
    pub proxy_id: String,
    /// PKCS#10, PEM.
    pub csr_pem: String,
    /// See the module docs.
    pub secret_proof: String,
}

/// What the controller answers a request it accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub client_cert_pem: String,
    /// The cluster CA: what the proxy trusts from now on (it hashes to the
    /// token's digest; [`PendingJoin::finish`] checks).
    pub ca_cert_pem: String,
}

impl JoinRequest {
    /// A request for `proxy_id` with `csr_pem`, proving knowledge of
    /// `token`'s secret.
    pub fn new(token: &JoinToken, proxy_id: &ProxyId, csr_pem: String) -> Result<Self, JoinError> {
        let csr = csr_der_from_pem(&csr_pem)?;
        let tag = proof(token.secret(), token.ca_digest(), proxy_id.as_str(), &csr);
        Ok(JoinRequest {
            proxy_id: proxy_id.to_string(),
            csr_pem,
            secret_proof: base32::encode(tag.as_ref()),
        })
    }
}

impl JoinResponse {
    pub fn new(client_cert: &IssuedCert, ca: &ClusterCa) -> Self {
        JoinResponse {
            client_cert_pem: client_cert.pem.clone(),
            ca_cert_pem: ca.cert_pem().to_owned(),
        }
    }
}

fn proof(
    secret: &Secret,
    ca_digest: &CaDigest,
    proxy_id: &str,
    csr_der: &[u8],
) -> aws_lc_rs::hmac::Tag {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    aws_lc_rs::hmac::sign(&key, &proof_message(ca_digest, proxy_id, csr_der))
}

fn proof_message(ca_digest: &CaDigest, proxy_id: &str, csr_der: &[u8]) -> Vec<u8> {
    // The id is length-prefixed so that no (id, CSR) pair can be re-split
    // into another; the id is at most 63 bytes once validated, and a u16
    // covers whatever an unvalidated one could be.
    let id = proxy_id.as_bytes();
    let id_len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    let mut m = Vec::with_capacity(PROOF_LABEL.len() + 1 + 32 + 2 + id.len() + csr_der.len());
    m.extend_from_slice(PROOF_LABEL);
    m.push(0);
    m.extend_from_slice(ca_digest.as_bytes());
    m.extend_from_slice(&id_len.to_be_bytes());
    m.extend_from_slice(id);
    m.extend_from_slice(csr_der);
    m
}

/// The controller's check of a join request: the token is this CA's, the
/// proxy id is valid, the proof shows the token's secret (compared in
/// constant time), and the CSR is one the cluster signs (see `ca`). Returns
/// the signed client certificate.
///
/// The proof is checked before the CSR's contents, so that a peer without
/// the secret learns nothing about what the controller would sign.
pub fn verify_join(
    request: &JoinRequest,
    token: &JoinToken,
    ca: &ClusterCa,
) -> Result<IssuedCert, JoinError> {
    if token.ca_digest() != ca.digest() {
        return Err(JoinError::TokenForAnotherCa {
            token: *token.ca_digest(),
            ca: *ca.digest(),
        });
    }
    let id = ProxyId::new(request.proxy_id.as_str())?;
    let csr = csr_der_from_pem(&request.csr_pem)?;
    let tag = base32::decode_32(&request.secret_proof).map_err(|_| JoinError::MalformedProof)?;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, token.secret().as_bytes());
    // `hmac::verify` compares in constant time.
    aws_lc_rs::hmac::verify(&key, &proof_message(ca.digest(), id.as_str(), &csr), &tag)
        .map_err(|_| JoinError::WrongSecret)?;
    ca.sign_client_csr_der(&id, &csr).map_err(|e| match e {
        CaError::Csr(e) => JoinError::Csr(e),
        other => JoinError::Issue(other),
    })
}

/// A proxy's side of a join in progress: its fresh key, and the request
/// made with it.
pub struct PendingJoin {
    ca_digest: CaDigest,
    proxy_id: ProxyId,
    key: KeyPair,
    request: JoinRequest,
}

impl PendingJoin {
    /// A fresh ECDSA P-256 key and a CSR for it with `CN=<proxy_id>` and
    /// nothing else (what `ca` accepts).
    pub fn new(token: &JoinToken, proxy_id: ProxyId) -> Result<Self, JoinError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(JoinError::Key)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, proxy_id.as_str());
        params.distinguished_name = dn;
        let csr_pem = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(JoinError::Key)?;
        let request = JoinRequest::new(token, &proxy_id, csr_pem)?;
        Ok(PendingJoin {
            ca_digest: *token.ca_digest(),
            proxy_id,
            key,
            request,
        })
    }

    pub fn request(&self) -> &JoinRequest {
        &self.request
    }

    /// Checks the controller's answer: the CA is the one the token names,
    /// the certificate is for this proxy's key and id, and it verifies as a
    /// client certificate against that CA now.
    pub fn finish(self, response: &JoinResponse) -> Result<JoinedProxy, JoinError> {
        let ca_cert = IssuedCert::from_pem(&response.ca_cert_pem).map_err(JoinError::Response)?;
        let found = CaDigest::of(&ca_cert.der);
        if found != self.ca_digest {
            return Err(JoinError::ResponseCa {
                expected: self.ca_digest,
                found,
            });
        }
        let cert = IssuedCert::from_pem(&response.client_cert_pem).map_err(JoinError::Response)?;
        let facts = CertFacts::of(&cert.der).map_err(|reason| {
            JoinError::Response(CaError::Parse {
                what: "the client certificate",
                reason,
            })
        })?;
        if facts.public_key != self.key.public_key_raw() {
            return Err(JoinError::ResponseKey);
        }
        if facts.common_name.as_deref() != Some(self.proxy_id.as_str()) {
            return Err(JoinError::ResponseIdentity {
                found: facts.common_name.unwrap_or_default(),
                expected: self.proxy_id.to_string(),
            });
        }
        let mut roots = RootCertStore::empty();
        roots
            .add(ca_cert.der.clone())
            .map_err(JoinError::ResponseChain)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tls::provider())
                .build()
                .map_err(|e| JoinError::ResponseChain(rustls::Error::General(e.to_string())))?;
        verifier
            .verify_client_cert(&cert.der, &[], UnixTime::now())
            .map_err(JoinError::ResponseChain)?;
        Ok(JoinedProxy {
            proxy_id: self.proxy_id,
            credentials: Credentials::new(cert, self.key.serialize_pem()),
            ca_cert,
        })
    }
}

/// What a proxy holds once joined.
#[derive(Clone, Debug)]
pub struct JoinedProxy {
    pub proxy_id: ProxyId,
    pub credentials: Credentials,
    pub ca_cert: IssuedCert,
}

impl JoinedProxy {
    /// Its config for every later connection to the controller.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        tls::joined_client_config(&self.ca_cert.der, &self.credentials)
    }
}

/// Why a join was refused (controller side) or its answer not accepted
/// (proxy side).
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "the join token is for another cluster CA (its CA digest is {token}, this \
         controller's is {ca}): the token file and the CA files do not belong together"
    )]
    TokenForAnotherCa { token: CaDigest, ca: CaDigest },
    #[error("invalid proxy id: {0}")]
    ProxyId(#[from] ProxyIdError),
    #[error("the secret proof is not 52 characters of lower-case base32")]
    MalformedProof,
    #[error("the join token's secret is wrong")]
    WrongSecret,
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("issuing the certificate failed: {0}")]
    Issue(CaError),
    #[error("creating this proxy's key and certificate request failed: {0}")]
    Key(rcgen::Error),
    #[error("the controller's answer does not parse: {0}")]
    Response(CaError),
    #[error(
        "the controller answered with a CA whose digest is {found}, not the join \
         token's {expected}"
    )]
    ResponseCa { expected: CaDigest, found: CaDigest },
    #[error("the certificate the controller issued is not for this proxy's key")]
    ResponseKey,
    #[error("the certificate the controller issued names {found:?}, not this proxy ({expected})")]
    ResponseIdentity { found: String, expected: String },
    #[error("the certificate the controller issued does not verify against the cluster CA: {0}")]
    ResponseChain(rustls::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (ClusterCa, JoinToken) {
        let ca = ClusterCa::generate().unwrap();
        let token = JoinToken::generate(*ca.digest()).unwrap();
        (ca, token)
    }

    fn id(s: &str) -> ProxyId {
        ProxyId::new(s).unwrap()
    }

    #[test]
    fn a_request_with_the_right_secret_is_signed_and_the_proxy_accepts_the_answer() {
        let (ca, token) = setup();
        let pending = PendingJoin::new(&token, id("lb-1")).unwrap();
        // Through JSON, as on the wire.
        let json = serde_json::to_string(pending.request()).unwrap();
        let request: JoinRequest = serde_json::from_str(&json).unwrap();
        assert!(!json.contains(&base32::encode(token.secret().as_bytes())));
        let cert = verify_join(&request, &token, &ca).unwrap();
        let response: JoinResponse =
            serde_json::from_str(&serde_json::to_string(&JoinResponse::new(&cert, &ca)).unwrap())
                .unwrap();
        let joined = pending.finish(&response).unwrap();
        assert_eq!(joined.proxy_id, id("lb-1"));
        joined.client_config().unwrap();
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let (ca, token) = setup();
        let impostor = JoinToken::generate(*ca.digest()).unwrap();
        let pending = PendingJoin::new(&impostor, id("lb-1")).unwrap();
        assert!(matches!(
            verify_join(pending.request(), &token, &ca),
            Err(JoinError::WrongSecret)
        ));
        let mut garbled = pending.request().clone();
        garbled.secret_proof = "not base32!".into();
        assert!(matches!(
            verify_join(&garbled, &token, &ca),
            Err(JoinError::MalformedProof)
        ));
    }

    #[test]
    fn the_proof_binds_the_proxy_id_and_the_csr() {
        let (ca, token) = setup();
        let a = PendingJoin::new(&token, id("lb-1")).unwrap();
        let b = PendingJoin::new(&token, id("lb-2")).unwrap();
        // lb-1's proof with another id, or with another CSR: refused.
        let mut renamed = a.request().clone();
        renamed.proxy_id = "lb-3".into();
        assert!(matches!(
            verify_join(&renamed, &token, &ca),
            Err(JoinError::WrongSecret)
        ));
        let mut swapped = a.request().clone();
        swapped.csr_pem = b.request().csr_pem.clone();
        assert!(matches!(
            verify_join(&swapped, &token, &ca),
            Err(JoinError::WrongSecret)
        ));
    }

    #[test]
    fn invalid_proxy_ids_are_refused_before_anything_else() {
        let (ca, token) = setup();
        let pending = PendingJoin::new(&token, id("lb-1")).unwrap();
        for bad in ["", "lb 1", "../etc", &"x".repeat(64)] {
            let mut request = pending.request().clone();
            request.proxy_id = bad.into();
            assert!(
                matches!(
                    verify_join(&request, &token, &ca),
                    Err(JoinError::ProxyId(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_valid_proof_does_not_make_a_bad_csr_acceptable() {
        let (ca, token) = setup();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["controller.example".into()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let request = JoinRequest::new(&token, &id("lb-1"), csr_pem).unwrap();
        assert!(matches!(
            verify_join(&request, &token, &ca),
            Err(JoinError::Csr(CsrError::SubjectAltNames { .. }))
        ));
    }

    #[test]
    fn a_token_for_another_ca_is_a_controller_misconfiguration() {
        let (ca, _) = setup();
        let other = ClusterCa::generate().unwrap();
        let token = JoinToken::generate(*other.digest()).unwrap();
        let pending = PendingJoin::new(&token, id("lb-1")).unwrap();
        assert!(matches!(
            verify_join(pending.request(), &token, &ca),
            Err(JoinError::TokenForAnotherCa { .. })
        ));
    }

    #[test]
    fn the_proxy_refuses_an_answer_from_another_ca_or_for_another_key() {
        let (ca, token) = setup();
        let other = ClusterCa::generate().unwrap();
        let pending = PendingJoin::new(&token, id("lb-1")).unwrap();
        // Signed by the right CA, but the answer names another CA.
        let cert = verify_join(pending.request(), &token, &ca).unwrap();
        let wrong_ca = JoinResponse::new(&cert, &other);
        assert!(matches!(
            PendingJoin::new(&token, id("lb-1"))
                .unwrap()
                .finish(&wrong_ca),
            Err(JoinError::ResponseCa { .. })
        ));
        // A certificate for some other key.
        let stranger = ca.issue_client(&id("lb-1")).unwrap();
        let wrong_key = JoinResponse::new(&stranger.cert, &ca);
        assert!(matches!(
            pending.finish(&wrong_key),
            Err(JoinError::ResponseKey)
        ));
    }
}
