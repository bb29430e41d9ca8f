//! Request bodies on their way upstream: streamed frame by frame, never
//! collected, with the client's stall, its minimum average rate,
//! `max_body_size`, and the cap on bodies per client address enforced as
//! they pass. [`Upload`] is a hyper body for hyper's client; `RawUpload`
//! moves a body of known length between two sockets for the fast path,
//! under the same limits ([`Pace`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::error::ProxyError;
use crate::framing::head_end;
use crate::io::Client;
use crate::metrics::ServiceStats;
use crate::splice;

/// A request body on its way upstream.
pub enum ProxyBody {
    /// A body being uploaded (see [`Upload`]).
    Upload(Box<Upload>),
    /// For requests known to have no body, including retries of them.
    Empty,
}

/// Errors a request body can end with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The client stopped sending its request body.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body data for {0:?}")]
pub struct ClientStalled(pub Duration);

/// The client sends its request body slower than `client_body_min_rate`
/// on average, past `client_body_grace`.
#[derive(Debug, thiserror::Error)]
#[error("the client sent {received} bytes of request body in {elapsed:?}, under client_body_min_rate ({rate} bytes a second)")]
pub struct ClientTooSlow {
    pub received: u64,
    pub elapsed: Duration,
    pub rate: u64,
}

/// The client's request body broke off or is malformed (bad chunked
/// framing, a connection closed mid-body): the client's failure, never
/// the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("the request body from the client is malformed or cut short: {0}")]
pub struct ClientBodyBroken(pub String);

/// The request body grew past `max_body_size` (the limit, in bytes).
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than {0} bytes (max_body_size)")]
pub struct BodyTooLarge(pub u64);

/// A request body streamed from the client: it says when it has all been
/// sent (so the upstream's response timer starts then, not while a slow
/// client uploads), and gives up when the client stalls for `stall`.
pub struct Upload {
    inner: Incoming,
    done: Option<oneshot::Sender<()>>,
    /// Fires at the next moment the body could be too slow or stalled.
    timer: Pin<Box<Sleep>>,
    /// `max_body_size`, checked as the body streams (a chunked body
    /// declares no length up front).
    limit: Option<u64>,
    pace: Pace,
    /// Its place under `max_bodies_per_client`, until the body has ended.
    slot: Option<BodySlot>,
    /// The service's counters, which get what was received when the body
    /// is done.
    stats: Arc<ServiceStats>,
    handed: Arc<Handed>,
}

/// Whether hyper's client is still writing the last frame of a body it
/// took: it asks for the next one once its write buffer has room, so a
/// frame held for `upstream_timeout` is an HTTP/1.1 upstream that stopped
/// reading, or one reading less than that buffer (about 400 KB) in that
/// time; a client that sends nothing leaves no frame held, and is the
/// client's stall. Not for HTTP/2 upstreams, whose flow control may hold a
/// frame for other streams' sake.
pub struct Handed {
    base: Instant,
    /// When the frame held was taken, as nanoseconds after `base` plus
    /// one; 0: none held. An atomic, not a lock: it is set on every frame.
    taken: AtomicU64,
}

impl Default for Handed {
    fn default() -> Handed {
        Handed {
            base: Instant::now(),
            taken: AtomicU64::new(0),
        }
    }
}

impl Handed {
    fn set(&self, taken: Option<Instant>) {
        let nanos = taken.map_or(0, |t| {
            let since = t.saturating_duration_since(self.base).as_nanos();
            u64::try_from(since).unwrap_or(u64::MAX - 1) + 1
        });
        self.taken.store(nanos, Ordering::Relaxed);
    }

