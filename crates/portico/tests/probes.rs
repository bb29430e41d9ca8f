//! Always-on hop probes (`[proxy] probe_interval`): a real `portico run`
//! sends each upstream its route's request in the background; an upstream
//! that starts answering 500 shows in `portico_probe_success` within two
//! intervals, is one log line, and shows on the status page; probes never
//! take an upstream out of its pool.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use portico_testkit::process::parse_logfmt;
use portico_testkit::{curl, Backend, Portico};

const WAIT: Duration = Duration::from_secs(10);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portico"))
}

/// The value of `portico_probe_success` for `upstream`, if it is exposed.
async fn probe_success(admin: SocketAddr, upstream: SocketAddr) -> Option<f64> {
    let r = curl(&[&format!("http://{admin}/metrics")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let prefix = format!("portico_probe_success{{service=\"shop\",upstream=\"{upstream}\"}} ");
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

async fn await_probe(admin: SocketAddr, upstream: SocketAddr, want: f64, within: Duration) {
    let start = Instant::now();
    loop {
        if probe_success(admin, upstream).await == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "portico_probe_success for {upstream} not {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_failing_upstream_shows_in_its_probe_within_two_intervals() {
    // Answers what `status` says, and records the paths and hosts it got.
    let status = Arc::new(AtomicU16::new(200));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let backend = {
        let (status, seen) = (status.clone(), seen.clone());
        Backend::start("shop-1", move |req| {
            let (status, seen) = (status.clone(), seen.clone());
            async move {
                let host = req
                    .headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("-")
                    .to_owned();
                seen.lock().unwrap().push(format!("{host}{}", req.uri()));
                let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"shop\n")));
                *r.status_mut() =
                    hyper::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                r
            }
        })
        .await
    };
    let interval = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    std::fs::write(
        &path,
        format!(
            "[proxy]\nhttp_listen = \"127.0.0.1:0\"\nprobe_interval = \"1s\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[service]]\nname = \"shop\"\nhosts = [\"shop.test\"]\ncontext_root = \"/store\"\n\
             context_root_rewrite = false\nupstreams = [\"{}\"]\n",
            backend.addr
        ),
    )
    .unwrap();
    let portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
    let admin = portico.admin_addr().await;
    let http = portico.listen_addr().await;

    await_probe(admin, backend.addr, 1.0, WAIT).await;
    // The probe is the route's request: its host and its path.
    assert!(
        seen.lock().unwrap().iter().any(|s| s == "shop.test/store"),
        "{:?}",
        seen.lock().unwrap()
    );

    status.store(500, Ordering::SeqCst);
    let flipped = Instant::now();
    await_probe(admin, backend.addr, 0.0, interval * 2).await;
    eprintln!("probe reported the 500 after {:?}", flipped.elapsed());
    let line = portico
        .wait_for_line(|l| l.contains(r#"msg="probe failing""#), WAIT)
        .await;
    let fields = parse_logfmt(&line);
    assert_eq!(fields["upstream"], backend.addr.to_string(), "{line}");
    assert_eq!(fields["result"], "status 500", "{line}");
    let page = curl(&[&format!("http://{admin}/")]).await;
    assert!(
        page.body.contains("data-probe=\"failing\""),
        "{}",
        page.body
    );
    // Probes only report: the upstream still takes the requests.
    let r = curl(&["-H", "Host: shop.test", &format!("http://{http}/store/x")]).await;
    assert_eq!(r.status, 500, "{r:?}");

    status.store(200, Ordering::SeqCst);
    await_probe(admin, backend.addr, 1.0, interval * 2).await;
    portico
        .wait_for_line(|l| l.contains(r#"msg="probe passing again""#), WAIT)
        .await;
    assert_eq!(
        portico.count_lines(|l| l.contains(r#"msg="probe failing""#)),
        1,
        "one line per change, not per probe"
    );
}
