//! Stream adapters shared by the listeners and both request paths: a stream
//! that replays bytes already read, one whose first read has a deadline,
//! one whose writes must make progress, one that closes lingering, the
//! two-way relay for tunnels and upgraded connections, and the client
//! stream of the HTTP/1.1 fast path (cleartext or TLS).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A lock that a panic elsewhere doesn't poison for good.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// At most once a period: for warnings a condition repeats every moment
/// while it lasts, which must not flood the log.
pub(crate) struct Every {
    period: Duration,
    last: Mutex<Option<Instant>>,
}

impl Every {
    pub(crate) const fn new(period: Duration) -> Every {
        Every {
            period,
            last: Mutex::new(None),
        }
    }

    /// Whether the period has passed since it was last due (and it is now).
    pub(crate) fn due(&self) -> bool {
        let now = Instant::now();
        let mut last = lock(&self.last);
        if last.is_some_and(|at| now.duration_since(at) < self.period) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Copies both ways until either side closes, or nothing moves for `idle`.
/// Returns how it ended and the bytes copied each way.
pub(crate) async fn relay<A, B>(a: A, b: B, idle: Duration) -> (io::Result<()>, (u64, u64))
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (mut up, mut down) = (0u64, 0u64);
    let (mut a_open, mut b_open) = (true, true);
    let mut abuf = vec![0u8; 16 * 1024];
    let mut bbuf = vec![0u8; 16 * 1024];
    while a_open || b_open {
        let step = async {
            tokio::select! {
                r = ar.read(&mut abuf), if a_open => (true, r),
                r = br.read(&mut bbuf), if b_open => (false, r),
            }
        };
        let (from_a, read) = match tokio::time::timeout(idle, step).await {
            Ok(r) => r,
            Err(_) => {
                return (
                    Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
                    (up, down),
                )
            }
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => return (Err(e), (up, down)),
        };
        let written = if from_a {
            if n == 0 {
                a_open = false;
                bw.shutdown().await
            } else {
                up += n as u64;
                bw.write_all(&abuf[..n]).await
            }
        } else if n == 0 {
            b_open = false;
            aw.shutdown().await
        } else {
            down += n as u64;
            aw.write_all(&bbuf[..n]).await
        };
        if let Err(e) = written {
            return (Err(e), (up, down));
        }
    }
    (Ok(()), (up, down))
}

/// Writes of a stream wrapper that only changes reading go straight to
/// its `inner` stream.
macro_rules! write_through_inner {
    (impl[$($generics:tt)*] for $t:ty) => {
        impl<$($generics)*> AsyncWrite for $t {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}

/// A stream whose first read must bring data before a deadline: hyper
/// arms its header timeout only once a request has begun, so a client that
/// completes a TLS handshake and then says nothing would otherwise hold the
/// connection forever.
pub(crate) struct FirstReadDeadline<I> {
    pub(crate) inner: I,
    pub(crate) deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstReadDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.deadline = None,
            Poll::Pending => {
                if let Some(deadline) = &mut self.deadline {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                    }
                }
            }
            _ => {}
        }
        polled
    }
}

write_through_inner!(impl[I: AsyncWrite + Unpin] for FirstReadDeadline<I>);

/// A wait that must see progress within `limit` (a body's next bytes, a
/// client taking its response). The timer is armed only once an operation
/// finds nothing to do, and set again only after progress since, so a busy
/// stream costs no timer work.
pub(crate) struct Stall {
    pub(crate) limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    moved: bool,
}

impl Stall {
    pub(crate) fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            timer: None,
            moved: false,
        }
    }

    /// Something moved.
    pub(crate) fn moved(&mut self) {
        self.moved = true;
    }

    /// After an operation that found nothing to do: ready once nothing has
    /// moved for the whole limit.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let moved = std::mem::take(&mut self.moved);
        let timer = match &mut self.timer {
            Some(timer) => {
                if moved {
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.limit);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep(self.limit))),
        };
        timer.as_mut().poll(cx)
    }
}

/// How long a response may wait for each side.
#[derive(Clone, Copy)]
pub(crate) struct Waits {
    /// For the upstream's next bytes: its `upstream_timeout` (as in
    /// [`crate::body`]).
    pub(crate) upstream: Duration,
    /// For the client to take the next piece: `client_send_timeout`.
    pub(crate) client: Duration,
}

