//! `portico config render --format nginx` checked by real nginx: a config
//! with several hosts, a wildcard, path routes, a context root with its
//! rewrite, a redirect, an HTTPS host with `ssl_only`, a sticky cookie and
//! `ip_hash` is served by Portico and asked a set of requests; its
//! rendering passes `nginx -t`; then nginx runs it on the same addresses
//! (the config names free ports, so nothing is rewritten but nginx's temp
//! paths) in front of the same backends, is asked the same requests, and
//! must decide each one alike: the same replicas, status, redirect target,
//! path seen upstream and Interlock headers.
//!
//! Without nginx the test is skipped with a note, unless
//! `PORTICO_REQUIRE_NGINX=1` (as `.ci/run` sets), when it fails.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portico_testkit::process::parse_logfmt;
use portico_testkit::{curl, Backend, CurlResponse, Echo, Portico, TestCa};

const WAIT: Duration = Duration::from_secs(15);
/// Requests per case: enough for round robin to show both replicas, and
/// for a hash to show it keeps to one.
const TRIES: usize = 6;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portico"))
}

/// The nginx binary, or why the test cannot run.
fn nginx() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
        .ok_or_else(|| "nginx is not installed (apt-get install nginx)".to_owned())
}

/// A port nothing listens on now, for the config to name: nginx must bind
/// the very addresses Portico did, so they cannot be 0.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx as a child process, stopped (and its workers with it) when
/// dropped, whether the test passed or not.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nginx.stderr")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM is a fast shutdown of master and workers; KILL on the master
        // alone would leave its workers holding the ports.
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a proxy decided for one request, over `TRIES` of it.
#[derive(Debug, PartialEq, Eq)]
struct Decision {
    /// curl could talk HTTP with it (false: e.g. the TLS handshake failed).
    answered: bool,
    status: BTreeSet<u16>,
    /// The replicas that answered; with a hash, "one of N" instead.
    replicas: BTreeSet<String>,
    /// The request target each replica saw.
    paths: BTreeSet<String>,
    location: BTreeSet<String>,
    proxy_id: BTreeSet<String>,
    server_info: BTreeSet<String>,
    hsts: BTreeSet<String>,
    /// Every answer carried a 32-hex x-request-id.
    request_ids: bool,
}

struct Case {
    what: &'static str,
    https: bool,
    host: &'static str,
    target: &'static str,
    headers: &'static [&'static str],
    /// The pool picks by a hash: which replica may differ between the two
    /// proxies (rendezvous against nginx's ketama), not that it is one.
    hashed: bool,
}

const fn case(what: &'static str, host: &'static str, target: &'static str) -> Case {
    Case {
        what,
        https: false,
        host,
        target,
        headers: &[],
        hashed: false,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("round robin over an exact host's replicas", "foo.test", "/"),
        case("a wildcard host", "a.wild.test", "/x"),
        case("a wildcard, two labels down", "b.a.wild.test", "/"),
        case("an exact name beats the wildcard", "exact.wild.test", "/"),
        case("a path route", "app.test", "/api"),
        case("a path route, below it", "app.test", "/api/v1?q=1"),
        case(
            "a path route on segment boundaries only",
            "app.test",
            "/apix",
        ),
        case("the host's catch-all", "app.test", "/"),
        Case {
            headers: &["-H", "Cookie: other=1; sid=abc123"],
            hashed: true,
            ..case("a sticky cookie keeps to one replica", "app.test", "/")
        },
        Case {
            hashed: true,
            ..case("ip_hash keeps a client to one replica", "iphash.test", "/")
        },
        case(
            "a context root's bare prefix: 301 to prefix/",
            "ctx.test",
            "/app",
        ),
        case("the 301 keeps the query", "ctx.test", "/app?x=1"),
        case("the rewrite strips the prefix", "ctx.test", "/app/x?y=1"),
        case("the rewrite of the prefix itself", "ctx.test", "/app/"),
        case("a host's other paths: 404", "ctx.test", "/other"),
        case(
            "a redirect, with path and query",
            "old.test",
            "/some/path?q=1",
        ),
        case("an unknown host: 503", "unknown.test", "/"),
        case("ssl_only: 301 to HTTPS", "secure.test", "/p?q=1"),
        Case {
            https: true,
            ..case("an HTTPS site by SNI", "secure.test", "/s")
        },
        Case {
            https: true,
            ..case("an unknown SNI: no handshake", "unknown.test", "/")
        },
    ]
}

