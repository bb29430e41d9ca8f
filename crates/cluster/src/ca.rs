//! The cluster CA: generated once by `portico controller init`, kept in a
//! state directory (and from there in Docker secrets, so that a controller
//! rescheduled to another manager issues certificates the proxies still
//! trust), and used to issue the controller's server certificate and the
//! proxies' client certificates.
//!
//! # What a CSR must be to be signed
//! A proxy's certificate carries nothing from its request but the public
//! key: the controller writes the subject (`CN=<proxy id>`), the validity,
//! the key usage (`digitalSignature`), the extended key usage (`clientAuth`)
//! and `CA:FALSE` itself. The request is checked so that a proxy asking for
//! more is told so rather than silently given less:
//! - its self-signature verifies (the requester holds the key);
//! - its key is ECDSA P-256 (uncompressed point), the only kind the cluster
//!   issues for: one algorithm to support, test and rotate;
//! - its subject is empty or exactly `CN=<the proxy id of the request>`;
//!   any other attribute (O, OU, a second CN, ...) is refused;
//! - it requests no subject alternative names at all: the controller asks
//!   for none (a proxy's identity is its CN, and a client certificate with
//!   DNS names could be mistaken for a server's);
//! - it does not request `CA:TRUE`.
//!
//! Other requested extensions (key usages, extended key usages, ...) are
//! ignored, since none is copied; attributes other than the extension
//! request (a challenge password) likewise.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, ServerName};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519, OID_X509_COMMON_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::base32;
use crate::id::ProxyId;
use crate::state;

/// The CA certificate's file in a state directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file in a state directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
pub const CA_COMMON_NAME: &str = "Portico cluster CA";
/// The controller's server certificate's CN (its names are in its SANs).
pub const CONTROLLER_COMMON_NAME: &str = "Portico controller";

const DAY: u64 = 24 * 3600;
/// The CA outlives any cluster we expect; replacing it means every proxy
/// joins again with a new token.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * DAY);
/// The controller issues its own server certificate at every start (it
/// holds the CA key), so this only bounds how long one controller process
/// can run before it must renew (see [`IssuedCert::renew_at`]).
pub const SERVER_VALIDITY: Duration = Duration::from_secs(90 * DAY);
/// A proxy's certificate is renewed over its authenticated stream; a short
/// life bounds how long a proxy removed from the cluster (or a stolen key)
/// keeps working, since there is no revocation list.
pub const CLIENT_VALIDITY: Duration = Duration::from_secs(30 * DAY);
/// Certificates start this long before they are issued, so that a node
/// whose clock is a little behind the controller's accepts them at once.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The SHA-256 of the CA certificate's DER: what a join token carries so a
/// proxy can recognise its controller on first contact. Shown in lower-case
/// base32 (52 characters), as in the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaDigest([u8; 32]);

impl CaDigest {
    pub fn of(cert_der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        CaDigest(bytes)
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        CaDigest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32::encode(&self.0))
    }
}

impl fmt::Debug for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaDigest({self})")
    }
}

