//! Body types. Bodies are streamed frame by frame in both directions, never
//! collected. The response body also carries the request's tail end: it
//! returns the upstream connection to its pool when the last frame has
//! passed, and writes the access-log line when it is dropped.
//!
//! A response from hyper's client streams as hyper decoded it; one relayed
//! as bytes ([`crate::relay`]) as [`RawBody`], which decodes its framing.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::AccessLog;
use crate::framing::{Cut, Framing, Rest};
use crate::health::Admitted;
use crate::io::{SendTimedOut, Stall};
use crate::metrics::Tally;
use crate::upstream::{Busy, Conn, RawConn, Upstream};

/// Each read of a relayed body after the first.
const BODY_READ: usize = 64 * 1024;

/// A response body's error: hyper's (its client's body) or the relay's.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A response body on its way to the client.
pub struct ResponseBody {
    source: Source,
    /// The connection the upstream response arrives on, checked back in
    /// once the body has ended cleanly.
    lease: Option<(Conn, Arc<Upstream>)>,
    bytes: u64,
    /// The request's log line, and whether the client's connection timed
    /// out (which says why a body that ends early did).
    log: Option<(Box<AccessLog>, Arc<SendTimedOut>)>,
    /// Counts the request as in flight until the response is done.
    in_flight: Option<InFlight>,
    /// Its place under the service's cap, its count on its upstream.
    held: Held,
    /// The request's count against its service, and the response status,
    /// recorded with the bytes sent when the body is done.
    tally: Option<(Tally, u16)>,
    /// The wait for the upstream's next bytes, for bodies from upstreams:
    /// one that brings none for `upstream_timeout` is abandoned (nginx's
    /// `proxy_read_timeout` also counts between two reads).
    idle: Option<Stall>,
}

/// The upstream sent no response body data for this long (its
/// `upstream_timeout`).
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no response body data for {0:?} (upstream_timeout)")]
pub struct UpstreamStalled(pub Duration);

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
    /// Read from a bare upstream connection ([`crate::relay`]), which the
    /// body itself returns to its pool.
    Relayed(RawBody),
    Full(Option<Bytes>),
}

