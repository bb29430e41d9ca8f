//! An in-process proxy for tests: built from TOML text exactly as
//! `portico run` loads a file (referenced files included), served on
//! 127.0.0.1:0 in the test's runtime.

use std::net::SocketAddr;
use std::sync::Arc;

use portico_model::{Config, Version};
use portico_proxy::{Identity, Proxy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TEST_SERVER_INFO: &str = "portico/test (0000000) linux/amd64";

pub struct TestProxy {
    /// The plain HTTP listener.
    pub addr: SocketAddr,
    /// The HTTPS listener, when the config has `https_listen`.
    pub https_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
    dir: tempfile::TempDir,
}

/// Loads `toml` the way the file provider does (so relative paths and
/// certificate files behave as in production) from a file in `dir`.
fn load(dir: &tempfile::TempDir, toml: &str) -> Config {
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, toml).unwrap();
    portico_discovery::file::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

impl TestProxy {
    /// Starts a proxy for `toml`. Listen addresses in it are ignored: the
    /// test proxy binds 127.0.0.1:0 for HTTP, and for HTTPS when
    /// `https_listen` is set.
    pub async fn start(toml: &str) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let config = Arc::new(load(&dir, toml));
        let version = Version::of(&config);
        // As the binary does: "auto" max_client_connections is read from it.
        let _ = portico_proxy::raise_descriptor_limit();
        let proxy = Proxy::new(
            Identity {
                server_info: TEST_SERVER_INFO.into(),
                default_proxy_id: "test-proxy".into(),
            },
            config.clone(),
            version,
        );
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = vec![tokio::spawn(portico_proxy::serve(
            proxy.clone(),
            listener,
            shutdown.clone(),
        ))];
        let mut https_addr = None;
        if config.proxy.https_listen.is_some() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            https_addr = Some(listener.local_addr().unwrap());
            tasks.push(tokio::spawn(portico_proxy::serve_https(
                proxy.clone(),
                listener,
                shutdown.clone(),
            )));
        }
        TestProxy {
            addr,
            https_addr,
            proxy,
            shutdown,
            tasks,
            dir,
        }
    }

    /// Replaces the config, as a reload does.
    pub fn apply(&self, toml: &str) {
        let config = Arc::new(load(&self.dir, toml));
        let version = Version::of(&config);
        self.proxy.apply(config, version);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The HTTPS port (panics if the config has no `https_listen`).
    pub fn https_port(&self) -> u16 {
        self.https_addr.expect("https_listen is configured").port()
    }

    /// Stops accepting and waits for the drain to finish.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            task.await.expect("serve task").expect("serve");
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
