//! Worker threads: each serves its own listeners on a single-threaded
//! runtime, so a connection's tasks, its upstream connections and their
//! timers all stay on one thread: no work stealing, no cross-thread
//! wake-ups on the request path. The kernel spreads new connections over
//! the workers' listeners (`SO_REUSEPORT`, as nginx's `reuse_port`).
//!
//! Upstream keep-alive connections are kept per worker too (see
//! [`crate::upstream`]): a connection is registered with the reactor of the
//! worker that opened it, and is only reused by that worker.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;

use crate::Proxy;

/// Connections a listener lets wait to be accepted (tokio's default).
const BACKLOG: u32 = 1024;

static COUNT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Sets how many workers the process runs, before the first [`Proxy`] is
/// built: its upstream pools keep a set of idle connections per worker.
pub fn set_count(workers: usize) {
    COUNT.store(workers.max(1), Ordering::Relaxed);
}

/// How many workers the process runs (1 unless [`set_count`] said more).
pub(crate) fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// The worker this thread is (0 on threads that are not workers).
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Binds `addr` once per worker. With several workers every socket has
/// `SO_REUSEPORT`, and all take the port the first one got (so `:0` works).
/// Called within a runtime (tokio registers the sockets, then lets go of
/// them for the workers' runtimes to take).
pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    if workers > 1 && addr.port() != 0 {
        // `SO_REUSEPORT` would let these sockets join another process's
        // listener on the port (a second proxy started by mistake), and the
        // two would split the traffic. A plain bind first fails on a port
        // in use, as it does with one worker.
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut listeners = Vec::with_capacity(workers);
    let mut at = addr;
    for _ in 0..workers.max(1) {
        let socket = if at.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if workers > 1 {
            socket.set_reuseport(true)?;
        }
        socket.bind(at)?;
        let listener = socket.listen(BACKLOG)?;
        at = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// Starts one thread per worker (named `portico-wN`, as `top -H` shows it), each serving its plain listener and its
/// HTTPS one (if any) until `shutdown` is cancelled, then draining them.
/// `plain[i]` and `https[i]` are worker `i`'s (see [`bind`]). The future
/// returned is done when every worker is; its error is the first a
/// worker's listeners ended with.
pub fn spawn(
    proxy: Arc<Proxy>,
    plain: Vec<std::net::TcpListener>,
    https: Vec<std::net::TcpListener>,
    shutdown: CancellationToken,
) -> io::Result<impl std::future::Future<Output = io::Result<()>>> {
    // Once, on the caller's runtime, rather than on whichever worker starts first.
    proxy.start_upkeep();
    let mut https = https.into_iter();
    let mut done = Vec::with_capacity(plain.len());
    for (index, plain) in plain.into_iter().enumerate() {
        let https = https.next();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name(format!("portico-w{index}"))
            .spawn(move || {
                INDEX.with(|i| i.set(index));
                let _ = tx.send(serve(proxy, plain, https, shutdown));
            })?;
        done.push(rx);
    }
    Ok(async move {
        let mut result = Ok(());
        for rx in done {
            let ended = rx
                .await
                .unwrap_or_else(|_| Err(io::Error::other("a worker thread panicked")));
            if result.is_ok() {
                result = ended;
            }
        }
        result
    })
}

/// One worker: its runtime, serving its listeners to the end of the drain.
fn serve(
    proxy: Arc<Proxy>,
    plain: std::net::TcpListener,
    https: Option<std::net::TcpListener>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let plain = tokio::net::TcpListener::from_std(plain)?;
        let https = https.map(tokio::net::TcpListener::from_std).transpose()?;
        let secure = async {
            match https {
                Some(l) => crate::serve_https(proxy.clone(), l, shutdown.clone()).await,
                None => Ok(()),
            }
        };
        let (plain, secure) =
            tokio::join!(crate::serve(proxy.clone(), plain, shutdown.clone()), secure);
        plain.and(secure)
    })
}
