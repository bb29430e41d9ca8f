//! The Docker provider against the real engine on this machine. Portico
//! runs in its own container (an image built `FROM scratch` from this
//! workspace's binary), with the Docker socket mounted read-only and its
//! port published on 127.0.0.1; the tests talk to it only through that
//! port, and it reaches the backends (the same image, running `portico
//! echo`) over their networks. Everything created is removed at the end,
//! failed or not.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_testkit::docker::{self as dk, Cleanup};
use portico_testkit::{wait_until, HttpClient};

const BIN: &str = env!("CARGO_BIN_EXE_portico");
const CONVERGE: Duration = Duration::from_secs(60);

/// `docker ARGS` off the async workers.
async fn d(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dk::docker(&args)
    })
    .await
    .unwrap()
}

/// The replica name from a `portico echo` answer, if the request got one.
async fn replica(client: &HttpClient, host: &str) -> Option<String> {
    let (status, _, body) = client.get(host, "/").await.ok()?;
    if status != 200 {
        return None;
    }
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("replica: "))
        .map(str::to_owned)
}

async fn status(client: &HttpClient, host: &str) -> u16 {
    client
        .get(host, "/")
        .await
        .map_or(0, |(s, _, _)| s.as_u16())
}

/// Replicas seen in `n` requests.
async fn replicas(client: &HttpClient, host: &str, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        if let Some(r) = replica(client, host).await {
            seen.insert(r);
        }
    }
    seen
}

fn running_tasks(service: &str) -> usize {
    dk::try_docker(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.CurrentState}}",
    ])
    .unwrap_or_default()
    .lines()
    .filter(|l| l.starts_with("Running"))
    .count()
}

/// Starts Portico in a container with `config`, publishing 8080 and 8443
/// (and 9000, for an admin API the config may serve there) on loopback.
async fn start_portico(
    cleanup: &mut Cleanup,
    image: &str,
    config: &str,
) -> (SocketAddr, String, tempfile::TempDir, SocketAddr) {
    let name = dk::unique("pt-proxy");
    let (dir, _) = dk::config_dir(config);
    let mount = format!("{}:/etc/portico:ro", dir.path().display());
    cleanup.containers.push(name.clone());
    d(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        "127.0.0.1::8080",
        "-p",
        "127.0.0.1::8443",
        "-p",
        "127.0.0.1::9000",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock:ro",
        "-v",
        &mount,
        image,
        "run",
        "--config",
        "/etc/portico/portico.toml",
    ])
    .await;
    let addr = dk::published(&name, 8080);
    let https = dk::published(&name, 8443);
    wait_until(CONVERGE, "Portico's container to answer", || async {
        HttpClient::new(addr).get("nothing.test", "/").await.is_ok()
    })
    .await;
    (addr, name, dir, https)
}