    fn held(&self) -> Option<Instant> {
        match self.taken.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.base + Duration::from_nanos(nanos - 1)),
        }
    }

    /// Once the upstream has held a frame unwritten for `limit`.
    pub(crate) async fn stuck(&self, limit: Duration) {
        loop {
            match self.held() {
                Some(taken) if taken.elapsed() >= limit => return,
                Some(taken) => tokio::time::sleep_until(taken + limit).await,
                None => tokio::time::sleep(limit).await,
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.stats.add_request_bytes(self.pace.received);
    }
}

/// How fast a request body arrives, against the client's limits: no data
/// for `client_body_timeout` is a stall, and past `client_body_grace` the
/// average must stay at `client_body_min_rate`. Both codecs' uploads (this
/// module's [`Upload`] and the fast path's [`RawUpload`]) keep one.
pub(crate) struct Pace {
    stall: Duration,
    /// `client_body_min_rate` (bytes a second) and its grace period.
    min_rate: Option<(u64, Duration)>,
    received: u64,
    started: Instant,
    last_data: Instant,
}

impl Pace {
    fn new(limits: &UploadLimits) -> Pace {
        let now = Instant::now();
        Pace {
            stall: limits.stall,
            min_rate: limits.min_rate,
            received: 0,
            started: now,
            last_data: now,
        }
    }

    fn got(&mut self, n: usize, now: Instant) {
        self.received += n as u64;
        self.last_data = now;
    }

    /// When the body would be stalled, or its average fall under the
    /// minimum rate, if nothing more arrived.
    fn due(&self) -> Instant {
        let mut due = self.last_data + self.stall;
        if let Some((rate, grace)) = self.min_rate {
            let needed = Duration::from_secs_f64((self.received + 1) as f64 / rate.max(1) as f64);
            due = due.min(self.started + grace.max(needed));
        }
        due
    }

    /// The body is too slow: past its grace period and under the rate.
    fn too_slow(&self, now: Instant) -> Option<ClientTooSlow> {
        let (rate, grace) = self.min_rate?;
        let elapsed = now.duration_since(self.started);
        let slow = elapsed >= grace && (self.received as f64) < rate as f64 * elapsed.as_secs_f64();
        slow.then_some(ClientTooSlow {
            received: self.received,
            elapsed,
            rate,
        })
    }

    /// Once the wait for data has reached [`Pace::due`]: why the body
    /// fails, or `None` when it may still be waited for.
    fn judge(&self, now: Instant) -> Option<BodyError> {
        if let Some(slow) = self.too_slow(now) {
            return Some(slow.into());
        }
        (now >= self.last_data + self.stall).then(|| ClientStalled(self.stall).into())
    }
}

/// How an upload is bounded: the client's stall, its average rate, the
/// body's size.
#[derive(Clone, Copy)]
pub struct UploadLimits {
    pub stall: Duration,
    pub min_rate: Option<(u64, Duration)>,
    pub max_size: Option<u64>,
}

impl Upload {
    pub fn start(
        inner: Incoming,
        limits: UploadLimits,
        slot: Option<BodySlot>,
        stats: Arc<ServiceStats>,
    ) -> (ProxyBody, oneshot::Receiver<()>, Arc<Handed>) {
        let (done, sent) = oneshot::channel();
        let pace = Pace::new(&limits);
        let handed = Arc::new(Handed::default());
        let upload = Upload {
            inner,
            done: Some(done),
            timer: Box::pin(tokio::time::sleep_until(pace.due())),
            limit: limits.max_size,
            pace,
            slot,
            stats,
            handed: handed.clone(),
        };
        (ProxyBody::Upload(Box::new(upload)), sent, handed)
    }

    fn finish(&mut self) {
        self.slot = None;
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }

    fn rearm(&mut self) {
        self.timer.as_mut().reset(self.pace.due());
    }
}

/// Request bodies in progress per client address, against
/// `max_bodies_per_client`: one address cannot hold every connection and
/// upstream slot with slow uploads.
#[derive(Default)]
pub struct BodySlots(std::sync::Mutex<HashMap<IpAddr, usize>>);

impl BodySlots {
    /// A slot for one more body from `ip`, or `None` when it has `max`.
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<BodySlot> {
        let mut held = crate::io::lock(&self.0);
        let n = held.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(BodySlot(self.clone(), ip))
    }
}

/// One body in progress, counted until dropped.
pub struct BodySlot(Arc<BodySlots>, IpAddr);

impl Drop for BodySlot {
    fn drop(&mut self) {
        let mut held = crate::io::lock(&(self.0).0);
        if let Some(n) = held.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.1);
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let up = match self.get_mut() {
            ProxyBody::Upload(up) => up,
            ProxyBody::Empty => return Poll::Ready(None),
        };
        up.handed.set(None);
        match Pin::new(&mut up.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let now = Instant::now();
                if let Some(data) = frame.data_ref() {
                    up.handed.set(Some(now));
                    up.pace.got(data.len(), now);
                    if let Some(limit) = up.limit.filter(|l| up.pace.received > *l) {
                        return Poll::Ready(Some(Err(BodyTooLarge(limit).into())));
                    }
                }
                if up.inner.is_end_stream() {
                    up.finish();
                } else {
                    // A steady trickle never lets the timer fire.
                    if let Some(slow) = up.pace.too_slow(now) {
                        return Poll::Ready(Some(Err(slow.into())));
                    }
                    up.rearm();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(ClientBodyBroken(e.to_string()).into())))
            }
            Poll::Ready(None) => {
                up.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                while up.timer.as_mut().poll(cx).is_ready() {
                    if let Some(e) = up.pace.judge(Instant::now()) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    up.rearm();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upload(up) => up.inner.is_end_stream(),
            ProxyBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upload(up) => up.inner.size_hint(),
            ProxyBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// How a request body on the fast path failed to reach the upstream.
#[derive(Debug)]
pub(crate) enum UploadBroke {
    /// The client's failure (stalled, too slow, cut short), as the answer
    /// the general path gives it.
    Client(ProxyError),
    /// Writing to the upstream failed.
    Upstream(io::Error),
    /// The upstream took nothing for the whole wait (`upstream_timeout`).
    UpstreamStalled,
}

/// A request body of known length on the fast path ([`crate::h1`]). What
/// came with the head has gone with it; the rest moves from the client's
/// connection to the upstream's, by `splice(2)` when both are plain TCP
/// and enough is left, through a buffer otherwise. Bounded as [`Upload`]
/// is (stall, rate, per-client slot), and the upstream's writes by
/// `upstream_timeout`. An upstream that answers (or closes) before it has
/// the whole body ends the upload: its answer is read next, and neither
/// connection carries another request.
pub(crate) struct RawUpload<'c> {
    client: &'c mut Client,
    /// Body bytes still to be read from the client's connection.
    left: u64,
    /// Of those, how many there were at the start.
    unread: u64,
    /// All of the body reached the upstream.
    delivered: bool,
    pace: Pace,
    _slot: Option<BodySlot>,
    stats: Arc<ServiceStats>,
}

impl Drop for RawUpload<'_> {
    fn drop(&mut self) {
        self.stats.add_request_bytes(self.pace.received);
    }
}

impl<'c> RawUpload<'c> {
    /// A body of `len` bytes, of which `sent_with_head` came with the head.
    pub(crate) fn new(
        client: &'c mut Client,
        (len, sent_with_head): (u64, usize),
        limits: &UploadLimits,
        slot: Option<BodySlot>,
        stats: Arc<ServiceStats>,
    ) -> RawUpload<'c> {
        let mut pace = Pace::new(limits);
        pace.received = sent_with_head as u64;
        let left = len - sent_with_head as u64;
        RawUpload {
            client,
            left,
            unread: left,
            delivered: false,
            pace,
            _slot: slot,
            stats,
        }
    }

    /// All of the body has been read from the client.
    pub(crate) fn finished(&self) -> bool {
        self.left == 0
    }

    /// All of the body has been sent to the upstream.
    pub(crate) fn delivered(&self) -> bool {
        self.delivered
    }

    /// Something was read from the client's connection: the body can no
    /// longer be sent again.
    pub(crate) fn consumed(&self) -> bool {
        self.left < self.unread
    }

    /// Sends the rest of the body to `upstream`, each write waiting at most
    /// `wait`. `Ok(false)` when the upstream answered or closed first: what
    /// it sent is in `early`.
    pub(crate) async fn send(
        &mut self,
        upstream: &TcpStream,
        wait: Duration,
        early: &mut Vec<u8>,
    ) -> Result<bool, UploadBroke> {
        let mut sent = None;
        if self.left >= splice::MIN_LEN {
            if let Client::Plain(_) = self.client {
                sent = self.splice(upstream, wait, early).await;
            }
        }
        let sent = match sent {
            Some(sent) => sent,
            None => self.copy(upstream, wait, early).await,
        };
        self.delivered = matches!(sent, Ok(true));
        sent
    }

    /// [`RawUpload::send`] through a pipe; `None` when nothing was moved and
    /// the caller should copy: no pipe could be had, or splice does not
    /// work here.
    async fn splice(
        &mut self,
        upstream: &TcpStream,
        wait: Duration,
        early: &mut Vec<u8>,
    ) -> Option<Result<bool, UploadBroke>> {
        let mut pipe = splice::Pipe::take()?;
        let mut moved = false;
        while self.left > 0 {
            let Client::Plain(client) = &*self.client else {
                unreachable!("splice is only tried for a plain client");
            };
            let until = self.pace.due().saturating_duration_since(Instant::now());
            let fill = pipe.fill(client, self.left, until);
            let Some(filled) = unless_answered(fill, upstream, early).await else {
                return Some(Ok(false));
            };
            match filled {
                Ok(n) => {
                    moved = true;
                    if let Err(e) = self.got(n) {
                        return Some(Err(e));
                    }
                }
                Err(splice::Broke::Unsupported) if !moved => return None,
                Err(splice::Broke::ReadStalled) => {
                    if let Some(e) = self.pace.judge(Instant::now()) {
                        return Some(Err(client_failed(e)));
                    }
                    continue;
                }
                Err(splice::Broke::Closed) => return Some(Err(self.cut_short())),
                Err(splice::Broke::Read(e)) => {
                    return Some(Err(UploadBroke::Client(broken(e.to_string()))))
                }
                Err(e) => return Some(Err(UploadBroke::Client(broken(format!("{e:?}"))))),
            }
            let mut written = 0;
            let drain = pipe.drain(upstream, wait, &mut written);
            let Some(drained) = unless_answered(drain, upstream, early).await else {
                return Some(Ok(false));
            };
            match drained {
                Ok(()) => {}
                Err(splice::Broke::WriteStalled) => return Some(Err(UploadBroke::UpstreamStalled)),
                Err(splice::Broke::Write(e)) => return Some(write_failed(upstream, early, e)),
                Err(e) => {
                    return Some(Err(UploadBroke::Upstream(io::Error::other(format!(
                        "{e:?}"
                    )))))
                }
            }
        }
        pipe.give_back();
        Some(Ok(true))
    }

    /// [`RawUpload::send`] through a buffer.
    async fn copy(
        &mut self,
        upstream: &TcpStream,
        wait: Duration,
        early: &mut Vec<u8>,
    ) -> Result<bool, UploadBroke> {
        let mut buf = vec![0u8; usize::try_from(self.left).map_or(COPY_BUF, |l| l.min(COPY_BUF))];
        while self.left > 0 {
            let want = usize::try_from(self.left).map_or(buf.len(), |l| l.min(buf.len()));
            let read = loop {
                let read =
                    tokio::time::timeout_at(self.pace.due(), self.client.read(&mut buf[..want]));
                match unless_answered(read, upstream, early).await {
                    None => return Ok(false),
                    Some(Ok(r)) => break r,
                    Some(Err(_)) => {
                        if let Some(e) = self.pace.judge(Instant::now()) {
                            return Err(client_failed(e));
                        }
                    }
                }
            };
            let n = match read {
                Ok(0) => return Err(self.cut_short()),
                Ok(n) => n,
                Err(e) => return Err(UploadBroke::Client(broken(e.to_string()))),
            };
            self.got(n)?;
            let mut data = &buf[..n];
            while !data.is_empty() {
                let writable = tokio::time::timeout(wait, upstream.writable());
                match unless_answered(writable, upstream, early).await {
                    None => return Ok(false),
                    Some(Ok(Ok(()))) => match upstream.try_write(data) {
                        Ok(0) => {
                            return Err(UploadBroke::Upstream(io::ErrorKind::WriteZero.into()))
                        }
                        Ok(n) => data = &data[n..],
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return write_failed(upstream, early, e),
                    },
                    Some(Ok(Err(e))) => return write_failed(upstream, early, e),
                    Some(Err(_)) => return Err(UploadBroke::UpstreamStalled),
                }
            }
        }
        Ok(true)
    }

    /// `n` more bytes came from the client; a steady trickle under the
    /// minimum rate fails here, as it never lets the wait run out.
    fn got(&mut self, n: usize) -> Result<(), UploadBroke> {
        let now = Instant::now();
        self.left -= n as u64;
        self.pace.got(n, now);
        match self.pace.too_slow(now) {
            Some(slow) if self.left > 0 => Err(client_failed(slow.into())),
            _ => Ok(()),
        }
    }

    fn cut_short(&self) -> UploadBroke {
        UploadBroke::Client(broken(format!(
            "the client closed the connection {} bytes before the end of the body",
            self.left
        )))
    }
}

