//! Server-side TLS: certificates from the config's material, checked when a
//! snapshot is built, chosen per handshake by SNI (exact name, then the most
//! specific wildcard, then the default), and client-side TLS to upstreams.
//!
//! A certificate that fails to load refuses HTTPS for its own service's
//! hosts only (even when a default certificate exists: a client asking for
//! `foo` must never be handed some other site's certificate); every other
//! service keeps serving.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portico_model::{Config, HostPattern, RoutingTable, TlsFiles, TlsProfile, UpstreamTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Certificates expiring sooner than this are warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The crypto provider every TLS config is built with. Explicit, so that a
/// dependency enabling another rustls provider can't make the process-wide
/// default ambiguous.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What is known about one loaded certificate, for logs and the admin API.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// The service it belongs to, or `default`.
    pub owner: String,
    pub file: String,
    /// DNS names (SAN) of the leaf certificate.
    pub names: Vec<String>,
    pub not_after: SystemTime,
}

enum Entry {
    Cert(Arc<CertifiedKey>),
    /// The service's certificate failed to load: refuse the handshake.
    Refused,
}

/// A certificate that could not be used, with the reason.
#[derive(Clone, Debug)]
pub struct CertProblem {
    /// The service it belongs to, or `default`.
    pub owner: String,
    pub file: String,
    pub message: String,
    /// Whether the previous, working certificate is still being served.
    pub kept_previous: bool,
}

/// The certificates of one snapshot.
#[derive(Default)]
pub struct CertStore {
    exact: HashMap<String, Entry>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Entry>,
    default: Option<Arc<CertifiedKey>>,
    /// The default certificate's DNS names (`*.x` for wildcards).
    default_names: Vec<String>,
    /// Every certificate in use, by the files it came from.
    by_files: HashMap<TlsFiles, (Arc<CertifiedKey>, CertInfo)>,
    pub problems: Vec<CertProblem>,
}

impl CertStore {
    /// Loads every certificate `config` names, logging each problem with the
    /// service and file. Never fails as a whole. A certificate that fails to
    /// load where `previous` had a working one from the same files (a
    /// renewal caught half-written, a key not yet replaced) keeps the
    /// previous one in service rather than taking the site down.
    pub fn build(
        config: &Config,
        table: &RoutingTable,
        provider: &CryptoProvider,
        previous: Option<&CertStore>,
    ) -> CertStore {
        let mut store = CertStore::default();
        let mut failed: HashMap<TlsFiles, ()> = HashMap::new();
        let mut get = |files: &TlsFiles, owner: &str, store: &mut CertStore| {
            if let Some((ck, _)) = store.by_files.get(files) {
                return Some(ck.clone());
            }
            if failed.contains_key(files) {
                return None;
            }
            match load(files, config, provider, owner) {
                Ok((ck, info)) => {
                    store.by_files.insert(files.clone(), (ck.clone(), info));
                    Some(ck)
                }
                Err(e) => {
                    let kept = previous.and_then(|p| p.by_files.get(files)).cloned();
                    if kept.is_some() {
                        tracing::error!(service = %owner, file = %e.file, error = %e.message, "certificate refused; still serving the previous one");
                    } else {
                        tracing::error!(service = %owner, file = %e.file, error = %e.message, "certificate refused; HTTPS for this service is off until it is fixed");
                    }
                    store.problems.push(CertProblem {
                        owner: owner.to_owned(),
                        file: e.file,
                        message: e.message,
                        kept_previous: kept.is_some(),
                    });
                    match kept {
                        Some((ck, info)) => {
                            store.by_files.insert(files.clone(), (ck.clone(), info));
                            Some(ck)
                        }
                        None => {
                            failed.insert(files.clone(), ());
                            None
                        }
                    }
                }
            }
        };
        if let Some(files) = &config.proxy.default_tls {
            store.default = get(files, "default", &mut store);
            if let Some((_, info)) = store.by_files.get(files) {
                store.default_names = info.names.iter().map(|n| n.to_ascii_lowercase()).collect();
            }
        }
        for site in table.sites() {
            let Some(files) = &site.tls else { continue };
            let ck = get(files, &site.services.join("+"), &mut store);
            for host in &site.hosts {
                let entry = match &ck {
                    Some(ck) => Entry::Cert(ck.clone()),
                    None => Entry::Refused,
                };
                match host {
                    HostPattern::Exact(n) => store.exact.insert(n.clone(), entry),
                    HostPattern::Wildcard(s) => store.wildcard.insert(s.clone(), entry),
                };
            }
        }
        store.warn_expiring();
        store
    }

