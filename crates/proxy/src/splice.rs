//! A large response body of known length moved from the upstream's socket
//! to the client's through a pipe with `splice(2)`, so the kernel passes
//! its pages along instead of copying them into Portico and back out
//! (HAProxy's `option splice-response`). Plain TCP on both sides only: a
//! TLS client needs the bytes in user space to encrypt them, and a chunked
//! body's framing has to be read to be checked.
//!
//! Each worker keeps a few empty pipes for reuse; a pipe that still holds
//! bytes when a transfer fails is closed, never reused.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::io::{send_timed_out, Waits};

/// Bodies with less left than this are copied: below it the pipe's extra
/// system calls cost more than the copies they save.
pub(crate) const MIN_LEN: u64 = 16 * 1024;

/// The most one splice moves: a pipe's default capacity (16 pages).
const CHUNK: usize = 64 * 1024;

/// Empty pipes a worker keeps for the next transfer.
const POOL: usize = 64;

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// An empty pipe from the worker's pool, or a new one; `None` when
    /// none can be had (out of file descriptors, say).
    fn take() -> Option<Pipe> {
        if let Some(pipe) = PIPES.with(|p| p.borrow_mut().pop()) {
            return Some(pipe);
        }
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
        Some(Pipe { read, write })
    }

    /// Back to the pool; the caller knows it is empty.
    fn give_back(self) {
        PIPES.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL {
                p.push(self);
            }
        });
    }
}

/// How a spliced body ended early.
#[derive(Debug)]
pub(crate) enum Broke {
    Upstream(io::Error),
    /// The upstream closed the connection this many bytes before the end.
    Short(u64),
    /// The upstream sent nothing for the whole idle limit.
    Stalled,
    Client(io::Error),
}

/// Moves the next `len` bytes of `from` to `to`, adding each byte that
/// reached `to` to `sent`; gives up when either side stalls past its
/// [`Waits`]. `None` when no pipe could be had and nothing was moved: the
/// caller copies instead.
pub(crate) async fn body(
    from: &TcpStream,
    to: &TcpStream,
    (len, waits): (u64, Waits),
    sent: &mut u64,
) -> Option<Result<(), Broke>> {
    let pipe = Pipe::take()?;
    let mut left = len;
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    while left > 0 {
        let want = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        let mut held = loop {
            match tokio::time::timeout(waits.upstream, from.readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Some(Err(Broke::Upstream(e))),
                Err(_) => return Some(Err(Broke::Stalled)),
            }
            let moved = from.try_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe.write, None, want, flags)?)
            });
            match moved {
                Ok(0) => return Some(Err(Broke::Short(left))),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Some(Err(Broke::Upstream(e))),
            }
        };
        left -= held as u64;
        while held > 0 {
            match tokio::time::timeout(waits.client, to.writable()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Some(Err(Broke::Client(e))),
                Err(_) => return Some(Err(Broke::Client(send_timed_out(waits.client)))),
            }
            let moved = to.try_io(Interest::WRITABLE, || {
                Ok(splice(&pipe.read, None, to, None, held, flags)?)
            });
            match moved {
                Ok(n) => {
                    held -= n;
                    *sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Some(Err(Broke::Client(e))),
            }
        }
    }
    pipe.give_back();
    Some(Ok(()))
}
