//! The tracer's building blocks against real sockets on loopback: DNS
//! through a server of the test's own, and HTTP exchanges that are refused,
//! cut off or never answered, each ending within its bound.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use portico_testkit::dns::DnsServer;
use portico_testkit::forwarder::Forwarder;
use portico_testkit::{dead_addr, Backend};
use portico_trace::api::{AdminClient, AdminError};
use portico_trace::dns::{self, DnsError};
use portico_trace::http::{fetch, Fetch, FetchError};

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn dns_answers_from_the_given_server() {
    let ip: IpAddr = "127.0.0.7".parse().unwrap();
    let server = DnsServer::start(&[("foo.app.test", ip)]).await;
    let found = dns::resolve("Foo.App.Test", Some(server.addr), SHORT)
        .await
        .unwrap();
    assert_eq!(found.addresses, [ip]);
    assert_eq!(found.source, server.addr.to_string());
    let missing = dns::resolve("nope.app.test", Some(server.addr), SHORT).await;
    assert!(
        matches!(missing, Err(DnsError::NxDomain { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn dns_without_a_server_fails_within_the_bound() {
    // A UDP port nobody reads: refused at once, or silence until the timeout.
    let quiet = dead_addr().await;
    let started = Instant::now();
    let r = dns::resolve("foo.app.test", Some(quiet), SHORT).await;
    assert!(r.is_err(), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn exchanges_are_classified_and_bounded() {
    let refused = fetch(Fetch::get(dead_addr().await, "foo.test", "/", SHORT)).await;
    assert_eq!(refused.result.unwrap_err(), FetchError::Refused);

    let hung = Backend::hang("hung").await;
    let started = Instant::now();
    let timed_out = fetch(Fetch::get(hung.addr, "foo.test", "/", SHORT)).await;
    assert_eq!(
        timed_out.result.unwrap_err(),
        FetchError::ResponseTimeout("300ms".into())
    );
    assert!(timed_out.timings.connect_ms.is_some());
    assert!(started.elapsed() < Duration::from_secs(2));

    // A layer-4 balancer whose target is gone: accepted, then closed.
    let lb = Forwarder::start(dead_addr().await).await;
    let closed = fetch(Fetch::get(lb.addr, "foo.test", "/", SHORT)).await;
    assert_eq!(closed.result.unwrap_err(), FetchError::Closed);

    let ok = Backend::echo("task").await;
    let answered = fetch(Fetch::get(ok.addr, "foo.test", "/x", SHORT)).await;
    let answer = answered.result.unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.body_text().contains("\"path\":\"/x\""));
    assert!(answered.timings.first_byte_ms.is_some());
}

#[tokio::test]
async fn a_server_that_is_not_an_admin_api_is_told_apart() {
    let not_admin = Backend::status("nginx", 404).await;
    let client = AdminClient {
        addr: not_admin.addr,
        token: None,
        timeout: SHORT,
    };
    let err = client.health().await.unwrap_err();
    assert!(
        matches!(err, AdminError::Status { status: 404, .. }),
        "{err:?}"
    );
    let down = AdminClient {
        addr: dead_addr().await,
        token: None,
        timeout: SHORT,
    };
    assert!(matches!(
        down.health().await.unwrap_err(),
        AdminError::Unreachable { .. }
    ));
}