/// `step`'s output, unless the upstream answers (or closes) first: then
/// `None`, with what it sent in `early`: an upload stops at an early
/// answer, whichever wait it is in.
async fn unless_answered<F: Future>(
    step: F,
    upstream: &TcpStream,
    early: &mut Vec<u8>,
) -> Option<F::Output> {
    let mut step = std::pin::pin!(step);
    loop {
        tokio::select! {
            biased;
            r = &mut step => return Some(r),
            _ = upstream.readable() => {
                if answered(upstream, early) {
                    return None;
                }
            }
        }
    }
}

/// The buffer a body is copied through when it cannot be spliced.
const COPY_BUF: usize = 64 * 1024;

/// The general path's answer to a client's failed upload (see
/// `forward`'s mapping of the same errors).
fn client_failed(e: BodyError) -> UploadBroke {
    UploadBroke::Client(ProxyError::ClientTimeout(e.to_string()))
}

fn broken(why: String) -> ProxyError {
    ProxyError::BadRequest(ClientBodyBroken(why).to_string())
}

/// A write to the upstream failed: an upstream that answered and then
/// closed (or reset) has its answer read all the same, if it arrived.
fn write_failed(
    upstream: &TcpStream,
    early: &mut Vec<u8>,
    e: io::Error,
) -> Result<bool, UploadBroke> {
    let before = early.len();
    answered(upstream, early);
    if early.len() > before {
        Ok(false)
    } else {
        Err(UploadBroke::Upstream(e))
    }
}