/// A certificate the CA issued (or one loaded back from disk), with its
/// validity read from the certificate itself.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub pem: String,
    pub der: CertificateDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl IssuedCert {
    /// The first certificate in `pem`.
    pub fn from_pem(pem: &str) -> Result<Self, CaError> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| CaError::NotPem {
            what: "the certificate",
            label: "CERTIFICATE",
        })?;
        let facts = CertFacts::of(&der).map_err(|reason| CaError::Parse {
            what: "the certificate",
            reason,
        })?;
        Ok(IssuedCert {
            pem: pem.to_owned(),
            der,
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }

    fn from_rcgen(cert: &rcgen::Certificate) -> Result<Self, CaError> {
        let der = cert.der().clone();
        let facts = CertFacts::of(&der).map_err(|reason| CaError::Parse {
            what: "the issued certificate",
            reason,
        })?;
        Ok(IssuedCert {
            pem: cert.pem(),
            der,
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }

    /// When to replace this certificate: two thirds into its life (20 days
    /// into a proxy's 30, 60 into the controller's 90), which leaves a third
    /// of it for retries while the controller is away.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 3 * 2
    }
}

/// A certificate with its private key: the controller's server identity, or
/// a proxy's client identity.
#[derive(Clone)]
pub struct Credentials {
    pub cert: IssuedCert,
    /// PKCS#8 PEM. Private, so that `{:?}` never prints it.
    key_pem: String,
}

impl Credentials {
    /// Pairs `cert_pem` with `key_pem`, checking that the key is the one
    /// the certificate was issued for (a proxy's files replaced one at a
    /// time would otherwise fail only at the next handshake).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let cert = IssuedCert::from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Parse {
            what: "the private key",
            reason: e.to_string(),
        })?;
        let facts = CertFacts::of(&cert.der).map_err(|reason| CaError::Parse {
            what: "the certificate",
            reason,
        })?;
        if facts.public_key != key.der_bytes() {
            return Err(CaError::KeyMismatch {
                what: "the certificate",
            });
        }
        Ok(Credentials {
            cert,
            key_pem: key_pem.to_owned(),
        })
    }

    pub(crate) fn new(cert: IssuedCert, key_pem: String) -> Self {
        Credentials { cert, key_pem }
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("cert", &self.cert)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The cluster CA: its certificate and the key that signs with it.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert: IssuedCert,
    digest: CaDigest,
}

impl ClusterCa {
    /// A new CA: ECDSA P-256, `CN=Portico cluster CA`, valid for
    /// [`CA_VALIDITY`], allowed to sign end-entity certificates only
    /// (`pathLenConstraint` 0).
    pub fn generate() -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let (not_before, not_after) = validity(CA_VALIDITY);
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        params.distinguished_name = common_name(CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = IssuedCert::from_rcgen(&params.self_signed(&key)?)?;
        let digest = CaDigest::of(&cert.der);
        Ok(ClusterCa {
            issuer: Issuer::new(params, key),
            cert,
            digest,
        })
    }

