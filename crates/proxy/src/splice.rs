//! A large body of known length moved from one socket to the other through
//! a pipe with `splice(2)`, so the kernel passes its pages along instead of
//! copying them into Portico and back out (HAProxy's `option
//! splice-response` and `splice-request`): responses from the upstream's
//! socket to the client's, request bodies the other way. Plain TCP on both
//! sides only: TLS needs the bytes in user space to encrypt or decrypt
//! them, and a chunked body's framing has to be read to be checked.
//!
//! Each worker keeps a few empty pipes for reuse (two descriptors each); a
//! pipe that still holds bytes when a transfer fails is closed, never
//! reused. A client that resets the connection mid-transfer makes the
//! splice fail with `EPIPE` and no signal: Rust's runtime ignores SIGPIPE.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{
    fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags,
};
use tokio::io::Interest;
use tokio::net::TcpStream;

use std::time::Duration;

/// Bodies with less left than this are copied: below it the pipe's extra
/// system calls cost more than the copies they save.
pub(crate) const MIN_LEN: u64 = 16 * 1024;

/// The capacity asked for a new pipe, which is the most one splice moves:
/// four times the default 16 pages, so a 1 MiB body takes 4 round trips
/// through the pipe rather than 16. A pipe takes pages only while it holds
/// bytes; where the kernel refuses (`pipe-max-size`, a user's pipe quota),
/// the pipe keeps the capacity it has.
const CHUNK: usize = 256 * 1024;

/// Empty pipes a worker keeps for the next transfer.
const POOL: usize = 64;

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

thread_local! {
    static PIPES: RefCell<Vec<(OwnedFd, OwnedFd, usize)>> = const { RefCell::new(Vec::new()) };
}

/// How a spliced body ended early; the caller says which side is which.
#[derive(Debug)]
pub(crate) enum Broke {
    /// Splicing does not work here (a kernel or sandbox without it), found
    /// before anything moved: the caller copies instead.
    Unsupported,
    /// Reading the sending side failed.
    Read(io::Error),
    /// The sending side closed its connection before the end.
    Closed,
    /// The sending side sent nothing for the whole wait.
    ReadStalled,
    /// Writing to the receiving side failed.
    Write(io::Error),
    /// The receiving side took nothing for the whole wait.
    WriteStalled,
}

/// A pipe between two sockets, with what it holds.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity, the most one splice into it moves.
    capacity: usize,
    held: usize,
    /// Something has gone through it in this transfer.
    used: bool,
}

impl Pipe {
    /// An empty pipe from the worker's pool, or a new one; `None` when
    /// none can be had (out of file descriptors, say).
    pub(crate) fn take() -> Option<Pipe> {
        let (read, write, capacity) = match PIPES.with(|p| p.borrow_mut().pop()) {
            Some(pipe) => pipe,
            None => {
                let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
                let capacity = fcntl_setpipe_size(&write, CHUNK)
                    .or_else(|_| fcntl_getpipe_size(&write))
                    .unwrap_or(4096);
                (read, write, capacity)
            }
        };
        Some(Pipe {
            read,
            write,
            capacity,
            held: 0,
            used: false,
        })
    }

    /// Back to the pool once the transfer is over; a pipe still holding
    /// bytes is closed.
    pub(crate) fn give_back(self) {
        if self.held == 0 {
            PIPES.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL {
                    p.push((self.read, self.write, self.capacity));
                }
            });
        }
    }

    /// Moves up to `left` bytes (and at most the pipe's capacity) from
    /// `from` into the empty pipe, waiting up to `wait` for them; returns
    /// how many.
    pub(crate) async fn fill(
        &mut self,
        from: &TcpStream,
        left: u64,
        wait: Duration,
    ) -> Result<usize, Broke> {
        debug_assert_eq!(self.held, 0, "filled only once drained");
        let want = usize::try_from(left).map_or(self.capacity, |l| l.min(self.capacity));
        loop {
            match tokio::time::timeout(wait, from.readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Broke::Read(e)),
                Err(_) => return Err(Broke::ReadStalled),
            }
            let moved = from.try_io(Interest::READABLE, || {
                Ok(splice(from, None, &self.write, None, want, FLAGS)?)
            });
            match moved {
                Ok(0) => return Err(Broke::Closed),
                Ok(n) => {
                    self.held = n;
                    self.used = true;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if !self.used && unsupported(&e) => return Err(Broke::Unsupported),
                Err(e) => return Err(Broke::Read(e)),
            }
        }
    }

    /// Moves all the pipe holds to `to`, waiting up to `wait` each time it
    /// takes nothing; adds what reached `to` to `sent`. Cancel-safe: what
    /// the pipe holds stays counted.
    pub(crate) async fn drain(
        &mut self,
        to: &TcpStream,
        wait: Duration,
        sent: &mut u64,
    ) -> Result<(), Broke> {
        while self.held > 0 {
            match tokio::time::timeout(wait, to.writable()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Broke::Write(e)),
                Err(_) => return Err(Broke::WriteStalled),
            }
            let moved = to.try_io(Interest::WRITABLE, || {
                Ok(splice(&self.read, None, to, None, self.held, FLAGS)?)
            });
            match moved {
                Ok(0) => return Err(Broke::Write(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.held -= n;
                    *sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Broke::Write(e)),
            }
        }
        Ok(())
    }
}

/// EINVAL, ENOSYS, EPERM: splice is not available for these descriptors
/// (seccomp filters, emulated kernels), as opposed to a broken connection.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
    )
}
