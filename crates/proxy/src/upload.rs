//! Request bodies on their way upstream: streamed frame by frame, never
//! collected, with the client's stall and `max_body_size` enforced as
//! they pass.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Sleep;

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
    timer: Pin<Box<Sleep>>,
    /// `max_body_size`, checked as the body streams (a chunked body
    /// declares no length up front).
    limit: Option<u64>,
    received: u64,
}

impl Upload {
    pub fn start(
        inner: Incoming,
        stall: Duration,
        limit: Option<u64>,
    ) -> (ProxyBody, oneshot::Receiver<()>) {
        let (done, sent) = oneshot::channel();
        let upload = Upload {
            inner,
            done: Some(done),
            stall,
            timer: Box::pin(tokio::time::sleep(stall)),
            limit,
            received: 0,
        };
        (ProxyBody::Upload(Box::new(upload)), sent)
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
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
                if let Some(data) = frame.data_ref() {
                    up.received += data.len() as u64;
                    if let Some(limit) = up.limit.filter(|l| up.received > *l) {
                        return Poll::Ready(Some(Err(BodyTooLarge(limit).into())));
                    }
                }
                let deadline = tokio::time::Instant::now() + up.stall;
                up.timer.as_mut().reset(deadline);
                if up.inner.is_end_stream() {
                    up.finish();
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
                if up.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(ClientStalled(up.stall).into())));
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
