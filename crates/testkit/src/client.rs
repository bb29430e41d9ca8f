//! Clients for tests: the real `curl` (what operators use, as in the seed's
//! transcripts) and a keep-alive hyper client for request loops.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// What curl printed: the last response's status, headers and body.
#[derive(Debug)]
pub struct CurlResponse {
    /// curl's exit code (0 on success; 7 connection refused, 28 timeout...).
    pub exit: i32,
    pub status: u16,
    /// The status line, e.g. `HTTP/1.1 200 OK` or `HTTP/2 200`.
    pub status_line: String,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub stderr: String,
}

impl CurlResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs `curl -sS -i --max-time 10 ARGS...` and parses its output.
pub async fn curl(args: &[&str]) -> CurlResponse {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl must be installed (apt-get install curl)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let exit = out.status.code().unwrap_or(-1);
    // Skip interim responses (100 Continue) and earlier redirects: the last
    // head before the body is the one that counts.
    let mut rest = stdout.as_str();
    let mut head = "";
    while rest.starts_with("HTTP/") {
        let (h, b) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        head = h;
        rest = b;
    }
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default().trim().to_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    CurlResponse {
        exit,
        status,
        status_line,
        headers,
        body: rest.to_owned(),
        stderr,
    }
}

/// A keep-alive HTTP/1.1 client aimed at one proxy address.
#[derive(Clone)]
pub struct HttpClient {
    proxy: SocketAddr,
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    pub fn new(proxy: SocketAddr) -> HttpClient {
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build_http();
        HttpClient { proxy, inner }
    }

    /// GET `path` with `Host: host`; the body is read whole.
    pub async fn get(
        &self,
        host: &str,
        path: &str,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        self.request("GET", host, path, Bytes::new()).await
    }

    pub async fn request(
        &self,
        method: &str,
        host: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.proxy, path))
            .header("host", host)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.inner.request(req))
            .await
            .map_err(|_| "request timed out".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }
}
