//! A small Docker Engine API client: the handful of calls the provider
//! makes, over the unix socket or TCP (optionally TLS), into serde types
//! holding only the fields routing needs.
//!
//! Why not bollard, the usual choice: its models (stubs 1.53) drop a task's
//! `NetworksAttachments` (the task addresses we route to) and it has no way
//! to make a raw request, so it can't serve the one call that matters most.
//! Paths are unversioned: the engine answers them in its own current API
//! version, so old and new engines both work without negotiation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portico_model::DockerSettings;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// Limit for one API call (events excepted).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest API response read (a listing of thousands of services is a few MiB).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot connect to the Docker engine at {endpoint}: {error}")]
    Connect { endpoint: String, error: String },
    #[error("Docker engine request {path} failed: {error}")]
    Request { path: String, error: String },
    #[error("Docker engine answered {status} to {path}: {message}")]
    Status {
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("unexpected answer from the Docker engine to {path}: {error}")]
    Decode { path: String, error: String },
    #[error("invalid Docker settings: {0}")]
    Settings(String),
}

#[derive(Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp {
        addr: String,
        tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    },
}

/// A handle on one engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    endpoint: Endpoint,
    /// For messages: the endpoint as configured.
    pub name: String,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Engine {
    /// The engine named by `[docker] endpoint`, else `DOCKER_HOST`, else the
    /// local socket. TLS files (`tls_ca`, `tls_cert`, `tls_key`) are read here.
    pub fn from_settings(settings: &DockerSettings) -> Result<Engine, EngineError> {
        let name = settings
            .endpoint
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let endpoint = if let Some(path) = name.strip_prefix("unix://") {
            Endpoint::Unix(PathBuf::from(path))
        } else if let Some(rest) = ["tcp://", "http://", "https://"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
        {
            let addr = rest.trim_end_matches('/').to_owned();
            // As the docker CLI: TLS when asked for by scheme, by any TLS
            // setting, or by DOCKER_TLS_VERIFY; never plaintext with a
            // client certificate configured.
            let wants_tls = name.starts_with("https://")
                || settings.tls_ca.is_some()
                || settings.tls_cert.is_some()
                || std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty() && v != "0");
            let tls = if wants_tls {
                Some(tls_connector(settings, &addr)?)
            } else {
                None
            };
            Endpoint::Tcp { addr, tls }
        } else {
            return Err(EngineError::Settings(format!(
                "{name:?}: expected unix:///path or tcp://host:port"
            )));
        };
        Ok(Engine { endpoint, name })
    }

    async fn connect(&self) -> Result<Box<dyn Io>, EngineError> {
        let fail = |e: std::io::Error| EngineError::Connect {
            endpoint: self.name.clone(),
            error: e.to_string(),
        };
        match &self.endpoint {
            Endpoint::Unix(path) => Ok(Box::new(UnixStream::connect(path).await.map_err(fail)?)),
            Endpoint::Tcp { addr, tls: None } => Ok(Box::new(
                TcpStream::connect(addr.as_str()).await.map_err(fail)?,
            )),
            Endpoint::Tcp {
                addr,
                tls: Some((connector, name)),
            } => {
                let tcp = TcpStream::connect(addr.as_str()).await.map_err(fail)?;
                Ok(Box::new(
                    connector.connect(name.clone(), tcp).await.map_err(fail)?,
                ))
            }
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Incoming, EngineError> {
        let io = self.connect().await?;
        let request_error = |e: &dyn std::fmt::Display| EngineError::Request {
            path: path.to_owned(),
            error: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| request_error(&e))?;
        tokio::spawn(conn);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "docker")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| request_error(&e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| request_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.into_body());
        }
        let bytes = read_limited(resp.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        #[derive(Deserialize)]
        struct Message {
            message: String,
        }
        let message = serde_json::from_slice::<Message>(&bytes)
            .map(|m| m.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(EngineError::Status {
            path: path.to_owned(),
            status,
            message,
        })
    }

    /// GET `path` and decode its JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, EngineError> {
        let fetch = async {
            let body = self.call(Method::GET, path, None).await?;
            read_limited(body, MAX_RESPONSE)
                .await
                .map_err(|e| EngineError::Request {
                    path: path.to_owned(),
                    error: e,
                })
        };
        let bytes = tokio::time::timeout(CALL_TIMEOUT, fetch)
            .await
            .map_err(|_| EngineError::Request {
                path: path.to_owned(),
                error: format!("no answer within {CALL_TIMEOUT:?}"),
            })??;
        serde_json::from_slice(&bytes).map_err(|e| EngineError::Decode {
            path: path.to_owned(),
            error: e.to_string(),
        })
    }

    /// POST a JSON body to `path`, expecting no content back.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> Result<(), EngineError> {
        let _answer = tokio::time::timeout(CALL_TIMEOUT, self.call(Method::POST, path, Some(body)))
            .await
            .map_err(|_| EngineError::Request {
                path: path.to_owned(),
                error: format!("no answer within {CALL_TIMEOUT:?}"),
            })??;
        Ok(())
    }

    /// Opens the event stream (`/events`) for the given object types.
    pub async fn events(&self, types: &[&str]) -> Result<Events, EngineError> {
        let filters = serde_json::json!({ "type": types }).to_string();
        let path = format!("/events?filters={}", percent_encode(&filters));
        let body = tokio::time::timeout(CALL_TIMEOUT, self.call(Method::GET, &path, None))
            .await
            .map_err(|_| EngineError::Request {
                path: path.clone(),
                error: format!("no answer within {CALL_TIMEOUT:?}"),
            })??;
        Ok(Events {
            body,
            buf: BytesMut::new(),
        })
    }
}

