//! A TLS-terminating front: it accepts HTTPS with the server config of the
//! test's choosing (see [`crate::tls::Issued::server_config`]) and forwards
//! the decrypted bytes to a plain-HTTP target (an in-process or child
//! Portico), standing in for any HTTPS proxy hop. Binds 127.0.0.1:0 and
//! stops when dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub struct TlsFront {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl TlsFront {
    /// Serves `config`'s certificate to every client (whatever the SNI) and
    /// forwards each connection to `target`.
    pub async fn start(config: Arc<rustls::ServerConfig>, target: SocketAddr) -> TlsFront {
        let acceptor = TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tls front");
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (acceptor, stop) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        TlsFront { addr, stop }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
