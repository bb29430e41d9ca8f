//! The TLS side of a hop: a client that completes the handshake whatever
//! the certificate, so the tracer can report *what* is wrong with it (names,
//! chain, expiry) and still see the HTTP answer behind it, as `curl -k -v`
//! lets an operator do by hand.
//!
//! The certificate is still verified, by rustls' own WebPKI verifier against
//! the system roots or `--cacert`; its verdict is recorded instead of
//! aborting the handshake. Handshake signatures are verified as usual, so a
//! peer that does not hold the certificate's key still fails.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::{Deserialize, Serialize};

/// Why TLS settings could not be built (bad usage: exit 2).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA file {path}: {error}")]
    CaFile { path: String, error: String },
    #[error("CA file {0} holds no PEM certificate")]
    EmptyCaFile(String),
}

/// What the trace trusts, shared by every TLS hop of one run.
#[derive(Clone)]
pub struct TlsClient {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    /// Names the trust anchors in evidence ("the CA in ca.pem", "the system CAs").
    pub trust: String,
}

impl TlsClient {
    /// Trusts the CAs in `cacert` (PEM) if given, else the system's.
    pub fn new(cacert: Option<&Path>) -> Result<TlsClient, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        let trust = match cacert {
            Some(path) => {
                let shown = path.display().to_string();
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| TlsSetupError::CaFile {
                        path: shown.clone(),
                        error: e.to_string(),
                    })?
                    .collect::<Result<_, _>>()
                    .map_err(|e| TlsSetupError::CaFile {
                        path: shown.clone(),
                        error: e.to_string(),
                    })?;
                if certs.is_empty() {
                    return Err(TlsSetupError::EmptyCaFile(shown));
                }
                roots.add_parsable_certificates(certs);
                format!("the CA in {shown}")
            }
            None => {
                // Unreadable system certificates are not fatal: the handshake
                // still runs and the chain is reported as untrusted.
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                "the system CAs".to_owned()
            }
        };
        Ok(TlsClient {
            provider,
            roots: Arc::new(roots),
            trust,
        })
    }

    /// A client config for one connection, with the slot its verifier
    /// fills in during the handshake.
    pub(crate) fn for_connection(&self) -> (Arc<ClientConfig>, Arc<Mutex<Option<Recorded>>>) {
        let slot = Arc::new(Mutex::new(None));
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .ok();
        let verifier = Arc::new(Recorder {
            inner,
            provider: self.provider.clone(),
            slot: slot.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        (Arc::new(config), slot)
    }
}

/// What the verifier saw during one handshake.
#[derive(Debug)]
pub(crate) struct Recorded {
    pub chain: Vec<CertificateDer<'static>>,
    pub verdict: Result<(), rustls::Error>,
}

#[derive(Debug)]
struct Recorder {
    /// `None` when there is no trust anchor at all: every chain is untrusted.
    inner: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    slot: Arc<Mutex<Option<Recorded>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = match &self.inner {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ()),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        };
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Recorded { chain, verdict });
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// The certificate a hop presented and what is wrong with it, if anything.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TlsReport {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The SNI sent (the traced host).
    pub server_name: String,
    pub subject: String,
    pub issuer: String,
    /// DNS names of the subjectAltName extension (the names that count).
    pub names: Vec<String>,
    /// RFC 3339, UTC.
    pub not_before: String,
    pub not_after: String,
    /// Days until `not_after` (negative once expired).
    pub expires_in_days: i64,
    /// Certificates the server sent (leaf first).
    pub chain_len: usize,
    /// Whether the chain verifies for `server_name` against the trust anchors.
    pub verified: bool,
    /// Each problem in words; empty when `verified`.
    pub problems: Vec<String>,
}