fn logs(container: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["logs", container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

/// Prints the warnings, errors and requests slower than 0.5 s in
/// `container`'s log.
fn show_slow_or_failed(container: &str) {
    let lines: Vec<String> = logs(container)
        .lines()
        .filter(|l| {
            l.contains("level=warn")
                || l.contains("level=error")
                || l.split("request_time=")
                    .nth(1)
                    .and_then(|t| t.split(' ').next())
                    .and_then(|t| t.parse::<f64>().ok())
                    .is_some_and(|t| t > 0.5)
        })
        .map(str::to_owned)
        .collect();
    eprintln!(
        "slow or failed requests in Portico's log:\n{}",
        lines.join("\n")
    );
}

fn image(cleanup: &mut Cleanup) -> String {
    let tag = format!("portico-test:{}", std::process::id());
    dk::build_image(Path::new(BIN), &tag);
    cleanup.images.push(tag.clone());
    tag
}

/// Makes the engine a swarm manager if it is not one, builds the test
/// image and creates an attachable overlay network for the test's
/// services: `(image, network)`, all undone by `cleanup`.
async fn swarm_and_network(cleanup: &mut Cleanup) -> (String, String) {
    if let Err(e) = cleanup.ensure_swarm() {
        panic!("swarm mode is unavailable here: {e}");
    }
    let image = image(cleanup);
    let net = dk::unique("pt-net");
    d(&["network", "create", "-d", "overlay", "--attachable", &net]).await;
    cleanup.networks.push(net.clone());
    (image, net)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_services_route_scale_update_move_and_go() {
    if !dk::available() {
        return;
    }
    let mut cleanup = Cleanup::default();
    let (image, net) = swarm_and_network(&mut cleanup).await;
    let (addr, proxy, _dir, https) = start_portico(
        &mut cleanup,
        &image,
        "[proxy]\nhttp_listen = \"0.0.0.0:8080\"\nhttps_listen = \"0.0.0.0:8443\"\nproxy_id = \"pt-proxy\"\n\
         [docker]\npoll_interval = \"2s\"\ndamping_changes = 4\ndamping_interval = \"5s\"\n",
    )
    .await;
    let client = HttpClient::new(addr);

    // A service with two replicas: both are reached.
    let foo = dk::unique("pt-foo");
    let foo_host = format!("{foo}.test");
    cleanup.services.push(foo.clone());
    d(&[
        "service",
        "create",
        "-d",
        "--name",
        &foo,
        "--replicas",
        "2",
        "--network",
        &net,
        "--label",
        &format!("com.docker.lb.hosts={foo_host}"),
        "--label",
        "com.docker.lb.port=8080",
        &image,
        "echo",
    ])
    .await;
    wait_until(CONVERGE, "both replicas of foo to be routed", || async {
        replicas(&client, &foo_host, 6).await.len() == 2
    })
    .await;

    // HTTPS with the certificate and key from Docker config objects.
    let ca = portico_testkit::TestCa::new("Docker Test CA");
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(ca_dir.path());
    let secure = dk::unique("pt-secure");
    let secure_host = format!("{secure}.test");
    let (cert, key) = ca.issue(&[&secure_host]).write(ca_dir.path(), "secure");
    for (name, file) in [
        (format!("{secure}-crt"), &cert),
        (format!("{secure}-key"), &key),
    ] {
        d(&["config", "create", &name, &file.display().to_string()]).await;
        cleanup.configs.push(name);
    }
    cleanup.services.push(secure.clone());
    d(&[
        "service",
        "create",
        "-d",
        "--name",
        &secure,
        "--network",
        &net,
        "--label",
        &format!("com.docker.lb.hosts={secure_host}"),
        "--label",
        "com.docker.lb.port=8080",
        "--label",
        &format!("com.docker.lb.ssl_cert={secure}-crt"),
        "--label",
        &format!("com.docker.lb.ssl_key={secure}-key"),
        "--label",
        "com.docker.lb.ssl_only=true",
        &image,
        "echo",
        "--name",
        "secure-replica",
    ])
    .await;
    let resolve = format!("{secure_host}:{}:127.0.0.1", https.port());
    let url = format!("https://{secure_host}:{}/", https.port());
    let ca_path = ca_file.display().to_string();
    wait_until(CONVERGE, "the HTTPS service to answer", || async {
        let r =
            portico_testkit::curl(&["-v", "--cacert", &ca_path, "--resolve", &resolve, &url]).await;
        r.status == 200
            && r.body.contains("replica: secure-replica")
            && r.stderr.contains(&format!("subject: CN={secure_host}"))
    })
    .await;
    // ssl_only: plain HTTP is redirected.
    let (code, headers, _) = client.get(&secure_host, "/x?y").await.unwrap();
    assert_eq!(code, 301);
    assert_eq!(
        headers["location"],
        format!("https://{secure_host}/x?y").as_str()
    );

    // Scale to 3: the third is used soon after it runs.
    d(&["service", "scale", "-d", &format!("{foo}=3")]).await;
    wait_until(CONVERGE, "a third task to run", || async {
        running_tasks(&foo) == 3
    })
    .await;
    let running_at = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the third replica to be routed",
        || async { replicas(&client, &foo_host, 6).await.len() == 3 },
    )
    .await;
    eprintln!(
        "scale-up: third replica routed {:?} after docker reported it running",
        running_at.elapsed()
    );

    // Rolling update under a request loop: no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let looping = {
        let (stop, failures, sent, client, host) = (
            stop.clone(),
            failures.clone(),
            sent.clone(),
            client.clone(),
            foo_host.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match client.get(&host, "/").await {
                    Ok((s, _, _)) if s == 200 => {}
                    Ok((s, _, body)) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{s}: {}", String::from_utf8_lossy(&body))),
                    Err(e) => failures.lock().unwrap().push(e),
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    d(&[
        "service",
        "update",
        "-q",
        "--env-add",
        "ROLLED=1",
        "--update-parallelism",
        "1",
        "--update-delay",
        "500ms",
        &foo,
    ])
    .await;
    wait_until(CONVERGE, "the update to finish", || async {
        dk::try_docker(&[
            "service",
            "inspect",
            "--format",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{else}}completed{{end}}",
            &foo,
        ])
        .is_ok_and(|s| s == "completed")
            && running_tasks(&foo) == 3
    })
    .await;
    wait_until(
        Duration::from_secs(10),
        "the new replicas to be routed",
        || async { replicas(&client, &foo_host, 6).await.len() == 3 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    looping.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    if !failures.is_empty() {
        show_slow_or_failed(&proxy);
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the rolling update: {:?}",
        failures.len(),
        sent.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)]
    );
    assert!(sent.load(Ordering::SeqCst) > 50);

    // backend_mode=vip routes to the service's virtual IP.
    let vip = dk::unique("pt-vip");
    let vip_host = format!("{vip}.test");
    cleanup.services.push(vip.clone());
    d(&[
        "service",
        "create",
        "-d",
        "--name",
        &vip,
        "--replicas",
        "2",
        "--network",
        &net,
        "--label",
        &format!("com.docker.lb.hosts={vip_host}"),
        "--label",
        "com.docker.lb.port=8080",
        "--label",
        "com.docker.lb.backend_mode=vip",
        &image,
        "echo",
    ])
    .await;
    let vip_addr = d(&["service", "inspect", "--format", &format!("{{{{range .Endpoint.VirtualIPs}}}}{{{{if eq .NetworkID \"{}\"}}}}{{{{.Addr}}}}{{{{end}}}}{{{{end}}}}", d(&["network", "inspect", "-f", "{{.Id}}", &net]).await), &vip]).await;
    let vip_ip = vip_addr.split('/').next().unwrap().to_owned();
    wait_until(CONVERGE, "the VIP service to be routed", || async {
        status(&client, &vip_host).await != 503
    })
    .await;
    let (vip_status, headers, body) = client.get(&vip_host, "/").await.unwrap();
    assert_eq!(
        headers["x-upstream-addr"].to_str().unwrap(),
        format!("{vip_ip}:8080")
    );
    // Swarm's VIPs are IPVS load balancers; a kernel without IPVS (as on
    // some sandboxes) can't carry the traffic, though Portico routes right.
    if Path::new("/proc/net/ip_vs").exists() {
        assert_eq!(vip_status, 200, "{}", String::from_utf8_lossy(&body));
    } else {
        eprintln!(
            "note: no IPVS in this kernel; the VIP answered {vip_status}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    // A label change moves the host.
    let moved = format!("moved-{vip}.test");
    d(&[
        "service",
        "update",
        "-d",
        "--label-add",
        &format!("com.docker.lb.hosts={moved}"),
        &vip,
    ])
    .await;
    wait_until(CONVERGE, "the host to move", || async {
        status(&client, &moved).await != 503 && status(&client, &vip_host).await == 503
    })
    .await;

    // A bad label on one service: reported, the service skipped, others unharmed.
    let bad = dk::unique("pt-bad");
    cleanup.services.push(bad.clone());
    d(&[
        "service",
        "create",
        "-d",
        "--name",
        &bad,
        "--network",
        &net,
        "--label",
        &format!("com.docker.lb.hosts={bad}.test"),
        "--label",
        "com.docker.lb.port=http",
        &image,
        "echo",
    ])
    .await;
    wait_until(CONVERGE, "the bad label to be reported", || async {
        logs(&proxy).lines().any(|l| {
            l.contains("msg=\"service skipped\"")
                && l.contains(&bad)
                && l.contains("label=com.docker.lb.port")
                && l.contains("is not a port")
        })
    })
    .await;
    assert_eq!(status(&client, &format!("{bad}.test")).await, 503);
    assert_eq!(status(&client, &foo_host).await, 200);

    // A crash-looping service is damped, while another's scale-up still applies at once.
    let crash = dk::unique("pt-crash");
    cleanup.services.push(crash.clone());
    d(&[
        "service",
        "create",
        "-d",
        "--name",
        &crash,
        "--replicas",
        "2",
        "--network",
        &net,
        "--restart-delay",
        "200ms",
        "--label",
        &format!("com.docker.lb.hosts={crash}.test"),
        "--label",
        "com.docker.lb.port=8080",
        &image,
        "echo",
        "--exit-after",
        "1500ms",
    ])
    .await;
    wait_until(CONVERGE, "the crash loop to be damped", || async {
        logs(&proxy).lines().any(|l| {
            l.contains("msg=\"service is restarting repeatedly; damping its updates\"")
                && l.contains(&crash)
        })
    })
    .await;
    let damped_lines = logs(&proxy)
        .lines()
        .filter(|l| l.contains("damping its updates"))
        .count();
    d(&["service", "scale", "-d", &format!("{foo}=4")]).await;
    wait_until(CONVERGE, "a fourth task of foo to run", || async {
        running_tasks(&foo) == 4
    })
    .await;
    let running_at = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "foo's fourth replica to be routed despite the crash loop",
        || async { replicas(&client, &foo_host, 8).await.len() == 4 },
    )
    .await;
    eprintln!(
        "scale-up during a crash loop: routed {:?} after docker reported it running",
        running_at.elapsed()
    );
    // Logged once, not on every restart.
    assert_eq!(damped_lines, 1);

    // Removing a service: 503.
    d(&["service", "rm", &foo]).await;
    wait_until(CONVERGE, "the removed service to answer 503", || async {
        status(&client, &foo_host).await == 503
    })
    .await;
    drop(cleanup);
}

/// GET `path` on `host` through Portico at `addr` by curl, with `headers`.
async fn curl_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[&str],
) -> portico_testkit::CurlResponse {
    let host = format!("Host: {host}");
    let url = format!("http://{addr}{path}");
    let mut args = vec!["-H", host.as_str()];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(&url);
    portico_testkit::curl(&args).await
}

/// A field of a `portico echo` answer (`replica`, `path`...), if present.
fn echoed<'a>(body: &'a str, field: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(": "))
}

/// Creates a service of `portico echo ARGS` on `net` with `labels`
/// (and `com.docker.lb.port=8080`), removed by `cleanup`.
async fn echo_service(
    cleanup: &mut Cleanup,
    image: &str,
    net: &str,
    name: &str,
    replicas: usize,
    labels: &[String],
    args: &[&str],
) {
    cleanup.services.push(name.to_owned());
    let replicas = replicas.to_string();
    let mut cmd = vec![
        "service",
        "create",
        "-d",
        "--name",
        name,
        "--replicas",
        &replicas,
        "--network",
        net,
        "--label",
        "com.docker.lb.port=8080",
    ];
    for l in labels {
        cmd.extend(["--label", l]);
    }
    cmd.extend([image, "echo"]);
    cmd.extend(args);
    d(&cmd).await;
}

/// Interlock's traffic labels on Swarm services, one service each, all
/// behind one Portico: context root with rewrite, sticky cookie, redirects,
/// default backend; and two services with bad values, skipped and reported
/// without disturbing the rest. (The file-provider equivalents, in more
/// detail, are in routing.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_services_carry_interlock_traffic_labels() {
    if !dk::available() {
        return;
    }
    let mut cleanup = Cleanup::default();
    let (image, net) = swarm_and_network(&mut cleanup).await;
    let (addr, proxy, _dir, _https) = start_portico(
        &mut cleanup,
        &image,
        "[proxy]\nhttp_listen = \"0.0.0.0:8080\"\n[docker]\npoll_interval = \"2s\"\n",
    )
    .await;
    let client = HttpClient::new(addr);
    let id = dk::unique("pt-lb");
    let unknown = format!("unknown-{id}.test");
    // No default backend yet: an unknown host is 503, as Interlock answers.
    assert_eq!(status(&client, &unknown).await, 503);

    let ctx = format!("{id}-ctx");
    let ctx_host = format!("{ctx}.test");
    echo_service(
        &mut cleanup,
        &image,
        &net,
        &ctx,
        1,
        &[
            format!("com.docker.lb.hosts={ctx_host}"),
            "com.docker.lb.context_root=/app".into(),
            "com.docker.lb.context_root_rewrite=true".into(),
        ],
        &[],
    )
    .await;
    let sticky = format!("{id}-sticky");
    let sticky_host = format!("{sticky}.test");
    echo_service(
        &mut cleanup,
        &image,
        &net,
        &sticky,
        3,
        &[
            format!("com.docker.lb.hosts={sticky_host}"),
            "com.docker.lb.sticky_session_cookie=sid".into(),
        ],
        &[],
    )
    .await;
    let redir = format!("{id}-redir");
    let (old_host, new_host) = (format!("old-{redir}.test"), format!("new-{redir}.test"));
    echo_service(
        &mut cleanup,
        &image,
        &net,
        &redir,
        1,
        &[
            format!("com.docker.lb.hosts={old_host},{new_host}"),
            format!("com.docker.lb.redirects=http://{old_host},http://{new_host}"),
        ],
        &["--name", "redir-replica"],
    )
    .await;
    let fallback = format!("{id}-fallback");
    let fallback_host = format!("{fallback}.test");
    echo_service(
        &mut cleanup,
        &image,
        &net,
        &fallback,
        1,
        &[
            format!("com.docker.lb.hosts={fallback_host}"),
            "com.docker.lb.default_backend=true".into(),
        ],
        &["--name", "fallback-replica"],
    )
    .await;
    // Two bad values: a context root without its leading slash, and a
    // redirect from a host the service does not serve.
    let bad_root = format!("{id}-badroot");
    echo_service(
        &mut cleanup,
        &image,
        &net,
        &bad_root,
        1,
        &[
            format!("com.docker.lb.hosts={bad_root}.test"),
            "com.docker.lb.context_root=app".into(),
        ],
        &[],
    )
    .await;
    let bad_redir = format!("{id}-badredir");
    echo_service(
        &mut cleanup,
        &image,
        &net,
        &bad_redir,
        1,
        &[
            format!("com.docker.lb.hosts={bad_redir}.test"),
            format!("com.docker.lb.redirects=http://elsewhere-{id}.test,http://{bad_redir}.test"),
        ],
        &[],
    )
    .await;

    wait_until(
        CONVERGE,
        "all three sticky replicas to be routed",
        || async { replicas(&client, &sticky_host, 6).await.len() == 3 },
    )
    .await;
    wait_until(CONVERGE, "the other services to be routed", || async {
        status(&client, &fallback_host).await == 200
            && status(&client, &new_host).await == 200
            && client
                .get(&ctx_host, "/app/")
                .await
                .is_ok_and(|(s, _, _)| s == 200)
    })
    .await;

    // 1. Context root with rewrite: the prefix is stripped; the bare
    // prefix is redirected to itself with a slash.
    let r = curl_get(addr, &ctx_host, "/app/x?q=1", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed(&r.body, "path"), Some("/x?q=1"), "{}", r.body);
    let r = curl_get(addr, &ctx_host, "/app", &[]).await;
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(r.header("location"), Some("/app/"), "{r:?}");
    let r = curl_get(addr, &ctx_host, "/app?q=1", &[]).await;
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(r.header("location"), Some("/app/?q=1"), "{r:?}");
    // Outside its context root the host has nothing: 404 naming the path.
    let r = curl_get(addr, &ctx_host, "/x", &[]).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("/app"), "{}", r.body);

    // 2. Sticky cookie: one session, one replica; sessions spread.
    let mut pinned = BTreeSet::new();
    for _ in 0..20 {
        let r = curl_get(addr, &sticky_host, "/", &["Cookie: other=1; sid=abc123"]).await;
        assert_eq!(r.status, 200, "{r:?}");
        pinned.insert(echoed(&r.body, "replica").unwrap().to_owned());
    }
    assert_eq!(pinned.len(), 1, "one session reached {pinned:?}");
    let mut spread: std::collections::BTreeMap<String, usize> = Default::default();
    for i in 0..30 {
        let cookie = format!("Cookie: sid=session-{i}");
        let r = curl_get(addr, &sticky_host, "/", &[&cookie]).await;
        assert_eq!(r.status, 200, "{r:?}");
        *spread
            .entry(echoed(&r.body, "replica").unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(spread.len() >= 2, "30 sessions on one replica: {spread:?}");

    // 3. Redirects: 302 to the target with path and query; the target is served.
    let r = curl_get(addr, &old_host, "/a?b=1", &[]).await;
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("http://{new_host}/a?b=1").as_str()),
        "{r:?}"
    );
    let r = curl_get(addr, &new_host, "/a?b=1", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed(&r.body, "replica"), Some("redir-replica"));
    assert_eq!(echoed(&r.body, "path"), Some("/a?b=1"));

    // 5. The bad labels: reported naming the service and the label, the
    // services skipped, the others unharmed (all routed above).
    for (service, label, problem) in [
        (
            &bad_root,
            "com.docker.lb.context_root",
            "must start with '/'",
        ),
        (
            &bad_redir,
            "com.docker.lb.redirects",
            "is not one of the service's hosts",
        ),
    ] {
        wait_until(
            Duration::from_secs(10),
            &format!("{service}'s bad {label} to be logged"),
            || async {
                logs(&proxy).lines().any(|l| {
                    l.contains("msg=\"service skipped\"")
                        && l.contains(&format!("service={service} "))
                        && l.contains(&format!("label={label} "))
                        && l.contains(problem)
                })
            },
        )
        .await;
    }
    // `portico check --docker` run where Portico runs (in its container,
    // on the overlay network; from the host, overlays are unreachable).
    let out = tokio::process::Command::new("docker")
        .args(["exec", &proxy, "/portico", "check", "--docker"])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    for (service, label, problem) in [
        (
            &bad_root,
            "com.docker.lb.context_root ",
            "must start with '/'",
        ),
        (
            &bad_redir,
            "com.docker.lb.redirects ",
            "is not one of the service's hosts",
        ),
    ] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{service} ")))
            .unwrap_or_else(|| panic!("no row for {service}:\n{table}"));
        assert!(
            row.contains(label) && row.contains("error") && row.contains(problem),
            "{row}"
        );
    }
    let routed = table.lines().next().unwrap();
    for s in [&ctx, &sticky, &redir, &fallback] {
        assert!(routed.contains(s.as_str()), "{s} not routed: {table}");
    }
    for s in [&bad_root, &bad_redir] {
        assert!(!routed.contains(s.as_str()), "{s} routed: {table}");
    }

    // 4. The default backend answers unknown hosts, and the hosts of the
    // skipped services (which are unknown too).
    for host in [
        unknown.clone(),
        format!("{bad_root}.test"),
        format!("{bad_redir}.test"),
    ] {
        let r = curl_get(addr, &host, "/x", &[]).await;
        assert_eq!(r.status, 200, "{host}: {r:?}");
        assert_eq!(echoed(&r.body, "replica"), Some("fallback-replica"));
        assert!(r.body.contains(&format!("  host: {host}\n")), "{}", r.body);
    }
    // Without it, unknown hosts are 503 again; the service keeps its own host.
    d(&[
        "service",
        "update",
        "-d",
        "--label-rm",
        "com.docker.lb.default_backend",
        &fallback,
    ])
    .await;
    wait_until(CONVERGE, "the default backend to go", || async {
        status(&client, &unknown).await == 503
    })
    .await;
    assert_eq!(status(&client, &format!("{bad_root}.test")).await, 503);
    assert_eq!(status(&client, &fallback_host).await, 200);
    drop(cleanup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_containers_on_a_bridge_network_route_from_the_host() {
    if !dk::available() {
        return;
    }
    let mut cleanup = Cleanup::default();
    let image = image(&mut cleanup);
    let net = dk::unique("pt-bridge");
    d(&["network", "create", "-d", "bridge", &net]).await;
    cleanup.networks.push(net.clone());
    let host = format!("{}.test", dk::unique("pt-plain"));
    let mut names = Vec::new();
    for i in 0..2 {
        let name = dk::unique(&format!("pt-plain{i}"));
        cleanup.containers.push(name.clone());
        d(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &net,
            "--label",
            &format!("com.docker.lb.hosts={host}"),
            "--label",
            "com.docker.lb.port=8080",
            &image,
            "echo",
            "--name",
            &name,
        ])
        .await;
        names.push(name);
    }
    // A mislabelled container beside them: skipped, reported, harmless.
    let typo = dk::unique("pt-typo");
    cleanup.containers.push(typo.clone());
    d(&[
        "run",
        "-d",
        "--name",
        &typo,
        "--network",
        &net,
        "--label",
        &format!("com.docker.lb.host=typo-{host}"),
        "--label",
        "com.docker.lb.port=8080",
        &image,
        "echo",
    ])
    .await;
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--docker"])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&typo))
        .unwrap_or_else(|| panic!("no row for {typo}:\n{table}"));
    assert!(
        row.contains("com.docker.lb.host ")
            && row.contains("error")
            && row.contains("did you mean com.docker.lb.hosts?"),
        "{row}"
    );
    assert!(table.lines().next().unwrap().contains(&names[0]), "{table}");

    // Portico on the host (not in a container) reaches local bridge networks.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portico.toml");
    std::fs::write(
        &config,
        "[proxy]\nhttp_listen = \"127.0.0.1:0\"\n[docker]\npoll_interval = \"2s\"\n",
    )
    .unwrap();
    let portico = portico_testkit::Portico::spawn(
        Path::new(BIN),
        &["run", "--config", config.to_str().unwrap()],
    );
    let addr = portico.listen_addr().await;
    let client = HttpClient::new(addr);
    wait_until(CONVERGE, "both containers to be routed", || async {
        replicas(&client, &host, 6).await == names.iter().cloned().collect()
    })
    .await;
    d(&["rm", "-f", &names[0]]).await;
    wait_until(
        CONVERGE,
        "the removed container to leave the pool",
        || async { replicas(&client, &host, 6).await == [names[1].clone()].into_iter().collect() },
    )
    .await;
    d(&["rm", "-f", &names[1]]).await;
    wait_until(CONVERGE, "the host to answer 503", || async {
        status(&client, &host).await == 503
    })
    .await;
}