/// The error of a client that took none of its response for `limit`.
pub(crate) fn send_timed_out(limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the client took none of its response for {limit:?} (client_send_timeout)"),
    )
}

/// Set once a connection's [`SendDeadline`] has passed, so that the
/// responses it ended log why.
#[derive(Default)]
pub(crate) struct SendTimedOut(std::sync::OnceLock<Duration>);

impl SendTimedOut {
    /// The error the client's connection ended with, if it timed out.
    pub(crate) fn error(&self) -> Option<io::Error> {
        self.0.get().map(|limit| send_timed_out(*limit))
    }
}

/// A client stream whose writes must make progress within a limit
/// (`client_send_timeout`, nginx's `send_timeout`): a client that stops
/// reading cannot hold its connection, its upstream's and their buffers
/// for ever. Reads pass through.
pub(crate) struct SendDeadline<I> {
    inner: I,
    stall: Stall,
    timed_out: Arc<SendTimedOut>,
}

impl<I> SendDeadline<I> {
    pub(crate) fn new(inner: I, limit: Duration, timed_out: Arc<SendTimedOut>) -> SendDeadline<I> {
        SendDeadline {
            inner,
            stall: Stall::new(limit),
            timed_out,
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stall.moved();
            return polled;
        }
        match self.stall.poll_expired(cx) {
            Poll::Ready(()) => {
                let _ = self.timed_out.0.set(self.stall.limit);
                Poll::Ready(Err(send_timed_out(self.stall.limit)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A stream that first yields bytes already read from it.
pub(crate) struct Prefixed<I = TcpStream> {
    prefix: Vec<u8>,
    pos: usize,
    inner: I,
}

impl<I> Prefixed<I> {
    pub(crate) fn new(prefix: Vec<u8>, inner: I) -> Prefixed<I> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The stream read after the prefix.
    pub(crate) fn inner(&self) -> &I {
        &self.inner
    }

    /// Prefix bytes are still to be read.
    fn replaying(&self) -> bool {
        self.pos < self.prefix.len()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

write_through_inner!(impl[I: AsyncWrite + Unpin] for Prefixed<I>);

/// Longest a closing connection keeps reading what its client still sends.
const LINGER_TIME: Duration = Duration::from_secs(10);
/// Most it reads while lingering.
const LINGER_BYTES: usize = 64 << 20;
/// How long a closing connection waits for a first byte before it takes
/// the client to have nothing on the way.
const LINGER_QUIET: Duration = Duration::from_millis(50);
/// Once bytes came, how long a pause in them ends the lingering (a client
/// trickling bytes is not waited for).
const LINGER_PAUSE: Duration = Duration::from_secs(1);

/// A client connection that closes lingering, as nginx's `lingering_close`:
/// when the server closes while the client is still sending (a head over
/// `max_header_bytes` answered 431, a request refused before its body), the
/// answer is sent and the write side shut, and then what the client still
/// sends is read and dropped until it closes (within [`LINGER_TIME`] and
/// [`LINGER_BYTES`]): closing with unread bytes would send a reset, which
/// may destroy the answer before the client reads it. A client that sends
/// nothing within [`LINGER_QUIET`] is taken to have nothing on the way, and
/// one that pauses for [`LINGER_PAUSE`] to have finished.
pub(crate) struct Lingering<I> {
    inner: I,
    linger: Linger,
}

enum Linger {
    Open,
    Draining {
        until: Pin<Box<tokio::time::Sleep>>,
        quiet: Pin<Box<tokio::time::Sleep>>,
        left: usize,
    },
    Done,
}

impl<I> Lingering<I> {
    pub(crate) fn new(inner: I) -> Lingering<I> {
        Lingering {
            inner,
            linger: Linger::Open,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Lingering<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.linger {
                Linger::Open => {
                    let shut = std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
                    if shut.is_err() {
                        this.linger = Linger::Done;
                        return Poll::Ready(shut);
                    }
                    this.linger = Linger::Draining {
                        until: Box::pin(tokio::time::sleep(LINGER_TIME)),
                        quiet: Box::pin(tokio::time::sleep(LINGER_QUIET)),
                        left: LINGER_BYTES,
                    };
                }
                Linger::Draining { until, quiet, left } => {
                    if until.as_mut().poll(cx).is_ready() {
                        this.linger = Linger::Done;
                        continue;
                    }
                    let mut scratch = [0u8; 8192];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            quiet
                                .as_mut()
                                .reset(tokio::time::Instant::now() + LINGER_PAUSE);
                            *left = left.saturating_sub(buf.filled().len());
                            if *left == 0 {
                                this.linger = Linger::Done;
                            }
                        }
                        // The client closed, or broke off.
                        Poll::Ready(_) => this.linger = Linger::Done,
                        // Nothing (more) on the way: no reason to wait longer.
                        Poll::Pending if quiet.as_mut().poll(cx).is_ready() => {
                            this.linger = Linger::Done;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Linger::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// A client connection as the HTTP/1.1 fast path serves it: cleartext, or
/// TLS terminated here. Both are read and written as bytes; what differs is
/// how an idle connection learns there is something to read: rustls may
/// already hold decrypted bytes (or the peer's close_notify) that the
/// socket will never signal again.
pub(crate) enum Client {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// A TLS connection as the listener accepted it: the ClientHello it read
/// first replayed to rustls.
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<Prefixed<TcpStream>>;

/// Delegates a poll to the stream inside either variant.
macro_rules! either {
    ($self:expr, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Client::Plain($s) => $e,
            Client::Tls($s) => $e,
        }
    };
}

impl Client {
    fn tcp(&self) -> &TcpStream {
        match self {
            Client::Plain(s) => s,
            Client::Tls(s) => s.get_ref().0.inner(),
        }
    }

    /// Decrypted bytes, or the peer's close, wait in rustls (see
    /// `wants_read`: false after the handshake only for those two), or
    /// bytes read with the ClientHello are still to be replayed.
    fn buffered(&self) -> bool {
        match self {
            Client::Plain(_) => false,
            Client::Tls(s) => !s.get_ref().1.wants_read() || s.get_ref().0.replaying(),
        }
    }

    /// Ready when a read would find something (or the end); registers `cx`
    /// with the socket otherwise.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buffered() {
            return Poll::Ready(Ok(()));
        }
        self.tcp().poll_read_ready(cx)
    }

    /// Whether a read would find something, asking nothing of the OS.
    pub(crate) fn readable_now(&self) -> bool {
        self.buffered() || crate::upstream::readable_now(self.tcp())
    }

    /// Reads what is there into `buf`'s spare capacity without waiting:
    /// `WouldBlock` when nothing is.
    pub(crate) fn try_read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        use futures_util::FutureExt;
        match self {
            Client::Plain(s) => {
                let room = buf.capacity() - buf.len();
                let read = s.try_read_buf(buf);
                if matches!(read, Ok(n) if n > 0 && n < room) {
                    // A read that did not fill the room took all the socket
                    // had: the next wait is for new data (nginx clears its
                    // `ready` flag the same way). Without this, tokio still
                    // takes the socket for readable and the next read is a
                    // recv that fails with EAGAIN, one per request. Data
                    // arriving after the read raises a new epoll edge.
                    let _ = s.try_io(tokio::io::Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                read
            }
            // Polled once; a pending read leaves a no-op waker with the
            // socket, which the next `poll_read_ready` replaces.
            Client::Tls(s) => s
                .read_buf(buf)
                .now_or_never()
                .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into())),
        }
    }

    /// Closes a connection with no request in progress: over TLS with a
    /// close_notify first (RFC 9112 §9.8: otherwise the client cannot tell
    /// the close from a truncation), within a second, so that a client that
    /// reads nothing cannot hold it open.
    pub(crate) async fn close_idle(mut self) {
        if let Client::Tls(_) = &self {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.shutdown()).await;
        }
    }

    /// [`close_idle`](Self::close_idle) on a task of its own when there is
    /// something to send; a cleartext connection is just dropped. `held`
    /// (the connection's gauge, with its place under
    /// `max_client_connections`) is dropped with the stream.
    pub(crate) fn close_idle_later<H: Send + 'static>(self, held: H) {
        if let Client::Tls(_) = &self {
            tokio::spawn(async move {
                self.close_idle().await;
                drop(held);
            });
        } else {
            // Closed before its place is given back.
            drop(self);
            drop(held);
        }
    }

    /// Whether writes may wait in a buffer of ours (rustls's) rather than
    /// the socket's: such a stream is flushed at the end of each response.
    pub(crate) fn buffers_writes(&self) -> bool {
        matches!(self, Client::Tls(_))
    }
}

impl AsyncRead for Client {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Client {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}
