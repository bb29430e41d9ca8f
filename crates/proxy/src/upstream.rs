//! Connections to one upstream address: a bounded set of HTTP/1.1 keep-alive
//! connections, reused across requests and across config versions.
//!
//! Why our own pool rather than hyper-util's client: the proxy must know
//! whether a request was sent before an error (to retry safely on another
//! replica), must cap connections per backend, and must get the request back
//! when a pooled connection turns out to be closed. Checking out a
//! connection *before* handing over the request gives all three.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::ProxyBody;

/// Limits an [`Upstream`] is built with; a config change to them builds new ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamLimits {
    pub max_connections: usize,
    pub max_idle: usize,
    pub connect_timeout: Duration,
}

/// How long an idle connection is kept before it is closed instead of reused.
/// Shorter than the keep-alive timeout of common backends (nginx: 75 s,
/// Go net/http: none, Node: 5 s is the outlier), so reuse rarely races a close.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

pub struct Upstream {
    pub addr: SocketAddr,
    pub limits: UpstreamLimits,
    /// Counts open connections, busy and idle, against `max_connections`.
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<IdleConn>>,
}

struct IdleConn {
    conn: Conn,
    since: Instant,
}

/// An open connection and the slot it occupies; dropping it closes the
/// connection and frees the slot.
pub struct Conn {
    pub sender: http1::SendRequest<ProxyBody>,
    _slot: OwnedSemaphorePermit,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection refused or failed: {0}")]
    Io(#[from] io::Error),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("all {0} connections to this upstream are busy")]
    Saturated(usize),
    #[error("HTTP handshake failed: {0}")]
    Handshake(hyper::Error),
}

impl Upstream {
    pub fn new(addr: SocketAddr, limits: UpstreamLimits) -> Upstream {
        Upstream {
            addr,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A connection ready for a request: the most recently used idle one
    /// (warm, least likely to have been closed by the peer), else a new one.
    pub async fn checkout(&self) -> Result<Conn, ConnectError> {
        while let Some(mut idle) = self.pop_idle() {
            if idle.since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // A connection returned as soon as its response body ended may
            // take a moment to become ready; a closed one errors here.
            if idle.conn.sender.ready().await.is_ok() {
                return Ok(idle.conn);
            }
        }
        self.connect().await
    }

    fn pop_idle(&self) -> Option<IdleConn> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Returns a connection whose exchange completed, for reuse.
    pub fn checkin(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.limits.max_idle {
            idle.push(IdleConn {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Conn, ConnectError> {
        let timeout = self.limits.connect_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(slot)) => slot,
            // The semaphore is never closed; treat it like saturation if it were.
            Ok(Err(_)) | Err(_) => {
                return Err(ConnectError::Saturated(self.limits.max_connections))
            }
        };
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ConnectError::Io(e)),
            Err(_) => return Err(ConnectError::Timeout(timeout)),
        };
        // Requests are written whole; don't let Nagle hold back their tails.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
            }
        });
        Ok(Conn {
            sender,
            _slot: slot,
        })
    }

    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn limits() -> UpstreamLimits {
        UpstreamLimits {
            max_connections: 1,
            max_idle: 4,
            connect_timeout: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn refused_and_saturated_connects_are_told_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let up = Upstream::new(addr, limits());
        assert!(matches!(up.checkout().await, Err(ConnectError::Io(_))));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream::new(listener.local_addr().unwrap(), limits());
        let held = up.checkout().await.unwrap();
        assert!(matches!(
            up.checkout().await,
            Err(ConnectError::Saturated(1))
        ));
        up.checkin(held);
        assert_eq!(up.idle_len(), 1);
    }
}
