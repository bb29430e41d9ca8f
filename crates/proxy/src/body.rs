//! Body types. Bodies are streamed frame by frame in both directions, never
//! collected. The response body also carries the request's tail end: it
//! returns the upstream connection to its pool when the last frame has
//! passed, and writes the access-log line when it is dropped.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::AccessLog;
use crate::health::Admitted;
use crate::metrics::Tally;
use crate::upstream::{Busy, Conn, Upstream};

/// A response body on its way to the client.
pub struct ResponseBody {
    source: Source,
    /// The connection the upstream response arrives on, checked back in
    /// once the body has ended cleanly.
    lease: Option<(Conn, Arc<Upstream>)>,
    bytes: u64,
    log: Option<Box<AccessLog>>,
    /// Counts the request as in flight until the response is done.
    in_flight: Option<InFlight>,
    /// Its place under the service's cap, its count on its upstream.
    held: Held,
    /// The request's count against its service, and the response status,
    /// recorded with the bytes sent when the body is done.
    tally: Option<(Tally, u16)>,
}

/// What a request holds until its response has been passed on: its place
/// under the service's `max_requests`, and (least-request pools) its count
/// on its upstream.
#[derive(Default)]
pub struct Held {
    // Never read: they act by being dropped.
    #[allow(dead_code)]
    pub(crate) admitted: Option<Admitted>,
    #[allow(dead_code)]
    pub(crate) busy: Option<Busy>,
}

/// A request in flight: counted from its arrival until its response body
/// is dropped (sent, or abandoned), so shutdown knows when nothing is left.
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn enter(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

enum Source {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody {
            source: Source::Full(Some(bytes.into())),
            lease: None,
            bytes: 0,
            log: None,
            in_flight: None,
            held: Held::default(),
            tally: None,
        }
    }

    pub fn upstream(body: Incoming, conn: Conn, upstream: Arc<Upstream>) -> ResponseBody {
        let mut body = ResponseBody {
            source: Source::Upstream(body),
            lease: Some((conn, upstream)),
            bytes: 0,
            log: None,
            in_flight: None,
            held: Held::default(),
            tally: None,
        };
        body.release_if_done();
        body
    }

    /// The whole body, for responses made by the proxy itself.
    pub fn full_bytes(&self) -> Option<&Bytes> {
        match &self.source {
            Source::Full(data) => data.as_ref(),
            Source::Upstream(_) => None,
        }
    }

    pub fn set_in_flight(&mut self, guard: InFlight) {
        self.in_flight = Some(guard);
    }

    pub fn set_held(&mut self, held: Held) {
        self.held = held;
    }

    pub fn set_tally(&mut self, tally: Tally, status: u16) {
        self.tally = Some((tally, status));
    }

    pub fn set_log(&mut self, log: Box<AccessLog>) {
        self.log = Some(log);
    }

    fn release_if_done(&mut self) {
        if let Source::Upstream(b) = &self.source {
            if b.is_end_stream() {
                if let Some((conn, upstream)) = self.lease.take() {
                    upstream.checkin(conn);
                }
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = match &mut this.source {
            Source::Full(data) => data.take().map(|d| Ok(Frame::data(d))),
            Source::Upstream(b) => match ready!(Pin::new(b).poll_frame(cx)) {
                None => {
                    if let Some((conn, upstream)) = this.lease.take() {
                        upstream.checkin(conn);
                    }
                    None
                }
                Some(Err(e)) => {
                    // The connection is in an unknown state: never reuse it.
                    this.lease = None;
                    if let Some(log) = &mut this.log {
                        log.error = Some(format!("upstream body: {e}"));
                    }
                    Some(Err(e))
                }
                Some(Ok(frame)) => {
                    // Trailers end the message: hyper asks for nothing
                    // after them, so the connection goes back now.
                    if frame.is_trailers() {
                        if let Some((conn, upstream)) = this.lease.take() {
                            upstream.checkin(conn);
                        }
                    }
                    Some(Ok(frame))
                }
            },
        };
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                this.bytes += d.len() as u64;
            }
        }
        this.release_if_done();
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream(b) => b.is_end_stream(),
            Source::Full(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream(b) => b.size_hint(),
            Source::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Source::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some((tally, status)) = self.tally.take() {
            tally.finish(status, self.bytes);
        }
        if let Some(log) = self.log.take() {
            let complete = self.is_end_stream();
            log.emit(self.bytes, complete);
        }
    }
}
