//! Upstream servers for tests: each binds 127.0.0.1:0 and stops when dropped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the echo backend saw, as it reports it in its JSON body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    pub replica: String,
    pub method: String,
    pub path: String,
    pub version: String,
    /// Header name → every value, in order.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_len: usize,
}

impl Echo {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Backend {
    /// Answers every request with an [`Echo`] of it as JSON.
    pub async fn echo(name: &str) -> Backend {
        let replica = name.to_owned();
        Backend::start(name, move |req| echo(replica.clone(), req)).await
    }

    /// The echo backend over TLS with `config` (HTTP/2 if its ALPN offers h2).
    pub async fn echo_tls(name: &str, config: Arc<rustls::ServerConfig>) -> Backend {
        let replica = name.to_owned();
        Backend::start_with(name, Some(config), move |req| echo(replica.clone(), req)).await
    }

    /// Accepts requests and never answers them.
    pub async fn hang(name: &str) -> Backend {
        Backend::start(name, |_req| std::future::pending()).await
    }

    /// Answers every request with `status` and a short body.
    pub async fn status(name: &str, status: u16) -> Backend {
        let body = format!("{name} says {status}\n");
        Backend::start(name, move |_req| {
            let body = body.clone();
            async move {
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                r
            }
        })
        .await
    }

    /// Serves `handler` for every request.
    pub async fn start<F, Fut>(name: &str, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        Backend::start_with(name, None, handler).await
    }

    /// Serves `handler`, over TLS when `tls` is given.
    pub async fn start_with<F, Fut>(
        name: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: F,
    ) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (h, c, s) = (hits.clone(), connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (handler, hits, stop) = (handler.clone(), h.clone(), s.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = stop.cancelled() => {}
                            }
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = stop.cancelled() => {}
                            }
                        }
                    }
                });
            }
        });
        Backend {
            addr,
            name: name.to_owned(),
            hits,
            connections,
            stop,
        }
    }

    /// TCP connections this backend has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests this backend has received.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The echo handler: what the request looked like, as JSON.
async fn echo(replica: String, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let echo = Echo {
        replica,
        method: parts.method.to_string(),
        path: parts.uri.to_string(),
        version: format!("{:?}", parts.version),
        headers,
        body_len: body.len(),
    };
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&echo).expect("echo serialises"),
    )));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    // A hop-by-hop header the proxy must not pass back to clients.
    resp.headers_mut()
        .insert("keep-alive", "timeout=30".parse().unwrap());
    resp.headers_mut()
        .insert("x-backend-replica", echo.replica.parse().unwrap());
    resp
}

/// An address on which nothing listens: connecting to it is refused.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}