    /// A CA from its certificate and key (as `save` wrote them, or as an
    /// operator provides them). The certificate must be a CA and the key
    /// its own. Expiry is not checked here: see [`ClusterCa::not_after`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let cert = IssuedCert::from_pem(cert_pem).map_err(|e| match e {
            CaError::NotPem { label, .. } => CaError::NotPem {
                what: "the CA certificate",
                label,
            },
            CaError::Parse { reason, .. } => CaError::Parse {
                what: "the CA certificate",
                reason,
            },
            other => other,
        })?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&cert.der).map_err(|e| CaError::Parse {
                what: "the CA certificate",
                reason: e.to_string(),
            })?;
        match x509.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => return Err(CaError::NotACa),
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Parse {
            what: "the CA key",
            reason: e.to_string(),
        })?;
        if key.der_bytes() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch {
                what: "the CA certificate",
            });
        }
        // The issuer takes the subject and key identifier from the
        // certificate as written, so that what it signs chains to it byte
        // for byte whoever generated it.
        let issuer = Issuer::from_ca_cert_der(&cert.der, key)?;
        let digest = CaDigest::of(&cert.der);
        Ok(ClusterCa {
            issuer,
            cert,
            digest,
        })
    }

    /// Generates a CA and saves it in `dir` (created `0700` if missing).
    /// Refuses when `dir` already holds one: a new CA silently replacing
    /// the old would lock every joined proxy out.
    pub fn init(dir: &Path) -> Result<Self, CaError> {
        for name in [CA_CERT_FILE, CA_KEY_FILE] {
            let path = dir.join(name);
            match fs::symlink_metadata(&path) {
                Ok(_) => return Err(CaError::AlreadyInitialised { path }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CaError::Io {
                        action: "inspect",
                        path,
                        source,
                    })
                }
            }
        }
        let ca = ClusterCa::generate()?;
        ca.save(dir)?;
        Ok(ca)
    }

    /// Writes `ca.key` (0600) then `ca.crt` (0644) into `dir`, each
    /// atomically. The key goes first: a crash in between leaves no
    /// certificate, so `init` can simply be run again.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        state::create_dir(dir).map_err(|source| CaError::Io {
            action: "create",
            path: dir.to_owned(),
            source,
        })?;
        let key_path = dir.join(CA_KEY_FILE);
        state::write_atomic(
            &key_path,
            self.issuer.key().serialize_pem().as_bytes(),
            state::PRIVATE,
        )
        .map_err(|source| CaError::Io {
            action: "write",
            path: key_path,
            source,
        })?;
        let cert_path = dir.join(CA_CERT_FILE);
        state::write_atomic(&cert_path, self.cert.pem.as_bytes(), state::PUBLIC).map_err(|source| {
            CaError::Io {
                action: "write",
                path: cert_path,
                source,
            }
        })
    }

    /// Loads `ca.crt` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        ClusterCa::load_files(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))
    }

    /// Loads the CA from two files anywhere: Docker secrets are mounted
    /// under `/run/secrets/<name>`, with modes the stack file decides, so
    /// no mode is checked here.
    pub fn load_files(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| CaError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        ClusterCa::from_pem(&cert_pem, &key_pem).map_err(|source| CaError::Files {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            source: Box::new(source),
        })
    }

    pub fn digest(&self) -> &CaDigest {
        &self.digest
    }

    pub fn cert(&self) -> &IssuedCert {
        &self.cert
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert.pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert.der
    }

    /// When the CA expires. Not checked at load (loading does not depend
    /// on the clock); a controller should warn well before.
    pub fn not_after(&self) -> SystemTime {
        self.cert.not_after
    }

    /// The controller's server certificate, with a fresh P-256 key, for
    /// `names` (DNS names or IP addresses: whatever proxies put in
    /// `--controller https://HOST:PORT`), valid for [`SERVER_VALIDITY`],
    /// `serverAuth` only.
    pub fn issue_server<S: AsRef<str>>(&self, names: &[S]) -> Result<Credentials, CaError> {
        if names.is_empty() {
            return Err(CaError::NoServerNames);
        }
        let mut params = leaf_params(CONTROLLER_COMMON_NAME, SERVER_VALIDITY)?;
        for name in names {
            params.subject_alt_names.push(server_san(name.as_ref())?);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue_with_fresh_key(&params)
    }

    /// A proxy's client certificate with a fresh P-256 key, for a proxy
    /// that is "given a certificate directly" rather than joining.
    pub fn issue_client(&self, id: &ProxyId) -> Result<Credentials, CaError> {
        self.issue_with_fresh_key(&client_params(id)?)
    }

    /// Signs a proxy's CSR (PEM) as `id`'s client certificate, if the CSR is
    /// one the cluster accepts (see the module docs).
    pub fn sign_client_csr(&self, id: &ProxyId, csr_pem: &str) -> Result<IssuedCert, CaError> {
        let der = csr_der_from_pem(csr_pem)?;
        self.sign_client_csr_der(id, &der)
    }

    /// [`ClusterCa::sign_client_csr`] for a CSR already in DER.
    pub fn sign_client_csr_der(
        &self,
        id: &ProxyId,
        csr: &CertificateSigningRequestDer<'_>,
    ) -> Result<IssuedCert, CaError> {
        let key = check_csr(csr, id)?;
        let cert = client_params(id)?.signed_by(&key, &self.issuer)?;
        IssuedCert::from_rcgen(&cert)
    }

    fn issue_with_fresh_key(&self, params: &CertificateParams) -> Result<Credentials, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Credentials::new(
            IssuedCert::from_rcgen(&cert)?,
            key.serialize_pem(),
        ))
    }
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("digest", &self.digest)
            .field("not_after", &self.cert.not_after)
            .finish_non_exhaustive()
    }
}

