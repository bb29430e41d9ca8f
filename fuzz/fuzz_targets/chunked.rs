//! The chunked framing the fast path follows while it relays an upstream's
//! chunked response body, on arbitrary bytes split at arbitrary points (as
//! reads from a socket split them).
//!
//! The first input byte picks the split points; the rest is the body.
//! Invariants: nothing panics; the decoder takes every byte it is given
//! until it is done, and never one after; however the body is split, it
//! reaches the same verdict at the same byte; a body it calls done ends
//! where a plain reading of the chunked grammar says it ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_proxy::fuzzing::Chunked;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let whole = run(body, &[body.len()]);
    // Split points from the seed: every `step` bytes, or at one byte
    // (as one read per byte would).
    let step = usize::from(seed % 17) + 1;
    let cuts: Vec<usize> = (step..body.len()).step_by(step).collect();
    let split = run(body, &cuts);
    assert_eq!(whole, split, "split every {step} bytes");
    let single = run(body, &[usize::from(seed).min(body.len())]);
    assert_eq!(whole, single, "split at {seed}");

    if let Verdict::Done(n) = whole {
        let consumed = &body[..n];
        assert!(consumed.ends_with(b"\r\n\r\n"));
        assert_eq!(
            reference_end(consumed),
            Some(n),
            "{:?}",
            String::from_utf8_lossy(consumed)
        );
        // The end does not depend on what follows it.
        assert_eq!(run(consumed, &[]), Verdict::Done(n));
    }
});

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The body ended after this many bytes.
    Done(usize),
    /// Malformed, at the piece that ends at this offset or before.
    Error,
    /// All of it taken; the body goes on.
    More,
}

/// Feeds `body` in pieces ending at `cuts` (then the rest), as the relay
/// does: stop at an error or once done.
fn run(body: &[u8], cuts: &[usize]) -> Verdict {
    let mut c = Chunked::default();
    let mut at = 0;
    for &end in cuts.iter().chain([&body.len()]) {
        if end < at {
            continue;
        }
        let piece = &body[at..end];
        let Some(used) = c.feed(piece) else {
            return Verdict::Error;
        };
        assert!(used <= piece.len());
        if c.done() {
            return Verdict::Done(at + used);
        }
        assert_eq!(used, piece.len(), "bytes left over before the end");
        at = end;
    }
    Verdict::More
}

/// Where a valid chunked body ends, by a plain reading of RFC 9112 §7.1
/// (lenient: it only has to agree on bodies the decoder accepted).
fn reference_end(body: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + find_crlf(&body[at..])?;
        let line = &body[at..line_end];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer lines, then the empty line.
            loop {
                let line_end = at + find_crlf(&body[at..])?;
                let empty = line_end == at;
                at = line_end + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        at = at.checked_add(usize::try_from(size).ok()?)?;
        if body.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}