    /// Whether the default certificate names `host` (lower case): a
    /// client without SNI, which got that certificate, may be served
    /// `host`'s site even if the site has a certificate of its own.
    pub fn default_covers(&self, host: &str) -> bool {
        self.default.is_some()
            && self
                .default_names
                .iter()
                .any(|n| match n.strip_prefix("*.") {
                    // A wildcard covers exactly one label.
                    Some(parent) => host
                        .split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                    None => n == host,
                })
    }

    /// Every certificate in use.
    pub fn loaded(&self) -> impl Iterator<Item = &CertInfo> {
        self.by_files.values().map(|(_, info)| info)
    }

    /// The certificate for a ClientHello's server name (already lower case).
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let found = self.exact.get(name).or_else(|| {
            let mut rest = name;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(e) = self.wildcard.get(rest) {
                    return Some(e);
                }
            }
            None
        });
        match found {
            Some(Entry::Cert(ck)) => Some(ck.clone()),
            Some(Entry::Refused) => None,
            None => self.default.clone(),
        }
    }

    /// Logs a warning for each certificate expiring within [`EXPIRY_WARNING`].
    pub fn warn_expiring(&self) {
        for info in self.loaded() {
            warn_if_expiring(info);
        }
    }
}

fn warn_if_expiring(info: &CertInfo) {
    let left = info
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    if left < EXPIRY_WARNING {
        tracing::warn!(
            service = %info.owner,
            file = %info.file,
            not_after = %humantime::format_rfc3339_seconds(info.not_after),
            days_left = left.as_secs() / 86400,
            "certificate expires soon"
        );
    }
}

struct LoadError {
    file: String,
    message: String,
}

fn bytes<'a>(config: &'a Config, path: &str) -> Result<&'a [u8], LoadError> {
    match config.files.get(path) {
        Some(Ok(b)) => Ok(b),
        Some(Err(e)) => Err(LoadError {
            file: path.to_owned(),
            message: format!("cannot read {path}: {e}"),
        }),
        None => Err(LoadError {
            file: path.to_owned(),
            message: format!("{path} was not loaded"),
        }),
    }
}

fn load(
    files: &TlsFiles,
    config: &Config,
    provider: &CryptoProvider,
    owner: &str,
) -> Result<(Arc<CertifiedKey>, CertInfo), LoadError> {
    let err = |file: &str, message: String| LoadError {
        file: file.to_owned(),
        message,
    };
    let cert_pem = bytes(config, &files.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            err(
                &files.cert,
                format!("{}: not a valid PEM certificate chain: {e}", files.cert),
            )
        })?;
    if chain.is_empty() {
        return Err(err(
            &files.cert,
            format!(
                "{}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)",
                files.cert
            ),
        ));
    }
    let key_pem = bytes(config, &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        err(&files.key, format!("{}: no usable private key (expected PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\"): {e}", files.key))
    })?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
        err(
            &files.cert,
            format!(
                "{}: the first certificate cannot be parsed: {e}",
                files.cert
            ),
        )
    })?;
    let validity = leaf.validity();
    let not_before = to_system_time(validity.not_before.timestamp());
    let not_after = to_system_time(validity.not_after.timestamp());
    let now = SystemTime::now();
    if now < not_before {
        return Err(err(
            &files.cert,
            format!(
                "{}: not valid before {}",
                files.cert,
                humantime::format_rfc3339_seconds(not_before)
            ),
        ));
    }
    if now > not_after {
        return Err(err(
            &files.cert,
            format!(
                "{}: expired on {}",
                files.cert,
                humantime::format_rfc3339_seconds(not_after)
            ),
        ));
    }
    let names = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ck = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => err(
            &files.key,
            format!(
                "the key in {} does not match the certificate in {}",
                files.key, files.cert
            ),
        ),
        e => err(
            &files.key,
            format!("{}: unusable private key: {e}", files.key),
        ),
    })?;
    if let Some(ocsp) = &files.ocsp {
        ck.ocsp = Some(bytes(config, ocsp)?.to_vec());
    }
    Ok((
        Arc::new(ck),
        CertInfo {
            owner: owner.to_owned(),
            file: files.cert.clone(),
            names,
            not_after,
        },
    ))
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH
    }
}