impl ResponseBody {
    fn new(source: Source, lease: Option<(Conn, Arc<Upstream>)>) -> ResponseBody {
        ResponseBody {
            source,
            lease,
            bytes: 0,
            log: None,
            in_flight: None,
            held: Held::default(),
            tally: None,
            idle: None,
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::new(Source::Full(Some(bytes.into())), None)
    }

    /// A body from hyper's client; `idle`: the upstream's `upstream_timeout`.
    pub fn upstream(
        body: Incoming,
        conn: Conn,
        upstream: Arc<Upstream>,
        idle: Duration,
    ) -> ResponseBody {
        let mut body = ResponseBody::new(Source::Upstream(body), Some((conn, upstream)));
        body.idle = Some(Stall::new(idle));
        body.release_if_done();
        body
    }

    pub(crate) fn relayed(body: RawBody, idle: Duration) -> ResponseBody {
        let mut body = ResponseBody::new(Source::Relayed(body), None);
        body.idle = Some(Stall::new(idle));
        body
    }

    /// The whole body, for responses made by the proxy itself.
    pub fn full_bytes(&self) -> Option<&Bytes> {
        match &self.source {
            Source::Full(data) => data.as_ref(),
            Source::Upstream(_) | Source::Relayed(_) => None,
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

    pub(crate) fn set_log(&mut self, log: Box<AccessLog>, send: Arc<SendTimedOut>) {
        self.log = Some((log, send));
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
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = this.poll_source(cx);
        if polled.is_pending() {
            if let Some(idle) = &mut this.idle {
                if idle.poll_expired(cx).is_ready() {
                    let limit = idle.limit;
                    return Poll::Ready(Some(Err(this.stalled(limit))));
                }
            }
        } else if let Some(idle) = &mut this.idle {
            idle.moved();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream(b) => b.is_end_stream(),
            Source::Relayed(b) => b.is_end_stream(),
            Source::Full(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream(b) => b.size_hint(),
            Source::Relayed(b) => match b.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            Source::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Source::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl ResponseBody {
    /// Gives up on a body whose upstream went silent: its connection, in
    /// an unknown state, is closed, and the body never reads as complete.
    fn stalled(&mut self, limit: Duration) -> BodyError {
        self.lease = None;
        if let Source::Relayed(b) = &mut self.source {
            b.abandon();
        }
        let e = UpstreamStalled(limit);
        if let Some((log, _)) = &mut self.log {
            log.error = Some(format!("upstream body: {e}"));
        }
        e.into()
    }

    fn poll_source(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self;
        let frame = match &mut this.source {
            Source::Full(data) => data.take().map(|d| Ok(Frame::data(d))),
            Source::Relayed(b) => match ready!(b.poll_data(cx)) {
                Some(Err(e)) => {
                    if let Some((log, _)) = &mut this.log {
                        log.error = Some(format!("upstream body: {e}"));
                    }
                    Some(Err(e.into()))
                }
                other => other.map(|f| f.map_err(Into::into)),
            },
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
                    if let Some((log, _)) = &mut this.log {
                        log.error = Some(format!("upstream body: {e}"));
                    }
                    Some(Err(e.into()))
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
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some((tally, status)) = self.tally.take() {
            tally.finish(status, self.bytes);
        }
        if let Some((mut log, send)) = self.log.take() {
            let complete = self.is_end_stream();
            if !complete && log.error.is_none() {
                log.error = send.error().map(|e| e.to_string());
            }
            log.emit(self.bytes, complete);
        }
    }
}

/// A response body read from a bare upstream connection, its framing
/// decoded; the connection goes back to its pool once the body has ended
/// as its head said it would.
pub(crate) struct RawBody {
    conn: Option<RawConn>,
    upstream: Arc<Upstream>,
    /// Read from the connection and not yet passed on.
    buf: BytesMut,
    state: State,
    /// The head allows another request on this connection.
    reusable: bool,
}

enum State {
    Body(Rest),
    /// It broke off: never at its end (the access log reads it as
    /// incomplete). The error is told on the poll after the one that found
    /// it, then taken: hyper's server stops writing at a body's error, and
    /// the yield in between lets what was passed on reach the client first.
    Broken(Option<RelayError>),
}

/// Why a relayed response body broke off.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error("upstream closed the connection {0} bytes before the end of the body")]
    Short(u64),
    #[error("upstream closed the connection inside a chunked body")]
    ChunkedEof,
    #[error("invalid chunked framing from the upstream")]
    BadChunk,
    #[error("reading the upstream: {0}")]
    Io(#[from] io::Error),
}

impl RawBody {
    pub(crate) fn new(
        conn: RawConn,
        upstream: Arc<Upstream>,
        buf: BytesMut,
        framing: Framing,
        reusable: bool,
    ) -> RawBody {
        let mut body = RawBody {
            conn: Some(conn),
            upstream,
            buf,
            state: State::Body(Rest::new(framing)),
            reusable,
        };
        body.end_if_done();
        body
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        matches!(&self.state, State::Body(rest) if rest.is_done())
    }

    /// The bytes still to come, when the head said.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match &self.state {
            State::Body(rest) => rest.known_left(),
            State::Broken(_) => None,
        }
    }

    /// Once the body is over, its connection goes back to the pool, unless
    /// the upstream said it would close it or sent more than its body.
    fn end_if_done(&mut self) {
        if self.is_end_stream() {
            if let Some(conn) = self.conn.take() {
                if self.reusable && self.buf.is_empty() {
                    self.upstream.checkin_raw(conn);
                }
            }
        }
    }

    /// The next piece of the body from what has been read, if any.
    fn take_data(&mut self) -> Result<Option<Bytes>, RelayError> {
        let rest = match &mut self.state {
            State::Body(rest) if !rest.is_done() && !self.buf.is_empty() => rest,
            _ => return Ok(None),
        };
        let data = match rest {
            Rest::Chunked(chunks) => loop {
                if self.buf.is_empty() {
                    break None;
                }
                let (used, data) = chunks
                    .next_data(&self.buf)
                    .map_err(|()| RelayError::BadChunk)?;
                if let Some(range) = data {
                    // `next_data` stops right after the data run.
                    let mut taken = self.buf.split_to(range.end);
                    taken.advance(range.start);
                    // When the rest is framing only (the last chunk's end,
                    // the final chunk), the body ends with this data: the
                    // client's stream ends with its last DATA frame and the
                    // connection goes back to the pool at once.
                    let mut ahead = chunks.clone();
                    if let Ok((used, None)) = ahead.next_data(&self.buf) {
                        *chunks = ahead;
                        self.buf.advance(used);
                    }
                    break Some(taken.freeze());
                }
                self.buf.advance(used);
                if chunks.done() {
                    // Anything left in `buf` came after the body: the
                    // connection is not reused (see `end_if_done`).
                    break None;
                }
            },
            _ => {
                let take = rest.pass(&self.buf).map_err(|()| RelayError::BadChunk)?;
                Some(self.buf.split_to(take).freeze())
            }
        };
        rest.settle();
        self.end_if_done();
        Ok(data)
    }

    pub(crate) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        loop {
            match self.take_data() {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) => {}
                Err(e) => return self.break_off(e, cx),
            }
            let rest = match &mut self.state {
                State::Body(rest) if rest.is_done() => return Poll::Ready(None),
                State::Body(rest) => rest,
                State::Broken(e) => return Poll::Ready(e.take().map(Err)),
            };
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(BODY_READ);
            }
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut self.buf
            ));
            match read {
                Ok(0) => {
                    let e = match rest.close() {
                        Ok(()) => {
                            self.conn = None;
                            return Poll::Ready(None);
                        }
                        Err(Cut::Short(left)) => RelayError::Short(left),
                        Err(Cut::InChunked) => RelayError::ChunkedEof,
                    };
                    return self.break_off(e, cx);
                }
                Ok(_) => {}
                Err(e) => return self.break_off(RelayError::Io(e), cx),
            }
        }
    }

    /// Ends the body without a word: the caller tells why.
    fn abandon(&mut self) {
        self.conn = None;
        self.state = State::Broken(None);
    }

    /// Ends the body with `e`, told on the next poll; the connection, in an
    /// unknown state, is never reused.
    fn break_off(
        &mut self,
        e: RelayError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        self.conn = None;
        self.state = State::Broken(Some(e));
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