impl TlsReport {
    pub(crate) fn build(
        recorded: Recorded,
        server_name: &str,
        version: Option<rustls::ProtocolVersion>,
        trust: &str,
    ) -> TlsReport {
        let version = match version {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            Some(v) => format!("{v:?}"),
            None => "unknown".to_owned(),
        };
        let mut report = TlsReport {
            version,
            server_name: server_name.to_owned(),
            subject: String::new(),
            issuer: String::new(),
            names: Vec::new(),
            not_before: String::new(),
            not_after: String::new(),
            expires_in_days: 0,
            chain_len: recorded.chain.len(),
            verified: recorded.verdict.is_ok(),
            problems: Vec::new(),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut own_checks = false;
        if let Some(leaf) = recorded.chain.first() {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) {
                own_checks = true;
                report.subject = cert.subject().to_string();
                report.issuer = cert.issuer().to_string();
                if let Ok(Some(san)) = cert.subject_alternative_name() {
                    for name in &san.value.general_names {
                        match name {
                            x509_parser::extensions::GeneralName::DNSName(n) => {
                                report.names.push((*n).to_owned())
                            }
                            x509_parser::extensions::GeneralName::IPAddress(ip) => {
                                report.names.push(ip_text(ip))
                            }
                            _ => {}
                        }
                    }
                }
                let validity = cert.validity();
                let (nb, na) = (
                    validity.not_before.timestamp(),
                    validity.not_after.timestamp(),
                );
                report.not_before = rfc3339(nb);
                report.not_after = rfc3339(na);
                report.expires_in_days = (na - now).div_euclid(86_400);
                if !report.names.iter().any(|n| name_matches(n, server_name)) {
                    report.problems.push(if report.names.is_empty() {
                        format!("the certificate has no DNS names, so it is not valid for {server_name}")
                    } else {
                        format!(
                            "the certificate is for {}, not {server_name}",
                            report.names.join(", ")
                        )
                    });
                }
                if na < now {
                    report.problems.push(format!(
                        "the certificate expired on {} ({} days ago)",
                        report.not_after, -report.expires_in_days
                    ));
                } else if nb > now {
                    report.problems.push(format!(
                        "the certificate is not valid before {}",
                        report.not_before
                    ));
                }
            }
        }
        if let Err(e) = &recorded.verdict {
            let covered = own_checks
                && !report.problems.is_empty()
                && matches!(
                    e,
                    rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                            | CertificateError::NotValidForNameContext { .. }
                            | CertificateError::Expired
                            | CertificateError::ExpiredContext { .. }
                            | CertificateError::NotValidYet
                            | CertificateError::NotValidYetContext { .. }
                    )
                );
            if !covered {
                report
                    .problems
                    .push(describe_verify_error(e, &report.issuer, trust));
            }
        }
        report
    }

    /// One line for the table: names, expiry, and the first problem.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} cert {} expires {}",
            self.version,
            if self.names.is_empty() {
                "(no names)".to_owned()
            } else {
                self.names.join(",")
            },
            self.not_after.get(..10).unwrap_or(&self.not_after)
        );
        if self.verified {
            s.push_str(" (verified)");
        } else if let Some(p) = self.problems.first() {
            let _ = write!(s, ": {p}");
        }
        s
    }
}

fn describe_verify_error(e: &rustls::Error, issuer: &str, trust: &str) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the chain does not lead to {trust} (issuer: {})",
            if issuer.is_empty() { "unknown" } else { issuer }
        ),
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            "a signature in the certificate chain is invalid".to_owned()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "the certificate is not valid for the requested name".to_owned()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the certificate has expired".to_owned(),
        other => format!("the certificate does not verify: {other}"),
    }
}

/// Whether certificate name `pattern` covers `host`: exact, or a `*.` that
/// stands for exactly one leftmost label (RFC 6125).
pub fn name_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if let Some(suffix) = pattern.strip_prefix("*.") {
        return host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix);
    }
    pattern == host
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")).to_string(),
        _ => "?".to_owned(),
    }
}

/// `2026-11-26T10:00:47Z` for a Unix time (proleptic Gregorian, UTC).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("foo.app.test", "FOO.app.test"));
        assert!(name_matches("*.app.test", "foo.app.test"));
        assert!(!name_matches("*.app.test", "a.foo.app.test"));
        assert!(!name_matches("*.app.test", "app.test"));
        assert!(!name_matches("foo.app.test", "bar.app.test"));
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_609_459_200), "2021-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
    }
}
