//! A TCP forwarder that stands in for an external load balancer (an AWS
//! NLB, say): every connection it accepts is spliced to its target. When the
//! target refuses, the client's connection is closed without a byte, as a
//! layer-4 balancer with a dead target does. Binds 127.0.0.1:0 and stops
//! when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Forwarder {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    connections: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Forwarder {
    pub async fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind forwarder");
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (t, c, s) = (target.clone(), connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                c.fetch_add(1, Ordering::SeqCst);
                let to = *t.lock().unwrap();
                let stop = s.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(to).await else {
                        return; // dropping `client` closes it
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Forwarder {
            addr,
            target,
            connections,
            stop,
        }
    }

    /// Sends new connections to `target` from now on.
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
