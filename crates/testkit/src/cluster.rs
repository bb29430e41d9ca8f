//! Cluster mode with the real binary: the cluster's secrets made by
//! `portico controller init`, a `portico controller run` with the file
//! provider, and `portico proxy` processes, all on 127.0.0.1:0. The
//! binary's path is the caller's (`env!("CARGO_BIN_EXE_portico")` exists
//! only in the binary's own tests).
//!
//! A test directory holds `ctl/` (the controller's state: CA, join token),
//! and per proxy `ID/` (its state) and `ID.toml` (its own config).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::curl;
use crate::process::{parse_logfmt, Portico};

/// The controller's state directory inside a test directory.
pub const STATE_DIR: &str = "ctl";

/// `portico controller init --state-dir DIR/ctl`; panics if it fails.
pub fn init(bin: &Path, dir: &Path) {
    let init = std::process::Command::new(bin)
        .args(["controller", "init", "--state-dir"])
        .arg(dir.join(STATE_DIR))
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
}

/// A controller's config: `[controller]` on 127.0.0.1:0 with its state in
/// `ctl`, then `rest` (services, `[admin]`, …).
pub fn controller_config(rest: &str) -> String {
    format!(
        "[controller]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{STATE_DIR}\"\n\
         server_names = [\"127.0.0.1\"]\n\n{rest}"
    )
}

/// Starts `portico controller run --config CONFIG` and returns it with
/// the address its proxies dial (from its `starting controller` line).
pub async fn start_controller(bin: &Path, config: &Path) -> (Portico, SocketAddr) {
    let controller = Portico::spawn(bin, &["controller", "run", "--config", &path(config)]);
    let line = controller
        .wait_for_line(
            |l| l.contains("starting controller"),
            Duration::from_secs(20),
        )
        .await;
    let at = parse_logfmt(&line)["listen"].parse().unwrap();
    (controller, at)
}

/// A proxy, what it is asked to be.
pub struct ProxySpec<'a> {
    pub id: &'a str,
    pub controller: SocketAddr,
    pub service_cluster: &'a str,
    /// Appended to its config after `[proxy]`'s `http_listen` (more
    /// `[proxy]` keys, then `[admin]`).
    pub config: &'a str,
}

impl<'a> ProxySpec<'a> {
    /// Proxy `id` of the default service cluster, with HTTP on
    /// 127.0.0.1:0 only.
    pub fn new(id: &'a str, controller: SocketAddr) -> ProxySpec<'a> {
        ProxySpec {
            id,
            controller,
            service_cluster: "default",
            config: "",
        }
    }
}

/// Starts `portico proxy` as `spec` says, with its state in `DIR/ID` and
/// its config in `DIR/ID.toml`, joining with `DIR/ctl/join-token`.
pub fn spawn_proxy(bin: &Path, dir: &Path, spec: &ProxySpec) -> Portico {
    let state = dir.join(spec.id);
    let config = dir.join(format!("{}.toml", spec.id));
    std::fs::write(
        &config,
        format!("[proxy]\nhttp_listen = \"127.0.0.1:0\"\n{}", spec.config),
    )
    .unwrap();
    let token = dir.join(STATE_DIR).join("join-token");
    let args: Vec<String> = vec![
        "proxy".into(),
        "--controller".into(),
        spec.controller.to_string(),
        "--join-token-file".into(),
        path(&token),
        "--state-dir".into(),
        path(&state),
        "--config".into(),
        path(&config),
        "--proxy-id".into(),
        spec.id.into(),
        "--service-cluster".into(),
        spec.service_cluster.into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Portico::spawn(bin, &args)
}

/// The echo replica that answered a request for `host` through `proxy`,
/// or `None` if the proxy did not route it.
pub async fn replica(proxy: SocketAddr, host: &str) -> Option<String> {
    let r = curl(&["-H", &format!("Host: {host}"), &format!("http://{proxy}/")]).await;
    if r.status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    v.get("replica").and_then(|r| r.as_str()).map(str::to_owned)
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_owned()
}