/// Why the CA could not be created, loaded, saved or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} already exists: this state directory already holds a cluster CA. \
         Load it; or, to start a new cluster, remove ca.crt and ca.key \
         (every proxy that joined the old one will then refuse the controller)",
        path.display()
    )]
    AlreadyInitialised { path: PathBuf },
    #[error("loading the cluster CA from {} and {}: {source}", cert.display(), key.display())]
    Files {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: Box<CaError>,
    },
    #[error("{what} holds no PEM block \"-----BEGIN {label}-----\"")]
    NotPem {
        what: &'static str,
        label: &'static str,
    },
    #[error("{what} does not parse: {reason}")]
    Parse { what: &'static str, reason: String },
    #[error("the CA certificate is not a CA certificate (it lacks basicConstraints CA:TRUE)")]
    NotACa,
    #[error("the private key does not belong to {what}")]
    KeyMismatch { what: &'static str },
    #[error("the controller's certificate needs at least one DNS name or IP address")]
    NoServerNames,
    #[error("{name:?} is not a DNS name or an IP address for the controller's certificate")]
    ServerName { name: String },
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("generating a key or a certificate failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the system's random number generator failed")]
    Random,
}

/// Why a proxy's certificate signing request was refused. Values taken from
/// the request are shown escaped and shortened: it comes from a peer that
/// has not yet proven anything.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the certificate request holds no PEM block \"-----BEGIN CERTIFICATE REQUEST-----\"")]
    NotPem,
    #[error("the certificate request does not parse: {0}")]
    Parse(String),
    #[error(
        "the certificate request's key is {found}; the cluster issues certificates \
         for ECDSA P-256 keys only"
    )]
    KeyAlgorithm { found: String },
    #[error(
        "the certificate request's signature does not verify (it was altered, or \
         not signed with its own key)"
    )]
    Signature,
    #[error(
        "the certificate request's CN is {found}, not the proxy id {expected:?} it was \
         sent with"
    )]
    CommonName { found: String, expected: String },
    #[error(
        "the certificate request's subject holds {attribute}; only CN=<proxy id> is \
         accepted (or an empty subject)"
    )]
    SubjectAttribute { attribute: String },
    #[error(
        "the certificate request asks for subject alternative names ({}); a proxy's \
         certificate carries none: its identity is its CN",
        names.join(", ")
    )]
    SubjectAltNames { names: Vec<String> },
    #[error("the certificate request asks to be a CA (basicConstraints CA:TRUE)")]
    CaRequested,
}

/// The DER of a PEM CSR.
pub fn csr_der_from_pem(pem: &str) -> Result<CertificateSigningRequestDer<'static>, CsrError> {
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|_| CsrError::NotPem)
}

/// A public key that passed [`check_csr`]: a P-256 point, what rcgen signs.
struct CheckedKey(Vec<u8>);