/// The test's world: backends, certificates, the config.
struct World {
    dir: tempfile::TempDir,
    ca: PathBuf,
    http: SocketAddr,
    https: SocketAddr,
    pools: Vec<(&'static str, Vec<Backend>)>,
    config: PathBuf,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let test_ca = TestCa::new("Portico nginx-render CA");
    let ca = test_ca.write(dir.path());
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    test_ca
        .issue(&["secure.test"])
        .write(&dir.path().join("certs"), "secure");
    let mut pools = Vec::new();
    for (pool, n) in [
        ("foo", 2),
        ("wild", 1),
        ("exact", 1),
        ("api", 1),
        ("web", 2),
        ("iph", 2),
        ("ctx", 1),
        ("sec", 1),
    ] {
        let mut backends = Vec::new();
        for i in 1..=n {
            backends.push(Backend::echo(&format!("{pool}-{i}")).await);
        }
        pools.push((pool, backends));
    }
    let ups = |pool: &str| -> String {
        let (_, backends) = pools.iter().find(|(p, _)| *p == pool).unwrap();
        let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
        format!("[{}]", list.join(", "))
    };
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let https: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let text = format!(
        "[proxy]\nhttp_listen = \"{http}\"\nhttps_listen = \"{https}\"\nhttps_redirect_port = {}\n\
         proxy_id = \"lb-render\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[service]]\nname = \"foo\"\nhosts = [\"foo.test\"]\nupstreams = {}\n\n\
         [[service]]\nname = \"wild\"\nhosts = [\"*.wild.test\"]\nupstreams = {}\n\n\
         [[service]]\nname = \"exact\"\nhosts = [\"exact.wild.test\"]\nupstreams = {}\n\n\
         [[service]]\nname = \"api\"\nhosts = [\"app.test\"]\nupstreams = {}\ncontext_root = \"/api\"\n\n\
         [[service]]\nname = \"web\"\nhosts = [\"app.test\"]\nupstreams = {}\nsticky_session_cookie = \"sid\"\n\n\
         [[service]]\nname = \"iph\"\nhosts = [\"iphash.test\"]\nupstreams = {}\nip_hash = true\n\n\
         [[service]]\nname = \"ctx\"\nhosts = [\"ctx.test\"]\nupstreams = {}\n\
         context_root = \"/app/\"\ncontext_root_rewrite = true\n\n\
         [[service]]\nname = \"mover\"\nhosts = [\"old.test\"]\nupstreams = []\n\
         redirects = [{{ from = \"http://old.test\", to = \"https://new.test\" }}]\n\n\
         [[service]]\nname = \"sec\"\nhosts = [\"secure.test\"]\nupstreams = {}\n\
         tls_cert = \"certs/secure.crt\"\ntls_key = \"certs/secure.key\"\nssl_only = true\nhsts_max_age = \"1d\"\n",
        https.port(),
        ups("foo"),
        ups("wild"),
        ups("exact"),
        ups("api"),
        ups("web"),
        ups("iph"),
        ups("ctx"),
        ups("sec"),
    );
    let config = dir.path().join("portico.toml");
    std::fs::write(&config, text).unwrap();
    World {
        dir,
        ca,
        http,
        https,
        pools,
        config,
    }
}

async fn ask(w: &World, c: &Case) -> Decision {
    let mut d = Decision {
        answered: true,
        status: BTreeSet::new(),
        replicas: BTreeSet::new(),
        paths: BTreeSet::new(),
        location: BTreeSet::new(),
        proxy_id: BTreeSet::new(),
        server_info: BTreeSet::new(),
        hsts: BTreeSet::new(),
        request_ids: true,
    };
    for _ in 0..TRIES {
        let r: CurlResponse = if c.https {
            let port = w.https.port();
            let resolve = format!("{}:{port}:127.0.0.1", c.host);
            let url = format!("https://{}:{port}{}", c.host, c.target);
            let mut args = vec!["--cacert", w.ca.to_str().unwrap(), "--resolve", &resolve];
            args.extend(c.headers);
            args.push(&url);
            curl(&args).await
        } else {
            let host = format!("Host: {}", c.host);
            let url = format!("http://{}{}", w.http, c.target);
            let mut args = vec!["-H", host.as_str()];
            args.extend(c.headers);
            args.push(&url);
            curl(&args).await
        };
        if r.exit != 0 || r.status == 0 {
            d.answered = false;
            continue;
        }
        d.status.insert(r.status);
        d.request_ids &= r
            .header("x-request-id")
            .is_some_and(portico_testkit::is_hex32);
        for (set, name) in [
            (&mut d.location, "location"),
            (&mut d.proxy_id, "x-proxy-id"),
            (&mut d.server_info, "x-server-info"),
            (&mut d.hsts, "strict-transport-security"),
        ] {
            if let Some(v) = r.header(name) {
                set.insert(v.to_owned());
            }
        }
        if r.status == 200 {
            let echo: Echo = serde_json::from_str(&r.body)
                .unwrap_or_else(|e| panic!("{}: not an echo ({e}): {r:?}", c.what));
            d.replicas.insert(echo.replica);
            d.paths.insert(echo.path);
        }
    }
    if c.hashed && !d.replicas.is_empty() {
        let pool = d
            .replicas
            .iter()
            .next()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_owned();
        let size = w
            .pools
            .iter()
            .find(|(p, _)| *p == pool)
            .map_or(0, |(_, b)| b.len());
        d.replicas = [format!("{} of {pool}'s {size}", d.replicas.len())].into();
    }
    d
}

async fn ask_all(w: &World) -> Vec<Decision> {
    let mut out = Vec::new();
    for c in cases() {
        out.push(ask(w, &c).await);
    }
    out
}

/// Waits until something accepts on `addr` (bounded); panics with `log()`.
async fn wait_listening(addr: SocketAddr, child: &mut Child, log: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "nginx exited ({status}) before listening on {addr}\n{}",
                log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not listen on {addr} within {WAIT:?}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_routes_the_rendered_config_as_portico_does() {
    let nginx_bin = match nginx() {
        Ok(p) => p,
        Err(why) if std::env::var("PORTICO_REQUIRE_NGINX").as_deref() == Ok("1") => {
            panic!("PORTICO_REQUIRE_NGINX=1, but {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why} (set PORTICO_REQUIRE_NGINX=1 to make this a failure)");
            return;
        }
    };
    let w = world().await;

    // Portico: serve, answer, render.
    let mut portico = Portico::spawn(bin(), &["run", "--config", w.config.to_str().unwrap()]);
    let line = portico
        .wait_for_line(|l| l.contains(r#"msg="starting admin server""#), WAIT)
        .await;
    let admin = parse_logfmt(&line)["listen"].clone();
    portico
        .wait_for_line(|l| l.contains(r#"msg="starting HTTPS server""#), WAIT)
        .await;
    let by_portico = ask_all(&w).await;
    let render = tokio::process::Command::new(bin())
        .args(["config", "render", "--format", "nginx", "--admin", &admin])
        .env_remove("PORTICO_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(
        render.status.success(),
        "{}",
        String::from_utf8_lossy(&render.stderr)
    );
    let rendered = String::from_utf8(render.stdout).unwrap();
    // Free the addresses for nginx.
    portico.signal("TERM");
    assert!(portico.wait_exit(WAIT).await.success());

    // The seed's `grep -A4 foo.app.domain.com` shows the upstream, its
    // zone, the server_name and the proxy_pass: so does this one.
    let lines: Vec<&str> = rendered.lines().collect();
    let grep: BTreeSet<&str> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("foo.test"))
        .flat_map(|(i, _)| lines[i..(i + 5).min(lines.len())].iter().copied())
        .collect();
    for line in [
        "    upstream up-foo.test {",
        "        zone up-foo.test_backend 64k;",
        "        server_name foo.test;",
        "            proxy_pass http://up-foo.test;",
    ] {
        assert!(
            grep.contains(line),
            "{line:?} in grep -A4 foo.test:\n{grep:#?}"
        );
    }
    assert!(
        rendered.contains("        server_name *.wild.test;\n"),
        "{rendered}"
    );
    assert!(
        rendered.contains("        hash $cookie_sid consistent;\n"),
        "{rendered}"
    );
    assert!(rendered.contains("        ip_hash;\n"), "{rendered}");
    assert!(
        rendered.contains("        return 302 \"https://new.test$request_uri\";\n"),
        "{rendered}"
    );
    let cert = w.dir.path().join("certs/secure.crt");
    assert!(
        rendered.contains(&format!("        ssl_certificate {};\n", cert.display())),
        "relative paths are made absolute: {rendered}"
    );

    // nginx: the rendering as it is, plus temp paths of its own.
    let nginx_dir = w.dir.path().join("nginx");
    std::fs::create_dir(&nginx_dir).unwrap();
    let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("    {t}_temp_path {};\n", nginx_dir.join(t).display()))
        .collect();
    let conf_text = rendered.replacen("http {\n", &format!("http {{\n{temp_paths}"), 1);
    let conf = nginx_dir.join("nginx.conf");
    std::fs::write(&conf, &conf_text).unwrap();
    // nginx's workers drop root; they must reach the temp paths.
    for d in [w.dir.path(), nginx_dir.as_path()] {
        let mut perm = std::fs::metadata(d).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(d, perm).unwrap();
    }
    let pid = nginx_dir.join("nginx.pid");
    let globals = format!("pid {};", pid.display());
    let check = Command::new(&nginx_bin)
        .args(["-t", "-e", "stderr", "-p"])
        .arg(&nginx_dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", &globals])
        .output()
        .unwrap();
    let check_log = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(
        check.status.success(),
        "nginx -t refused the rendering:\n{check_log}\n{conf_text}"
    );
    assert!(check_log.contains("test is successful"), "{check_log}");

    let stderr = std::fs::File::create(nginx_dir.join("nginx.stderr")).unwrap();
    let stdout = std::fs::File::create(nginx_dir.join("nginx.stdout")).unwrap();
    let child = Command::new(&nginx_bin)
        .args(["-e", "stderr", "-p"])
        .arg(&nginx_dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", &format!("daemon off; {globals}")])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut nginx = Nginx {
        child,
        dir: nginx_dir.clone(),
    };
    let log_dir = nginx_dir.clone();
    let log = move || std::fs::read_to_string(log_dir.join("nginx.stderr")).unwrap_or_default();
    wait_listening(w.http, &mut nginx.child, &log).await;
    wait_listening(w.https, &mut nginx.child, &log).await;
    let by_nginx = ask_all(&w).await;

    let mut differ = Vec::new();
    for ((c, p), n) in cases().iter().zip(&by_portico).zip(&by_nginx) {
        if p != n {
            differ.push(format!(
                "{} ({}{}{}):\n  portico: {p:?}\n  nginx:   {n:?}",
                c.what,
                if c.https { "https://" } else { "http://" },
                c.host,
                c.target
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "nginx decided {} of {} requests differently:\n{}\n--- nginx log ---\n{}",
        differ.len(),
        by_portico.len(),
        differ.join("\n"),
        nginx.log()
    );

    // And the decisions are the ones the config asks for (so that two
    // proxies agreeing on a mistake would not pass).
    let expect = |what: &str| {
        let i = cases().iter().position(|c| c.what == what).unwrap();
        &by_portico[i]
    };
    let set =
        |items: &[&str]| -> BTreeSet<String> { items.iter().map(|s| (*s).to_owned()).collect() };
    assert_eq!(
        expect("round robin over an exact host's replicas").replicas,
        set(&["foo-1", "foo-2"])
    );
    assert_eq!(
        expect("a wildcard, two labels down").replicas,
        set(&["wild-1"])
    );
    assert_eq!(
        expect("an exact name beats the wildcard").replicas,
        set(&["exact-1"])
    );
    assert_eq!(
        expect("a path route, below it").paths,
        set(&["/api/v1?q=1"])
    );
    assert_eq!(
        expect("a path route on segment boundaries only").replicas,
        set(&["web-1", "web-2"])
    );
    assert_eq!(
        expect("a sticky cookie keeps to one replica").replicas,
        set(&["1 of web's 2"])
    );
    assert_eq!(
        expect("ip_hash keeps a client to one replica").replicas,
        set(&["1 of iph's 2"])
    );
    let bare = expect("a context root's bare prefix: 301 to prefix/");
    assert_eq!(
        (&bare.status, &bare.location),
        (&BTreeSet::from([301]), &set(&["/app/"]))
    );
    assert_eq!(
        expect("the 301 keeps the query").location,
        set(&["/app/?x=1"])
    );
    assert_eq!(
        expect("the rewrite strips the prefix").paths,
        set(&["/x?y=1"])
    );
    assert_eq!(
        expect("a host's other paths: 404").status,
        BTreeSet::from([404])
    );
    let moved = expect("a redirect, with path and query");
    assert_eq!(
        (&moved.status, &moved.location),
        (
            &BTreeSet::from([302]),
            &set(&["https://new.test/some/path?q=1"])
        )
    );
    assert_eq!(expect("an unknown host: 503").status, BTreeSet::from([503]));
    assert_eq!(
        expect("ssl_only: 301 to HTTPS").location,
        set(&[&format!("https://secure.test:{}/p?q=1", w.https.port())])
    );
    let secure = expect("an HTTPS site by SNI");
    assert_eq!(secure.replicas, set(&["sec-1"]));
    assert_eq!(secure.hsts, set(&["max-age=86400"]));
    assert!(!expect("an unknown SNI: no handshake").answered);
    // nginx itself answered: its access log (the rendered log_format) has
    // each request to foo.test.
    let access = std::fs::read_to_string(nginx_dir.join("nginx.stdout")).unwrap();
    assert_eq!(
        access
            .lines()
            .filter(|l| l.contains(r#"msg="request""#) && l.contains(" host=foo.test "))
            .count(),
        TRIES,
        "{access}"
    );
    for (c, d) in cases().iter().zip(&by_portico) {
        if d.answered {
            assert!(d.request_ids, "{}: {d:?}", c.what);
            assert_eq!(d.proxy_id, set(&["lb-render"]), "{}", c.what);
        }
    }
    drop(nginx);
}
