//! The HTTP/1.1 fast path's head handling, on arbitrary bytes: the scanner
//! that finds the end of a head (`head_end`, also across reads), the early
//! refusal of bytes that can never be a request (`could_be_a_request`), the
//! request head rewritten for the upstream, and the upstream's response
//! head rewritten for the client.
//!
//! Invariants: nothing panics; a head found ends with an empty line and is
//! the first one; the search resumed after a partial read finds the same
//! end; every prefix of an accepted request may still become a request; a
//! rewritten head is itself a head that parses, keeps what it must, and
//! carries no hop-by-hop header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_proxy::fuzzing::{self, Framing};
use portico_proxy::headers::is_hop_by_hop;

fuzz_target!(|data: &[u8]| {
    let Some(end) = scan(data) else {
        // No complete head: an incomplete one is never rejected for length.
        let _ = fuzzing::could_be_a_request(data);
        return;
    };
    let head = &data[..end];
    request(head);
    response(head);
});

/// `head_end` as the fast path calls it, whole and across two reads.
fn scan(data: &[u8]) -> Option<usize> {
    let end = fuzzing::head_end(data, 0);
    if let Some(n) = end {
        assert!(n <= data.len());
        let head = &data[..n];
        assert!(
            head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
            "head does not end with an empty line: {head:?}"
        );
        // The first empty line, not a later one.
        assert_eq!(fuzzing::head_end(&data[..n - 1], 0), None);
    }
    // As `read_head` does: a first read of `split` bytes found nothing, so
    // the next search starts three bytes before where that one stopped.
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    if fuzzing::head_end(&data[..split], 0).is_none() {
        assert_eq!(
            fuzzing::head_end(data, split.saturating_sub(3)),
            end,
            "resumed search at {split} disagrees"
        );
    }
    end
}

fn request(head: &[u8]) {
    let mut out = Vec::new();
    if !fuzzing::rewrite_request_head(head, &mut out) {
        assert!(out.is_empty());
        return;
    }
    // A head that arrives in pieces is never refused early: every prefix of
    // an accepted request may still become one (a few prefixes per input,
    // to keep each run fast).
    let step = (head.len() / 16).max(1);
    for cut in (0..head.len()).step_by(step).chain([head.len() - 1]) {
        assert!(
            fuzzing::could_be_a_request(&head[..cut]),
            "a prefix ({cut} of {} bytes) of an accepted request refused: {:?}",
            head.len(),
            String::from_utf8_lossy(&head[..cut])
        );
    }

    let mut original = [httparse::EMPTY_HEADER; 100];
    let mut before = httparse::Request::new(&mut original);
    let _ = before.parse(head);
    // The upstream's head: one complete head that parses on its own.
    assert_eq!(fuzzing::head_end(&out, 0), Some(out.len()), "{out:?}");
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut after = httparse::Request::new(&mut headers);
    match after.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!(
            "rewritten request head does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(after.method, before.method);
    assert_eq!(after.path, before.path);
    assert_eq!(after.version, Some(1));
    let hosts: Vec<_> = after
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .collect();
    assert_eq!(hosts.len(), 1, "{:?}", String::from_utf8_lossy(&out));
    for h in after.headers.iter() {
        assert!(
            !is_hop_by_hop(h.name),
            "hop-by-hop {:?} forwarded: {:?}",
            h.name,
            String::from_utf8_lossy(&out)
        );
    }
    // What the proxy wrote is again a request the fast path takes, unless
    // the forwarding headers it adds took it past the fast path's 100
    // headers (an upstream's own limit is its business).
    if after.headers.len() <= 100 {
        let mut again = Vec::new();
        assert!(
            fuzzing::rewrite_request_head(&out, &mut again),
            "the rewritten head is refused: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
}

fn response(head: &[u8]) {
    let mut out = Vec::new();
    // Both settings of `hide_info_headers`, by the head's length.
    let hide = head.len() & 1 == 1;
    let Ok(Some(resp)) = fuzzing::rewrite_response_head(head, &mut out, hide) else {
        return;
    };
    assert_eq!(resp.len, head.len());
    assert!((200..1000).contains(&resp.status), "{resp:?}");
    // The client's head: what was written, then the empty line that the
    // proxy adds after its own headers.
    out.extend_from_slice(b"\r\n");
    assert_eq!(fuzzing::head_end(&out, 0), Some(out.len()), "{out:?}");
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!(
            "rewritten response head does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(parsed.code, Some(resp.status));
    let named = |name: &str| {
        parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    for hop in ["connection", "keep-alive"] {
        assert_eq!(named(hop), 0, "{:?}", String::from_utf8_lossy(&out));
    }
    match resp.framing {
        // The body passes chunked as it came: the client must see it so,
        // and no length that contradicts it.
        Framing::Chunked => {
            assert!(named("transfer-encoding") > 0);
            assert_eq!(named("content-length"), 0);
        }
        Framing::Length(_) => assert_eq!(named("transfer-encoding"), 0),
        Framing::Empty => assert!(matches!(resp.status, 204 | 304)),
        Framing::UntilClose => assert!(!resp.reusable),
    }
}