impl PublicKeyData for CheckedKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// Checks a CSR against what the cluster signs (see the module docs) and
/// returns its key.
fn check_csr(der: &[u8], id: &ProxyId) -> Result<CheckedKey, CsrError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Parse(format!(
            "{} bytes follow the request",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    // The key first: a request for an algorithm we don't issue for is
    // better told so than that its signature does not verify.
    let point = &info.subject_pki.subject_public_key.data;
    if !is_p256(&info.subject_pki) || point.len() != 65 || point[0] != 0x04 {
        return Err(CsrError::KeyAlgorithm {
            found: key_algorithm(&info.subject_pki),
        });
    }
    csr.verify_signature().map_err(|_| CsrError::Signature)?;

    let mut common_names = 0;
    for attr in info.subject.iter_attributes() {
        if attr.attr_type() != &OID_X509_COMMON_NAME {
            return Err(CsrError::SubjectAttribute {
                attribute: attribute_name(attr.attr_type()),
            });
        }
        common_names += 1;
        if common_names > 1 {
            return Err(CsrError::SubjectAttribute {
                attribute: "a second CN".into(),
            });
        }
        match attr.as_str() {
            Ok(cn) if cn == id.as_str() => {}
            Ok(cn) => {
                return Err(CsrError::CommonName {
                    found: shown(cn),
                    expected: id.to_string(),
                })
            }
            Err(_) => {
                return Err(CsrError::CommonName {
                    found: "not a string".into(),
                    expected: id.to_string(),
                })
            }
        }
    }

    for attr in info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(request) = attr.parsed_attribute() else {
            continue;
        };
        for ext in &request.extensions {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    return Err(CsrError::SubjectAltNames {
                        names: san
                            .general_names
                            .iter()
                            .map(|n| shown(&n.to_string()))
                            .collect(),
                    });
                }
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(CsrError::CaRequested);
                }
                ParsedExtension::ParseError { error } => {
                    return Err(CsrError::Parse(format!(
                        "its requested extension {} does not parse: {error}",
                        ext.oid
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(CheckedKey(point.to_vec()))
}

fn ec_curve<'a>(spki: &'a SubjectPublicKeyInfo<'_>) -> Option<Oid<'a>> {
    spki.algorithm
        .parameters
        .as_ref()
        .and_then(|p| Oid::try_from(p).ok())
}

fn is_p256(spki: &SubjectPublicKeyInfo<'_>) -> bool {
    spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && ec_curve(spki).is_some_and(|c| c == OID_EC_P256)
}

/// A key's algorithm in words, for the refusal.
fn key_algorithm(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        match ec_curve(spki) {
            Some(c) if c == OID_EC_P256 => {
                "ECDSA P-256 with a compressed or malformed point".into()
            }
            Some(c) if c == OID_NIST_EC_P384 => "ECDSA P-384".into(),
            Some(c) => format!("ECDSA on curve {c}"),
            None => "ECDSA without a named curve".into(),
        }
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        "RSA".into()
    } else if *alg == OID_SIG_ED25519 {
        "Ed25519".into()
    } else {
        format!("of algorithm {alg}")
    }
}

fn attribute_name(oid: &Oid<'_>) -> String {
    match x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry()) {
        Ok(name) => name.to_owned(),
        Err(_) => oid.to_id_string(),
    }
}

/// A peer-supplied string as it may appear in an error: escaped (no control
/// characters reach a log) and at most 64 characters.
fn shown(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() > MAX {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

fn server_san(name: &str) -> Result<SanType, CaError> {
    let bad = || CaError::ServerName {
        name: name.to_owned(),
    };
    // rustls' own parser: a name it accepts here is one a proxy can dial.
    match ServerName::try_from(name).map_err(|_| bad())? {
        ServerName::IpAddress(ip) => Ok(SanType::IpAddress(std::net::IpAddr::from(ip))),
        ServerName::DnsName(dns) => Ok(SanType::DnsName(
            dns.as_ref().try_into().map_err(|_| bad())?,
        )),
        _ => Err(bad()),
    }
}

fn client_params(id: &ProxyId) -> Result<CertificateParams, CaError> {
    let mut params = leaf_params(id.as_str(), CLIENT_VALIDITY)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// What every certificate the CA issues shares.
fn leaf_params(cn: &str, life: Duration) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let (not_before, not_after) = validity(life);
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    params.distinguished_name = common_name(cn);
    params.is_ca = IsCa::ExplicitNoCa;
    // ECDSA keys sign; they never encipher.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Names the CA key, so that path building is unambiguous once the CA
    // is rotated and two cluster CAs coexist.
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn validity(life: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - CLOCK_SKEW, now + life)
}

/// 16 random bytes, positive and with a non-zero first byte (so the DER
/// integer keeps all 16): serials must be unique per issuer, and rcgen's
/// default (a hash of the public key) repeats when a key is renewed.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// What the crate reads back from a certificate.
pub(crate) struct CertFacts {
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// The first CN of the subject, if it is a string.
    pub(crate) common_name: Option<String>,
    /// The subject public key's bits (for an EC key, the point).
    pub(crate) public_key: Vec<u8>,
}

impl CertFacts {
    pub(crate) fn of(der: &[u8]) -> Result<Self, String> {
        let (rest, x509) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} bytes follow the certificate", rest.len()));
        }
        let time = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        let common_name = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Ok(CertFacts {
            not_before: time(x509.validity().not_before.timestamp()),
            not_after: time(x509.validity().not_after.timestamp()),
            common_name,
            public_key: x509.public_key().subject_public_key.data.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{PKCS_ECDSA_P384_SHA384, PKCS_ED25519};

    fn id(s: &str) -> ProxyId {
        ProxyId::new(s).unwrap()
    }

    /// A CSR as a proxy (or a misbehaving one) would make it.
    fn csr(alg: &'static SignatureAlgorithm, edit: impl FnOnce(&mut CertificateParams)) -> String {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        edit(&mut params);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn refusal(ca: &ClusterCa, csr_pem: &str) -> CsrError {
        match ca.sign_client_csr(&id("lb-1"), csr_pem) {
            Err(CaError::Csr(e)) => e,
            other => panic!("expected a CSR refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_ca_is_a_p256_ca_named_for_the_cluster_and_valid_ten_years() {
        let ca = ClusterCa::generate().unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert!(x509.basic_constraints().unwrap().unwrap().value.ca);
        assert_eq!(
            CertFacts::of(ca.cert_der()).unwrap().common_name.as_deref(),
            Some(CA_COMMON_NAME)
        );
        assert!(is_p256(x509.public_key()));
        let life = ca.not_after().duration_since(ca.cert().not_before).unwrap();
        assert!(life >= CA_VALIDITY, "{life:?}");
        assert_eq!(*ca.digest(), CaDigest::of(ca.cert_der()));
    }

    #[test]
    fn a_csr_with_only_the_proxy_id_or_an_empty_subject_is_signed_with_client_auth() {
        let ca = ClusterCa::generate().unwrap();
        for pem in [
            csr(&PKCS_ECDSA_P256_SHA256, |_| {}),
            csr(&PKCS_ECDSA_P256_SHA256, |p| {
                p.distinguished_name.push(DnType::CommonName, "lb-1")
            }),
            // Requested usages are ignored, not copied.
            csr(&PKCS_ECDSA_P256_SHA256, |p| {
                p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }),
        ] {
            let cert = ca.sign_client_csr(&id("lb-1"), &pem).unwrap();
            let (_, x509) = x509_parser::parse_x509_certificate(&cert.der).unwrap();
            let eku = x509.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth && !eku.server_auth && !eku.any);
            assert!(!x509.basic_constraints().unwrap().unwrap().value.ca);
            assert_eq!(
                CertFacts::of(&cert.der).unwrap().common_name.as_deref(),
                Some("lb-1")
            );
            assert!(x509.subject_alternative_name().unwrap().is_none());
            let life = cert.not_after.duration_since(cert.not_before).unwrap();
            assert_eq!(life, CLIENT_VALIDITY + CLOCK_SKEW);
        }
    }

    #[test]
    fn a_csr_for_another_key_algorithm_is_refused_with_its_name() {
        let ca = ClusterCa::generate().unwrap();
        assert_eq!(
            refusal(&ca, &csr(&PKCS_ECDSA_P384_SHA384, |_| {})),
            CsrError::KeyAlgorithm {
                found: "ECDSA P-384".into()
            }
        );
        assert_eq!(
            refusal(&ca, &csr(&PKCS_ED25519, |_| {})),
            CsrError::KeyAlgorithm {
                found: "Ed25519".into()
            }
        );
    }

    #[test]
    fn a_csr_asking_for_names_is_refused_and_the_names_are_listed() {
        let ca = ClusterCa::generate().unwrap();
        let pem = csr(&PKCS_ECDSA_P256_SHA256, |p| {
            p.subject_alt_names = vec![
                SanType::DnsName("controller.example".try_into().unwrap()),
                SanType::IpAddress([10, 0, 0, 1].into()),
            ];
        });
        let e = refusal(&ca, &pem);
        assert!(matches!(&e, CsrError::SubjectAltNames { names } if names.len() == 2));
        let message = e.to_string();
        assert!(message.contains("controller.example"), "{message}");
    }

    #[test]
    fn a_csr_with_another_identity_or_asking_to_be_a_ca_is_refused() {
        let ca = ClusterCa::generate().unwrap();
        let e = refusal(
            &ca,
            &csr(&PKCS_ECDSA_P256_SHA256, |p| {
                p.distinguished_name.push(DnType::CommonName, "lb-2")
            }),
        );
        assert_eq!(
            e,
            CsrError::CommonName {
                found: "\"lb-2\"".into(),
                expected: "lb-1".into()
            }
        );
        let e = refusal(
            &ca,
            &csr(&PKCS_ECDSA_P256_SHA256, |p| {
                p.distinguished_name.push(DnType::CommonName, "lb-1");
                p.distinguished_name
                    .push(DnType::OrganizationName, "system:masters");
            }),
        );
        assert_eq!(
            e,
            CsrError::SubjectAttribute {
                attribute: "O".into()
            }
        );
        let e = refusal(
            &ca,
            &csr(&PKCS_ECDSA_P256_SHA256, |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
            }),
        );
        assert_eq!(e, CsrError::CaRequested);
    }

    #[test]
    fn an_altered_or_garbled_csr_is_refused() {
        let ca = ClusterCa::generate().unwrap();
        let pem = csr(&PKCS_ECDSA_P256_SHA256, |p| {
            p.distinguished_name.push(DnType::CommonName, "lb-1")
        });
        // Flip a bit inside the CN: the signature no longer covers it.
        let mut der = csr_der_from_pem(&pem).unwrap().as_ref().to_vec();
        let at = der.windows(4).position(|w| w == b"lb-1").unwrap();
        der[at + 3] ^= 0x01;
        assert!(matches!(
            ca.sign_client_csr_der(&id("lb-1"), &der.into()),
            Err(CaError::Csr(CsrError::Signature))
        ));
        assert_eq!(refusal(&ca, "not a csr"), CsrError::NotPem);
        let junk = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(refusal(&ca, junk), CsrError::Parse(_)));
    }

    #[test]
    fn the_server_certificate_names_the_controller_and_is_renewed_at_two_thirds() {
        let ca = ClusterCa::generate().unwrap();
        let creds = ca
            .issue_server(&["portico-controller", "10.0.0.2", "::1"])
            .unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&creds.cert.der).unwrap();
        let sans = x509.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(sans.general_names.len(), 3);
        assert!(
            x509.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .server_auth
        );
        let life = creds
            .cert
            .not_after
            .duration_since(creds.cert.not_before)
            .unwrap();
        assert_eq!(life, SERVER_VALIDITY + CLOCK_SKEW);
        assert_eq!(creds.cert.renew_at(), creds.cert.not_before + life / 3 * 2);
        assert!(matches!(
            ca.issue_server(&["bad name"]),
            Err(CaError::ServerName { .. })
        ));
        assert!(matches!(
            ca.issue_server::<&str>(&[]),
            Err(CaError::NoServerNames)
        ));
        // The key never shows in Debug output.
        assert!(!format!("{creds:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn loading_checks_that_the_key_is_the_cas_and_the_certificate_a_ca() {
        let ca = ClusterCa::generate().unwrap();
        let other = ClusterCa::generate().unwrap();
        let key = ca.issuer.key().serialize_pem();
        let again = ClusterCa::from_pem(ca.cert_pem(), &key).unwrap();
        assert_eq!(again.digest(), ca.digest());
        assert!(matches!(
            ClusterCa::from_pem(ca.cert_pem(), &other.issuer.key().serialize_pem()),
            Err(CaError::KeyMismatch { .. })
        ));
        let leaf = ca.issue_client(&id("lb-1")).unwrap();
        assert!(matches!(
            ClusterCa::from_pem(&leaf.cert.pem, leaf.key_pem()),
            Err(CaError::NotACa)
        ));
        // What a reloaded CA issues chains to the original certificate.
        let issued = again.issue_client(&id("lb-1")).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&issued.cert.der).unwrap();
        let (_, ca_x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(x509.issuer().as_raw(), ca_x509.subject().as_raw());
        x509.verify_signature(Some(ca_x509.public_key())).unwrap();
    }
}
