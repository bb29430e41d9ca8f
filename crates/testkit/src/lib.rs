//! Test kit for Portico's end-to-end tests (dev only). Everything binds
//! 127.0.0.1:0 and runs in the test's own runtime or as a child process, so
//! tests never share ports or state.
//!
//! # Layout
//! - [`backend`]: upstream servers with scripted behaviour (echo, hang, status).
//! - [`harness`]: an in-process Portico proxy built from TOML text.
//! - [`client`]: real `curl` as the client, and a small hyper client for loops.
//! - [`tls`]: a test certificate authority and TLS configs for backends.
//! - [`tls_front`]: a TLS-terminating front standing in for an HTTPS proxy hop.
//! - [`docker`]: images `FROM scratch` of our binary, cleanup guards for the real engine.
//! - [`dns`]: a tiny DNS server answering from a fixed table.
//! - [`raw`]: HTTP/1.x at the byte level: a strict wire reader and scripted raw upstreams.
//! - [`forwarder`]: a TCP forwarder standing in for an external load balancer.
//! - [`cluster`]: cluster mode with the real binary: secrets, a controller, proxies.
//! - [`wait_until`]: bounded waiting on a condition instead of sleeping.

pub mod backend;
pub mod client;
pub mod cluster;
pub mod dns;
pub mod docker;
pub mod forwarder;
pub mod harness;
pub mod process;
pub mod raw;
pub mod tls;
pub mod tls_front;

use std::future::Future;
use std::time::{Duration, Instant};

pub use backend::{dead_addr, Backend, Echo};
pub use client::{curl, CurlResponse, HttpClient};
pub use harness::TestProxy;
pub use process::Portico;
pub use tls::{Issued, TestCa};

/// A `[[service]]` table: `name` routing `hosts` to `upstreams`, with
/// `extra` lines (other keys) appended.
pub fn service_toml(
    name: &str,
    hosts: &[&str],
    upstreams: &[std::net::SocketAddr],
    extra: &str,
) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    let ups: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    let mut out = format!(
        "[[service]]\nname = \"{name}\"\nhosts = [{}]\nupstreams = [{}]\n",
        hosts.join(", "),
        ups.join(", ")
    );
    if !extra.is_empty() {
        out.push_str(extra);
        out.push('\n');
    }
    out
}

/// Whether `v` looks like a request id: 32 hex digits.
pub fn is_hex32(v: &str) -> bool {
    v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `v` is seconds with millisecond precision, as nginx prints
/// `$upstream_response_time` ("0.004").
pub fn is_seconds(v: &str) -> bool {
    let Some((s, ms)) = v.split_once('.') else {
        return false;
    };
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && ms.len() == 3
        && ms.bytes().all(|b| b.is_ascii_digit())
}

/// Polls `check` until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `promtool check metrics` accepts `body` (Prometheus' own linter);
/// skipped when promtool is not installed, unless PORTICO_REQUIRE_PROMTOOL
/// is set.
pub async fn promtool_accepts(body: &str) {
    let have = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok();
    if !have {
        assert!(
            std::env::var_os("PORTICO_REQUIRE_PROMTOOL").is_none(),
            "promtool is required (apt-get install prometheus)"
        );
        eprintln!("promtool not installed: `promtool check metrics` skipped");
        return;
    }
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(body.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
