//! An in-process proxy for tests: built from TOML text, served on
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
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestProxy {
    /// Starts a proxy for `toml` (any `http_listen` in it is ignored: the
    /// test proxy always binds 127.0.0.1:0).
    pub async fn start(toml: &str) -> TestProxy {
        let config = Arc::new(Config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("{e}")));
        let version = Version::of(&config);
        let proxy = Proxy::new(
            Identity {
                server_info: TEST_SERVER_INFO.into(),
                default_proxy_id: "test-proxy".into(),
            },
            config,
            version,
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(portico_proxy::serve(
            proxy.clone(),
            listener,
            shutdown.clone(),
        ));
        TestProxy {
            addr,
            proxy,
            shutdown,
            task: Some(task),
        }
    }

    /// Replaces the config, as a reload does.
    pub fn apply(&self, toml: &str) {
        let config = Arc::new(Config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("{e}")));
        let version = Version::of(&config);
        self.proxy.apply(config, version);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops accepting and waits for the drain to finish.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("serve task").expect("serve");
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