/// After the upstream's socket became readable mid-upload: whether it has
/// begun its final answer (its first bytes now in `early`) or closed,
/// rather than a readiness that finds nothing (which this clears) or
/// interim responses (`100 Continue`, `103 Early Hints`: dropped, as the
/// response head's reader would, while the upload goes on).
fn answered(upstream: &TcpStream, early: &mut Vec<u8>) -> bool {
    // The caller's response buffer has room already; a read into none
    // would look like the upstream's close.
    if early.capacity() == early.len() {
        early.reserve(4096);
    }
    match upstream.try_read_buf(early) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
        Ok(0) | Err(_) => return true,
        Ok(_) => {}
    }
    loop {
        let interim = early.len() >= 10 && &early[..5] == b"HTTP/" && early[9] == b'1';
        match head_end(early, 0) {
            Some(end) if interim => drop(early.drain(..end)),
            // Ends once there is enough to tell, or too much to hold.
            None if interim && early.len() < EARLY_MAX => return false,
            None if early.len() < 10 && b"HTTP/1.1 1".starts_with(early) => return false,
            _ => return !early.is_empty(),
        }
        if early.is_empty() {
            return false;
        }
    }
}

/// The most of an unfinished interim response held while the upload goes
/// on; past it the response head's reader judges (and refuses) it.
const EARLY_MAX: usize = 64 * 1024;