/// Resolves certificates from one snapshot's store.
#[derive(Debug)]
struct StoreResolver(Arc<CertStoreHandle>);

/// `CertStore` behind a Debug impl, which rustls requires of resolvers.
pub struct CertStoreHandle(pub CertStore);

impl std::fmt::Debug for CertStoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("certificates", &self.0.by_files.len())
            .finish()
    }
}

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        self.0 .0.resolve(sni.as_deref())
    }
}

/// Session state shared by every snapshot's server config, so resumption
/// survives a reload.
#[derive(Clone)]
pub struct SessionState {
    cache: Arc<dyn StoresServerSessions>,
    ticketer: Option<Arc<dyn ProducesTickets>>,
}

impl SessionState {
    pub fn new() -> SessionState {
        SessionState {
            cache: rustls::server::ServerSessionMemoryCache::new(8192),
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new().ok(),
        }
    }
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState::new()
    }
}

/// The HTTPS listener's config for one snapshot: `profile`'s versions and
/// cipher suites, in the server's order of preference, which decides (a
/// client listing a weaker suite first does not get it); ALPN h2 then
/// http/1.1; certificates from `store`.
pub fn server_config(
    store: Arc<CertStoreHandle>,
    provider: &CryptoProvider,
    sessions: &SessionState,
    profile: TlsProfile,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    // Mozilla's orders: AES-128-GCM, AES-256-GCM, then ChaCha20-Poly1305;
    // for TLS 1.2 only ECDHE key exchange (forward secrecy) and AEAD.
    let tls13 = [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let tls12 = [
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    let (versions, suites): (&[&'static rustls::SupportedProtocolVersion], Vec<_>) = match profile {
        TlsProfile::Intermediate => (
            &[&rustls::version::TLS13, &rustls::version::TLS12],
            tls13.iter().chain(&tls12).copied().collect(),
        ),
        TlsProfile::Modern => (&[&rustls::version::TLS13], tls13.to_vec()),
    };
    let provider = CryptoProvider {
        cipher_suites: suites,
        ..provider.clone()
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(StoreResolver(store)));
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = sessions.cache.clone();
    if let Some(t) = &sessions.ticketer {
        config.ticketer = t.clone();
    }
    Ok(Arc::new(config))
}

/// The client config for TLS to an upstream.
pub fn client_config(
    tls: &UpstreamTls,
    config: &Config,
    alpn: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let mut client = if tls.verify {
        let mut roots = RootCertStore::empty();
        match &tls.ca {
            Some(ca) => {
                let pem = bytes(config, ca).map_err(|e| e.message)?;
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert =
                        cert.map_err(|e| format!("{ca}: not a valid PEM certificate: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("{ca}: unusable CA certificate: {e}"))?;
                }
                if roots.is_empty() {
                    return Err(format!("{ca}: no CA certificate found"));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for cert in native.certs {
                    let _ = roots.add(cert);
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    };
    client.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(client))
}

/// `upstream_tls_verify = "none"`: encrypt, but accept any certificate
/// (Interlock's `ssl_backend_tls_verify=none`). Signatures are still checked,
/// so the handshake is real; only the identity is not.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Every certificate problem in `config` (what `portico check` reports),
/// and the certificates that are fine but expire within [`EXPIRY_WARNING`].
pub fn check_certificates(config: &Config) -> (Vec<CertProblem>, Vec<CertInfo>) {
    let table = RoutingTable::build(config);
    let store = CertStore::build(config, &table, &provider(), None);
    let soon = store
        .loaded()
        .filter(|i| {
            i.not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                < EXPIRY_WARNING
        })
        .cloned()
        .collect();
    (store.problems, soon)
}