/// The engine's event stream: one JSON object per line.
pub struct Events {
    body: Incoming,
    buf: BytesMut,
}

impl Events {
    /// The next event; `None` when the stream ended (the caller reconnects).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                if let Ok(event) = serde_json::from_slice::<Event>(&line) {
                    return Some(event);
                }
                continue;
            }
            if self.buf.len() > 1024 * 1024 {
                // No line break in a megabyte: not an event stream.
                return None;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                _ => return None,
            }
        }
    }
}

async fn read_limited(mut body: Incoming, limit: usize) -> Result<Bytes, String> {
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(format!("answer larger than {limit} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encodes a `filters` query value.
pub fn filters(pairs: &[(&str, &str)]) -> String {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in pairs {
        map.entry(k).or_default().push(v);
    }
    percent_encode(&serde_json::to_string(&map).unwrap_or_default())
}

fn tls_connector(
    settings: &DockerSettings,
    addr: &str,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), EngineError> {
    let bad = |e: String| EngineError::Settings(e);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &settings.tls_ca {
        Some(ca) => {
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| bad(format!("docker.tls_ca {ca}: {e}")))?
            {
                roots
                    .add(cert.map_err(|e| bad(format!("docker.tls_ca {ca}: {e}")))?)
                    .map_err(|e| bad(format!("docker.tls_ca {ca}: {e}")))?;
            }
        }
        None => {
            for cert in rustls_native_certs_fallback() {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(format!("docker.tls_cert {cert}: {e}")))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| bad(format!("docker.tls_key {key}: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad(format!("docker.tls_cert: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = ServerName::try_from(host.clone()).map_err(|e| bad(format!("{host}: {e}")))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// Without `tls_ca`, trust nothing extra: an engine behind TLS is expected
/// to come with its CA (as `DOCKER_CERT_PATH/ca.pem` does for the CLI).
fn rustls_native_certs_fallback() -> Vec<CertificateDer<'static>> {
    std::env::var("DOCKER_CERT_PATH")
        .ok()
        .map(|dir| PathBuf::from(dir).join("ca.pem"))
        .and_then(|p| CertificateDer::pem_file_iter(p).ok())
        .map(|i| i.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

// ---- The Engine API objects, reduced to what routing needs. ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Info {
    pub swarm: SwarmInfo,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SwarmInfo {
    /// `active` in swarm mode.
    pub local_node_state: String,
    /// Whether this node is a manager (only managers can list services).
    pub control_available: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceObj {
    #[serde(rename = "ID")]
    pub id: String,
    pub spec: ServiceSpec,
    pub endpoint: ServiceEndpoint,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub task_template: TaskTemplate,
    /// Where old engines (API < 1.25) put the networks.
    pub networks: Vec<NetworkTarget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskTemplate {
    pub networks: Vec<NetworkTarget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkTarget {
    /// A network ID (or name).
    pub target: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceEndpoint {
    #[serde(rename = "VirtualIPs")]
    pub virtual_ips: Vec<VirtualIp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VirtualIp {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// CIDR form, e.g. `10.0.1.6/24`.
    pub addr: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskObj {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub desired_state: String,
    pub status: TaskStatus,
    pub networks_attachments: Vec<NetworkAttachment>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskStatus {
    pub state: String,
    /// RFC 3339, when the task reached `state`.
    pub timestamp: String,
    /// The task's container, once it has one.
    pub container_status: TaskContainer,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TaskContainer {
    /// The full container ID, as container events name it: how a `die`
    /// event is matched to its task while the task list still says running.
    #[serde(rename = "ContainerID")]
    pub container_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkAttachment {
    pub network: AttachedNetwork,
    /// CIDR form.
    pub addresses: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AttachedNetwork {
    #[serde(rename = "ID")]
    pub id: String,
    pub spec: NamedSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NamedSpec {
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkObj {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub attachable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerObj {
    pub id: String,
    pub names: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub state: String,
    /// e.g. `Up 3 seconds (healthy)`.
    pub status: String,
    pub network_settings: ContainerNetworks,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerNetworks {
    pub networks: BTreeMap<String, ContainerEndpoint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ContainerEndpoint {
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// `GET /containers/{id}/json`, for Portico's own container.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerInspect {
    pub id: String,
    pub network_settings: ContainerNetworks,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConfigObj {
    #[serde(rename = "ID")]
    pub id: String,
    pub spec: ConfigSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConfigSpec {
    pub name: String,
    /// Base64.
    pub data: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Event {
    #[serde(rename = "Type")]
    pub kind: String,
    pub action: String,
    pub actor: EventActor,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EventActor {
    #[serde(rename = "ID")]
    pub id: String,
    pub attributes: BTreeMap<String, String>,
}