/// The upstreams the admin API at `admin` lists for `host` (`None` when
/// it can't be read).
async fn routed_upstreams(admin: SocketAddr, token: &str, host: &str) -> Option<Vec<SocketAddr>> {
    let auth = format!("Authorization: Bearer {token}");
    let url = format!("http://{admin}/routes?host={host}");
    let r = portico_testkit::curl(&["-H", &auth, &url]).await;
    if r.status != 200 {
        return None;
    }
    let routes: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    let upstreams = routes["routes"].get(0)?["upstreams"].as_array()?;
    upstreams.iter().map(|u| u.as_str()?.parse().ok()).collect()
}

/// Issue 11, item 8: a vanished replica costs no one a connect timeout.
/// A task killed under a sequential request loop: once its container is
/// gone its address answers nothing (a connect there waits out the whole
/// 5 s connect timeout, or the proxy's hedge), and Swarm's task list says
/// running for a while longer. Portico takes the address out of its routes
/// on the engine's container event (`kill` with SIGKILL, else `die`), so
/// no request fails, none is slow, and the admin API stops listing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_task_costs_no_request_a_connect_timeout() {
    if !dk::available() {
        return;
    }
    let mut cleanup = Cleanup::default();
    let (image, net) = swarm_and_network(&mut cleanup).await;
    const TOKEN: &str = "kill-test-admin-token";
    // A long poll interval: the address must leave on the events (polls
    // come faster, every 250 ms, only while a replacement task is pending).
    let (addr, proxy, _dir, _https) = start_portico(
        &mut cleanup,
        &image,
        &format!(
            "[proxy]\nhttp_listen = \"0.0.0.0:8080\"\n\
             [admin]\nlisten = \"0.0.0.0:9000\"\ntoken = \"{TOKEN}\"\n\
             [docker]\npoll_interval = \"60s\"\n"
        ),
    )
    .await;
    let admin = dk::published(&proxy, 9000);
    let client = HttpClient::new(addr);
    let svc = dk::unique("pt-kill");
    let host = format!("{svc}.test");
    echo_service(
        &mut cleanup,
        &image,
        &net,
        &svc,
        3,
        &[format!("com.docker.lb.hosts={host}")],
        &[],
    )
    .await;
    wait_until(CONVERGE, "all three replicas to be routed", || async {
        replicas(&client, &host, 6).await.len() == 3
    })
    .await;

    // One task's container, and its address on the network.
    let containers = d(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.swarm.service.name={svc}"),
    ])
    .await;
    let victim = containers.lines().next().unwrap().to_owned();
    let ip = d(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        &victim,
    ])
    .await;
    let dead: SocketAddr = format!("{ip}:8080").parse().unwrap();
    let before = routed_upstreams(admin, TOKEN, &host).await.unwrap();
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.contains(&dead), "{dead} not in {before:?}");

    // Sequential requests, each timed, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let looping = {
        let (stop, client, host) = (stop.clone(), client.clone(), host.clone());
        tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                let outcome = match client.get(&host, "/").await {
                    Ok((s, _, _)) if s == 200 => Ok(()),
                    Ok((s, _, body)) => Err(format!("{s}: {}", String::from_utf8_lossy(&body))),
                    Err(e) => Err(e),
                };
                results.push((start, start.elapsed(), outcome));
            }
            results
        })
    };
    // Some requests before the kill, spread over all three.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    let kill = {
        let victim = victim.clone();
        tokio::spawn(async move {
            d(&["kill", &victim]).await;
            killed_at.elapsed()
        })
    };
    let dropped = loop {
        let now = routed_upstreams(admin, TOKEN, &host).await;
        if now.as_ref().is_some_and(|u| !u.contains(&dead)) {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "{dead} still routed 10 s after the kill: {now:?}"
        );
    };
    let signalled = kill.await.unwrap();
    // And a while after, as the replacement task starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let results = looping.await.unwrap();
    let after_kill: Vec<_> = results.iter().filter(|r| r.0 >= killed_at).collect();
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(at, took, r)| {
            let e = r.as_ref().err()?;
            Some(format!(
                "{e} ({took:?}, {:?} after the kill)",
                at.checked_duration_since(killed_at)
            ))
        })
        .collect();
    let slowest = results.iter().map(|r| r.1).max().unwrap_or_default();
    let slow: Vec<String> = results
        .iter()
        .filter(|r| r.1 > Duration::from_millis(200))
        .map(|(at, took, _)| {
            format!(
                "{took:?} at {:?} after the kill",
                at.checked_duration_since(killed_at)
            )
        })
        .collect();
    eprintln!(
        "docker kill returned after {signalled:?}; the dead address left the admin routes {dropped:?} after the kill; {} requests ({} after the kill), slowest {slowest:?}; over 200 ms: {slow:?}",
        results.len(),
        after_kill.len(),
    );
    if !failed.is_empty() || slowest > Duration::from_secs(1) {
        show_slow_or_failed(&proxy);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        slowest <= Duration::from_secs(1),
        "a request took {slowest:?}: {slow:?}"
    );
    assert!(
        after_kill.len() > 50,
        "{} requests after the kill",
        after_kill.len()
    );
    // The provider's activity, in /metrics and on the status page.
    let auth = format!("Authorization: Bearer {TOKEN}");
    let r = portico_testkit::curl(&["-H", &auth, &format!("http://{admin}/metrics")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let sample = |name: &str| -> f64 {
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in:\n{}", r.body))
            .parse()
            .unwrap()
    };
    assert!(
        sample("portico_docker_events_total") >= 1.0,
        "the kill's events"
    );
    assert!(sample("portico_docker_syncs_total") >= 2.0);
    assert_eq!(sample("portico_docker_connected"), 1.0);
    assert!(sample("portico_config_reloads_total{source=\"docker\",outcome=\"applied\"}") >= 1.0);
    let page = portico_testkit::curl(&["-H", &auth, &format!("http://{admin}/")]).await;
    assert!(page.body.contains("watching events"), "{}", page.body);
    drop(cleanup);
}

/// The README's figure: from a task reaching *running* (as `docker service
/// ps` reports it) to the first request routed to it, median of 10
/// scale-ups. A measurement, not a test: run it by hand with
/// `cargo nextest run -p portico --test docker --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand"]
async fn measure_time_from_running_to_routed() {
    if !dk::available() {
        return;
    }
    let mut cleanup = Cleanup::default();
    let (image, net) = swarm_and_network(&mut cleanup).await;
    let (addr, _proxy, _dir, _https) = start_portico(
        &mut cleanup,
        &image,
        "[proxy]\nhttp_listen = \"0.0.0.0:8080\"\naccess_log = false\n[docker]\n",
    )
    .await;
    let client = HttpClient::new(addr);
    let svc = dk::unique("pt-measure");
    let host = format!("{svc}.test");
    cleanup.services.push(svc.clone());
    d(&[
        "service",
        "create",
        "-d",
        "--name",
        &svc,
        "--replicas",
        "1",
        "--network",
        &net,
        "--label",
        &format!("com.docker.lb.hosts={host}"),
        "--label",
        "com.docker.lb.port=8080",
        &image,
        "echo",
    ])
    .await;
    wait_until(CONVERGE, "the first replica", || async {
        replica(&client, &host).await.is_some()
    })
    .await;
    let mut samples = Vec::new();
    for n in 2..=11 {
        let before = replicas(&client, &host, 2 * n).await;
        d(&["service", "scale", "-d", &format!("{svc}={n}")]).await;
        // Poll docker closely, then the proxy closely.
        wait_until(CONVERGE, "the new task to run", || async {
            running_tasks(&svc) == n
        })
        .await;
        let running_at = Instant::now();
        loop {
            let seen = replicas(&client, &host, 2 * n).await;
            if seen.len() == n && seen != before {
                break;
            }
            assert!(running_at.elapsed() < Duration::from_secs(10), "not routed");
        }
        samples.push(running_at.elapsed());
    }
    samples.sort();
    eprintln!(
        "running → routed over 10 scale-ups: median {:?}, min {:?}, max {:?}; all: {samples:?}",
        samples[4], samples[0], samples[9]
    );
}

/// The health and overload labels on a real Swarm service: Portico checks
/// its tasks as `portico.health.*` say. Every check fails here (the echo
/// answers 200, and the labels accept only 500), so both tasks are marked
/// unhealthy, which `/routes` shows with the reason; and since the whole
/// pool is down, requests still go to both (the pool is never emptied by
/// the proxy's judgement). A bad health label skips only its service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_services_carry_health_labels() {
    if !dk::available() {
        return;
    }
    let mut cleanup = Cleanup::default();
    let (image, net) = swarm_and_network(&mut cleanup).await;
    const TOKEN: &str = "health-test-admin-token";
    let (addr, proxy, _dir, _https) = start_portico(
        &mut cleanup,
        &image,
        &format!(
            "[proxy]\nhttp_listen = \"0.0.0.0:8080\"\n\
             [admin]\nlisten = \"0.0.0.0:9000\"\ntoken = \"{TOKEN}\"\n\
             [docker]\npoll_interval = \"2s\"\n"
        ),
    )
    .await;
    let admin = dk::published(&proxy, 9000);
    let client = HttpClient::new(addr);
    let svc = dk::unique("pt-health");
    let host = format!("{svc}.test");
    echo_service(
        &mut cleanup,
        &image,
        &net,
        &svc,
        2,
        &[
            format!("com.docker.lb.hosts={host}"),
            "portico.health.path=/healthz".into(),
            "portico.health.interval=500ms".into(),
            "portico.health.timeout=400ms".into(),
            "portico.health.unhealthy=2".into(),
            "portico.health.status=500".into(),
            "portico.max_requests=100".into(),
        ],
        &[],
    )
    .await;
    let bad = dk::unique("pt-badhealth");
    let bad_host = format!("{bad}.test");
    echo_service(
        &mut cleanup,
        &image,
        &net,
        &bad,
        1,
        &[
            format!("com.docker.lb.hosts={bad_host}"),
            "portico.health.path=healthz".into(),
        ],
        &[],
    )
    .await;
    let auth = format!("Authorization: Bearer {TOKEN}");
    let url = format!("http://{admin}/routes?host={host}");
    let states = || async {
        let r = portico_testkit::curl(&["-H", &auth, &url]).await;
        let routes: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let health = routes["routes"].get(0)?["health"].as_array()?.clone();
        Some(health)
    };
    wait_until(
        CONVERGE,
        "both tasks marked unhealthy by their checks",
        || async {
            states()
                .await
                .is_some_and(|h| h.len() == 2 && h.iter().all(|u| u["state"] == "unhealthy"))
        },
    )
    .await;
    let health = states().await.unwrap();
    let reason = health[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("/healthz") && reason.contains("status 200"),
        "{reason}"
    );
    // The whole pool is down by the proxy's judgement: both still serve.
    assert_eq!(replicas(&client, &host, 20).await.len(), 2);
    // The service with the bad label is skipped, and says why.
    assert_eq!(status(&client, &bad_host).await, 503);
    let out = tokio::process::Command::new("docker")
        .args(["exec", &proxy, "/portico", "check", "--docker"])
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&bad) && text.contains("portico.health.path"),
        "{text}"
    );
}

