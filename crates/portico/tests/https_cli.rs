//! HTTPS through the `portico` binary: certificate files replaced under a
//! running proxy, and bad certificates reported without harming others.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portico_testkit::process::parse_logfmt;
use portico_testkit::{curl, wait_until, Backend, Portico, TestCa};

const BIN: &str = env!("CARGO_BIN_EXE_portico");
const WAIT: Duration = Duration::from_secs(15);

async fn https_addr(p: &Portico) -> SocketAddr {
    let line = p
        .wait_for_line(|l| l.contains("msg=\"starting HTTPS server\""), WAIT)
        .await;
    parse_logfmt(&line)["listen"].parse().unwrap()
}

/// Replaces `path` atomically, as a certificate manager would.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn subject(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .trim_start_matches("* ")
                .trim()
                .strip_prefix("subject: ")
        })
        .map(str::to_owned)
}

async fn curl_sni(addr: SocketAddr, host: &str, ca: &Path) -> portico_testkit::CurlResponse {
    let port = addr.port();
    curl(&[
        "-v",
        "--cacert",
        &ca.display().to_string(),
        "--resolve",
        &format!("{host}:{port}:127.0.0.1"),
        &format!("https://{host}:{port}/"),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_certificate_changes_new_handshakes_without_failing_requests() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Portico Test CA");
    let ca_file = ca.write(dir.path());
    // The subject CN marks the version; both carry the site's name.
    let v1 = ca.issue(&["v1.marker.test", "foo.app.test"]);
    let v2 = ca.issue(&["v2.marker.test", "foo.app.test"]);
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    let (cert, key) = v1.write(&dir.path().join("certs"), "foo");
    let backend = Backend::echo("foo").await;
    let config = dir.path().join("portico.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nhttp_listen = \"127.0.0.1:0\"\nhttps_listen = \"127.0.0.1:0\"\naccess_log = false\n\
             [[service]]\nname = \"foo\"\nhosts = [\"foo.app.test\"]\nupstreams = [\"{}\"]\n\
             tls_cert = \"certs/foo.crt\"\ntls_key = \"certs/foo.key\"\n",
            backend.addr
        ),
    )
    .unwrap();
    let portico = Portico::spawn(
        Path::new(BIN),
        &["run", "--config", config.to_str().unwrap()],
    );
    let addr = https_addr(&portico).await;
    let r = curl_sni(addr, "foo.app.test", &ca_file).await;
    assert_eq!((r.exit, r.status), (0, 200), "{}", r.stderr);
    assert_eq!(subject(&r.stderr).as_deref(), Some("CN=v1.marker.test"));

    // Keep new TLS connections coming while the files are replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let seen_v2 = Arc::new(AtomicBool::new(false));
    let loop_task = {
        let (stop, failures, done, seen_v2, ca_file) = (
            stop.clone(),
            failures.clone(),
            done.clone(),
            seen_v2.clone(),
            ca_file.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = curl_sni(addr, "foo.app.test", &ca_file).await;
                if r.exit != 0 || r.status != 200 {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("exit {} status {}: {}", r.exit, r.status, r.stderr));
                } else if subject(&r.stderr).as_deref() == Some("CN=v2.marker.test") {
                    seen_v2.store(true, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    wait_until(WAIT, "requests before the swap", || async {
        done.load(Ordering::SeqCst) >= 5
    })
    .await;
    // The certificate first, the key only later: the half-replaced pair
    // is refused and the previous certificate stays in service...
    replace(&cert, &v2.cert_pem);
    portico
        .wait_for_line(
            |l| {
                l.contains("msg=\"certificate refused; still serving the previous one\"")
                    && l.contains("does not match")
            },
            WAIT,
        )
        .await;
    let r = curl_sni(addr, "foo.app.test", &ca_file).await;
    assert_eq!(subject(&r.stderr).as_deref(), Some("CN=v1.marker.test"));
    // ...until the key arrives too.
    replace(&key, &v2.key_pem);
    wait_until(
        WAIT,
        "a handshake presenting the new certificate",
        || async { seen_v2.load(Ordering::SeqCst) },
    )
    .await;
    let before = done.load(Ordering::SeqCst);
    wait_until(WAIT, "requests after the swap", || async {
        done.load(Ordering::SeqCst) >= before + 5
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    loop_task.await.unwrap();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        done.load(Ordering::SeqCst),
        &failures[..failures.len().min(3)]
    );
    // Each settled change is a version of its own.
    assert!(portico.count_lines(|l| l.contains("msg=\"update detected\"")) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_named_and_refuse_only_their_own_service() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("Portico Test CA");
    let ca_file = ca.write(d);
    let backend = Backend::echo("b").await;
    ca.issue(&["good.test"]).write(d, "good");
    ca.issue(&["soon.test"]).write(d, "unused");
    ca.issue_valid(&["soon.test"], -80, 5).write(d, "soon");
    ca.issue_valid(&["expired.test"], -90, -1)
        .write(d, "expired");
    ca.issue_valid(&["notyet.test"], 2, 90).write(d, "notyet");
    // A certificate with some other certificate's key.
    let (mismatch_cert, _) = ca.issue(&["mismatch.test"]).write(d, "mismatch");
    let (_, other_key) = ca.issue(&["other.test"]).write(d, "other");
    std::fs::write(d.join("garbage.crt"), "this is not a certificate\n").unwrap();
    std::fs::write(
        d.join("garbage.key"),
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let svc = |name: &str, cert: &str, key: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\nupstreams = [\"{}\"]\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n",
            backend.addr
        )
    };
    let config = d.join("portico.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nhttp_listen = \"127.0.0.1:0\"\nhttps_listen = \"127.0.0.1:0\"\n{}{}{}{}{}{}{}",
            svc("good", "good.crt", "good.key"),
            svc("missing", "missing.crt", "missing.key"),
            svc("mismatch", mismatch_cert.file_name().unwrap().to_str().unwrap(), other_key.file_name().unwrap().to_str().unwrap()),
            svc("garbage", "garbage.crt", "garbage.key"),
            svc("expired", "expired.crt", "expired.key"),
            svc("notyet", "notyet.crt", "notyet.key"),
            svc("soon", "soon.crt", "soon.key"),
        ),
    )
    .unwrap();

    // `portico check` lists every certificate problem and fails.
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for expect in [
        "service missing: cannot read missing.crt: No such file",
        "service mismatch: the key in other.key does not match the certificate in mismatch.crt",
        "service garbage: garbage.crt: no certificate found",
        "service expired: expired.crt: expired on 20",
        "service notyet: notyet.crt: not valid before 20",
        "warning: service soon: certificate soon.crt expires on 20",
        "5 problem(s)",
    ] {
        assert!(stdout.contains(expect), "missing {expect:?} in:\n{stdout}");
    }

    // `portico run` serves the good ones and refuses only the bad.
    let portico = Portico::spawn(
        Path::new(BIN),
        &["run", "--config", config.to_str().unwrap()],
    );
    let addr = https_addr(&portico).await;
    for (service, message) in [
        ("missing", "cannot read missing.crt"),
        ("mismatch", "does not match the certificate"),
        ("garbage", "no certificate found"),
        ("expired", "expired on 20"),
        ("notyet", "not valid before 20"),
    ] {
        let line = portico
            .stderr_lines()
            .into_iter()
            .find(|l| {
                l.contains(
                    "msg=\"certificate refused; HTTPS for this service is off until it is fixed\"",
                ) && l.contains(&format!("service={service} "))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no refusal logged for {service}: {:#?}",
                    portico.stderr_lines()
                )
            });
        let fields = parse_logfmt(&line);
        assert_eq!(fields["level"], "error");
        assert!(fields["error"].contains(message), "{line}");
        assert!(
            fields["file"].ends_with(".crt") || fields["file"].ends_with(".key"),
            "{line}"
        );
        let r = curl_sni(addr, &format!("{service}.test"), &ca_file).await;
        assert_eq!(r.exit, 35, "{service}: {r:?}");
        // The refusal names the name asked for and who asked.
        let refused = portico
            .wait_for_line(
                |l| {
                    l.contains("msg=\"no certificate for the requested name; handshake refused\"")
                        && l.contains(&format!("sni={service}.test "))
                },
                WAIT,
            )
            .await;
        assert_eq!(
            parse_logfmt(&refused)["client"].split(':').next(),
            Some("127.0.0.1"),
            "{refused}"
        );
    }
    let warning = portico
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("msg=\"certificate expires soon\""))
        .expect("expiry warning");
    let fields = parse_logfmt(&warning);
    assert_eq!(
        (fields["level"].as_str(), fields["service"].as_str()),
        ("warn", "soon")
    );
    assert!(fields["not_after"].starts_with("20"), "{warning}");
    for service in ["good", "soon"] {
        let r = curl_sni(addr, &format!("{service}.test"), &ca_file).await;
        assert_eq!((r.exit, r.status), (0, 200), "{service}: {}", r.stderr);
    }
}
