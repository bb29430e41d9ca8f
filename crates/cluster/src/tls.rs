//! rustls configs for cluster traffic: TLS 1.3 only, every one built with
//! an explicit aws-lc-rs provider (see [`provider`]).
//!
//! - [`controller_server_config`]: the controller's listener. Client
//!   certificates are optional at the TLS layer, because a proxy with no
//!   certificate yet must reach the join endpoint; one that is presented
//!   must verify against the cluster CA (or the handshake fails). After the
//!   handshake, [`peer`] says what was presented, and the caller decides:
//!   [`Peer::Anonymous`] may join and nothing else.
//! - [`first_contact_client_config`]: a proxy that has only its join token.
//!   It trusts a controller whose certificate chain leads to a CA whose DER
//!   hashes to the token's digest ([`CaDigestVerifier`]).
//! - [`joined_client_config`]: a proxy with its client certificate, trusting
//!   only the cluster CA.
//!
//! ALPN is left to the caller (the framing is chosen elsewhere): the configs
//! are returned by value so that `alpn_protocols` can be set on them.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme, SupportedProtocolVersion,
};

use crate::ca::{CaDigest, CertFacts, Credentials};
use crate::id::ProxyId;

/// Cluster traffic is ours at both ends: no reason to speak anything older.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The crypto provider every config here is built with. Explicit, so that a
/// dependency enabling rustls' `ring` feature can't make the process-wide
/// default ambiguous (and `ServerConfig::builder()` panic).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The controller's server config: `server` (with the CA certificate sent
/// after it, so that a proxy on first contact can find the CA whose digest
/// its token holds), client certificates optional but verified against
/// `ca_cert` when presented.
pub fn controller_server_config(
    ca_cert: &CertificateDer<'static>,
    server: &Credentials,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_cert)?), provider.clone())
            .allow_unauthenticated()
            .build()?;
    let chain = vec![server.cert.der.clone(), ca_cert.clone()];
    Ok(ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key(server)?)?)
}

/// A proxy's config for its first contact, knowing only its join token's CA
/// digest. Presents no client certificate.
pub fn first_contact_client_config(ca_digest: CaDigest) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = CaDigestVerifier::new(ca_digest, provider.clone());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// A joined proxy's config: presents `client`, trusts only `ca_cert`.
pub fn joined_client_config(
    ca_cert: &CertificateDer<'static>,
    client: &Credentials,
) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(roots(ca_cert)?)
        .with_client_auth_cert(vec![client.cert.der.clone()], private_key(client)?)?)
}

fn roots(ca_cert: &CertificateDer<'static>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.clone())?;
    Ok(roots)
}

fn private_key(creds: &Credentials) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(creds.key_pem().as_bytes()).map_err(|_| TlsError::KeyPem)
}

/// Who is on the other end of a controller connection, as far as TLS knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate: may use the join endpoint, nothing else.
    Anonymous,
    /// A client certificate that verified against the cluster CA (the
    /// handshake fails otherwise), naming this proxy.
    Proxy(ProxyId),
}

/// What the client presented in `conn`'s (finished) handshake.
pub fn peer(conn: &ServerConnection) -> Result<Peer, TlsError> {
    if conn.is_handshaking() {
        return Err(TlsError::Handshaking);
    }
    // rustls keeps peer certificates only once its verifier accepted them,
    // so any here chained to the cluster CA, with clientAuth, in validity.
    let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Ok(Peer::Anonymous);
    };
    let facts = CertFacts::of(leaf).map_err(TlsError::PeerIdentity)?;
    let cn = facts
        .common_name
        .ok_or_else(|| TlsError::PeerIdentity("it has no CN".into()))?;
    let id = ProxyId::new(cn).map_err(|e| TlsError::PeerIdentity(e.to_string()))?;
    Ok(Peer::Proxy(id))
}

/// Why a TLS config could not be built, or a peer not be named.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the private key holds no PEM private key block")]
    KeyPem,
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error(transparent)]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the handshake is not finished: what the client presented is not known yet")]
    Handshaking,
    #[error("the client certificate names no valid proxy id: {0}")]
    PeerIdentity(String),
}

/// Accepts a server certificate only if the chain the server sent holds a
/// CA certificate whose DER SHA-256 is the join token's digest, and the
/// leaf verifies with that certificate as the only trust anchor (signature
/// chain and validity dates, by webpki), and the leaf is valid for the
/// name the proxy dialled.
///
/// Why this is enough to trust it: only the holder of that CA's key can
/// sign a leaf that chains to it; the digest in the token (which came from
/// the operator over a channel we trust, a Docker secret) pins which CA.
#[derive(Debug)]
pub struct CaDigestVerifier {
    digest: CaDigest,
    provider: Arc<CryptoProvider>,
}

impl CaDigestVerifier {
    pub fn new(digest: CaDigest, provider: Arc<CryptoProvider>) -> Self {
        CaDigestVerifier { digest, provider }
    }
}

impl ServerCertVerifier for CaDigestVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| CaDigest::of(c) == self.digest)
        else {
            let mismatch = CaDigestMismatch {
                expected: self.digest,
                presented: intermediates.iter().map(|c| CaDigest::of(c)).collect(),
            };
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(mismatch)),
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        verify_server_name(&cert, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The first-contact refusal: the server's chain holds no CA with the
/// token's digest. Carried inside `rustls::Error::InvalidCertificate`; see
/// [`ca_digest_mismatch`] to get it back out.
#[derive(Clone, PartialEq, Eq)]
pub struct CaDigestMismatch {
    /// The join token's.
    pub expected: CaDigest,
    /// Those of the CA certificates the server sent after its own.
    pub presented: Vec<CaDigest>,
}

impl fmt::Display for CaDigestMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CA digest mismatch: the server's certificate chain holds no CA with \
             the join token's CA digest {} (",
            self.expected
        )?;
        if self.presented.is_empty() {
            f.write_str("it sent no CA certificate")?;
        } else {
            f.write_str("it sent ")?;
            for (i, d) in self.presented.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{d}")?;
            }
        }
        f.write_str("): the token belongs to another cluster, or this is not its controller")
    }
}

/// rustls renders a certificate error's cause with `{:?}`: make that the
/// sentence too.
impl fmt::Debug for CaDigestMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for CaDigestMismatch {}

/// The digest mismatch inside a handshake error, if that is what it was.
pub fn ca_digest_mismatch(err: &rustls::Error) -> Option<&CaDigestMismatch> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<CaDigestMismatch>()
        }
        _ => None,
    }
}