/// Who may claim a host (issue 15, item 9), on real Swarm services behind
/// one Portico whose `[docker] constraints` admit only services of a
/// stack other than `quarantine`: a `prod` service owns its host, and a
/// `prod` canary joins it; a service outside any stack and a `quarantine`
/// one naming the host are left out by the constraint (nothing to
/// report); a `dev` service naming it is refused, and `portico check
/// --docker` names both services. Throughout, only prod's replicas answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_and_host_ownership_keep_a_stacks_host_its_own() {
    if !dk::available() {
        return;
    }
    let mut cleanup = Cleanup::default();
    let (image, net) = swarm_and_network(&mut cleanup).await;
    let ns = "com.docker.stack.namespace";
    let constraint = format!(r#"has_label("{ns}") && label("{ns}") != "quarantine""#);
    let config = format!(
        "[proxy]\nhttp_listen = \"0.0.0.0:8080\"\n\
         [docker]\npoll_interval = \"2s\"\nconstraints = '{constraint}'\n"
    );
    let (addr, proxy, _dir, _https) = start_portico(&mut cleanup, &image, &config).await;
    let client = HttpClient::new(addr);
    let id = dk::unique("pt-own");
    let host = format!("{id}.test");
    let hosts = format!("com.docker.lb.hosts={host}");
    let prod = format!("{id}-prod");
    echo_service(
        &mut cleanup,
        &image,
        &net,
        &prod,
        1,
        &[hosts.clone(), format!("{ns}=prod")],
        &["--name", "prod-replica"],
    )
    .await;
    wait_until(CONVERGE, "the prod service to be routed", || async {
        replica(&client, &host).await.as_deref() == Some("prod-replica")
    })
    .await;

    // Claimants that came later: one of the same stack (a canary), and
    // three that must never get the host's traffic.
    let canary = format!("{id}-canary");
    let outsiders = [
        (format!("{id}-dev"), Some("dev")),
        (format!("{id}-loose"), None),
        (format!("{id}-quarantine"), Some("quarantine")),
    ];
    echo_service(
        &mut cleanup,
        &image,
        &net,
        &canary,
        1,
        &[hosts.clone(), format!("{ns}=prod")],
        &["--name", "prod-canary"],
    )
    .await;
    for (name, namespace) in &outsiders {
        let mut labels = vec![hosts.clone()];
        labels.extend(namespace.map(|n| format!("{ns}={n}")));
        echo_service(
            &mut cleanup,
            &image,
            &net,
            name,
            1,
            &labels,
            &["--name", "intruder"],
        )
        .await;
    }
    wait_until(CONVERGE, "every claimant's task to run", || async {
        let names: Vec<String> = outsiders.iter().map(|(n, _)| n.clone()).collect();
        tokio::task::spawn_blocking(move || names.iter().all(|n| running_tasks(n) == 1))
            .await
            .unwrap()
    })
    .await;
    wait_until(CONVERGE, "the prod canary to join the host", || async {
        replicas(&client, &host, 8).await.contains("prod-canary")
    })
    .await;
    // Every intruder's task runs: over the next few syncs (every 2 s, and
    // on each event), not one answer from an intruder.
    let until = Instant::now() + Duration::from_secs(5);
    let mut seen = BTreeSet::new();
    while Instant::now() < until {
        seen.extend(replicas(&client, &host, 10).await);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["prod-canary".to_owned(), "prod-replica".to_owned()])
    );

    let out = tokio::process::Command::new("docker")
        .args([
            "exec",
            &proxy,
            "/portico",
            "check",
            "--config",
            "/etc/portico/portico.toml",
            "--docker",
        ])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    // The config file's line first, then the engine's.
    let routed = table
        .lines()
        .find(|l| l.contains("service(s) routed:"))
        .unwrap_or_default();
    assert!(
        routed.starts_with("2 service(s) routed:")
            && routed.contains(&prod)
            && routed.contains(&canary),
        "{table}"
    );
    let dev = &outsiders[0].0;
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{dev} ")))
        .unwrap_or_else(|| panic!("no row for {dev}:\n{table}"));
    assert!(
        row.contains("com.docker.lb.hosts ")
            && row.contains("error")
            && row.contains(&format!(
                "host {host} belongs to service {prod} (stack namespace \"prod\"); this service's stack namespace is \"dev\""
            )),
        "{row}"
    );
    // Left out by the constraint: listed as not routed, not as problems.
    for (name, _) in &outsiders[1..] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("not routed: {name}: "))),
            "{name}:\n{table}"
        );
        assert!(
            !table.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name}:\n{table}"
        );
    }
    assert!(
        table.contains("1 problem(s): 1 error(s), 0 warning(s)"),
        "{table}"
    );
    drop(cleanup);
}
