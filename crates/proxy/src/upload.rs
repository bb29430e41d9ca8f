//! Request bodies on their way upstream: streamed frame by frame, never
//! collected, with the client's stall, its minimum average rate,
//! `max_body_size`, and the cap on bodies per client address enforced as
//! they pass.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::metrics::ServiceStats;
use tokio::time::{Instant, Sleep};

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
    stall: Duration,
    /// Fires at the next moment the body could be too slow or stalled.
    timer: Pin<Box<Sleep>>,
    /// `max_body_size`, checked as the body streams (a chunked body
    /// declares no length up front).
    limit: Option<u64>,
    received: u64,
    started: Instant,
    last_data: Instant,
    /// `client_body_min_rate` (bytes a second) and its grace period.
    min_rate: Option<(u64, Duration)>,
    /// Its place under `max_bodies_per_client`, until the body has ended.
    slot: Option<BodySlot>,
    /// The service's counters, which get `received` when the body is done.
    stats: Arc<ServiceStats>,
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.stats.add_request_bytes(self.received);
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
    ) -> (ProxyBody, oneshot::Receiver<()>) {
        let (done, sent) = oneshot::channel();
        let now = Instant::now();
        let mut upload = Upload {
            inner,
            done: Some(done),
            stall: limits.stall,
            timer: Box::pin(tokio::time::sleep_until(now)),
            limit: limits.max_size,
            received: 0,
            started: now,
            last_data: now,
            min_rate: limits.min_rate,
            slot,
            stats,
        };
        upload.rearm();
        (ProxyBody::Upload(Box::new(upload)), sent)
    }

    fn finish(&mut self) {
        self.slot = None;
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }

    /// When the body would be stalled, or its average fall under the
    /// minimum rate, if nothing more arrived.
    fn rearm(&mut self) {
        let mut due = self.last_data + self.stall;
        if let Some((rate, grace)) = self.min_rate {
            let needed = Duration::from_secs_f64((self.received + 1) as f64 / rate.max(1) as f64);
            due = due.min(self.started + grace.max(needed));
        }
        self.timer.as_mut().reset(due);
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
}

/// Request bodies in progress per client address, against
/// `max_bodies_per_client`: one address cannot hold every connection and
/// upstream slot with slow uploads.
#[derive(Default)]
pub struct BodySlots(std::sync::Mutex<HashMap<IpAddr, usize>>);

impl BodySlots {
    /// A slot for one more body from `ip`, or `None` when it has `max`.
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<BodySlot> {
        let mut held = crate::health::lock(&self.0);
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
        let mut held = crate::health::lock(&(self.0).0);
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
        match Pin::new(&mut up.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let now = Instant::now();
                if let Some(data) = frame.data_ref() {
                    up.received += data.len() as u64;
                    if let Some(limit) = up.limit.filter(|l| up.received > *l) {
                        return Poll::Ready(Some(Err(BodyTooLarge(limit).into())));
                    }
                    up.last_data = now;
                }
                if up.inner.is_end_stream() {
                    up.finish();
                } else {
                    // A steady trickle never lets the timer fire.
                    if let Some(slow) = up.too_slow(now) {
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
                    let now = Instant::now();
                    if let Some(slow) = up.too_slow(now) {
                        return Poll::Ready(Some(Err(slow.into())));
                    }
                    if now >= up.last_data + up.stall {
                        return Poll::Ready(Some(Err(ClientStalled(up.stall).into())));
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
