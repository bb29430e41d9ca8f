//! The status page (`GET /` on the admin listener) in a real headless
//! browser (Debian's chromium): the DOM it builds shows the hosts, the
//! upstreams and their health, the recent errors and the config versions;
//! screenshots at laptop and phone sizes are left in the target directory
//! (`target/tmp/status-page*.png`) for a person to look at.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portico_testkit::{curl, dead_addr, wait_until, Backend, Portico};

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "status-page-token-0123456789";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portico"))
}

/// Debian's chromium, or `None` (then the test is skipped, unless
/// PORTICO_REQUIRE_CHROMIUM is set, as CI does).
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|b| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("PORTICO_REQUIRE_CHROMIUM").is_none(),
            "chromium is required (apt-get install chromium)"
        );
        eprintln!("chromium not installed: status page test skipped");
    }
    found
}

/// Runs headless chromium with `args` then `url`; returns its stdout.
async fn browse(browser: &str, args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(browser)
            .args([
                "--headless",
                // CI runs as root, where chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished within 60 s")
    .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is a PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[tokio::test]
async fn the_status_page_shows_routes_health_errors_and_versions() {
    let Some(browser) = chromium() else { return };
    let web1 = Backend::echo("web-1").await;
    let web2 = Backend::echo("web-2").await;
    let dead = dead_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    let config = |extra: &str| {
        format!(
            "[proxy]\nhttp_listen = \"127.0.0.1:0\"\nproxy_id = \"lb-status-1\"\n\
             outlier_consecutive_failures = 1\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n\
             [[service]]\nname = \"web\"\nhosts = [\"web.test\", \"*.web.test\"]\n\
             upstreams = [\"{}\", \"{}\"]\n\n\
             [[service]]\nname = \"api\"\nhosts = [\"shop.test\"]\ncontext_root = \"/api\"\n\
             upstreams = [\"{dead}\"]\nmax_ejected_percent = 100\n{extra}",
            web1.addr, web2.addr
        )
    };
    std::fs::write(&path, config("")).unwrap();
    let portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
    let admin = portico.admin_addr().await;
    let http = portico.listen_addr().await;

    for _ in 0..3 {
        let r = curl(&["-H", "Host: web.test", &format!("http://{http}/")]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    // The dead upstream: a 502, remembered as a recent error, and ejected.
    let r = curl(&["-H", "Host: shop.test", &format!("http://{http}/api/cart")]).await;
    assert_eq!(r.status, 502, "{r:?}");
    // A second version, so the history has a change to show.
    std::fs::write(
        &path,
        config("\n[[service]]\nname = \"blog\"\nhosts = [\"blog.test\"]\nupstreams = []\n"),
    )
    .unwrap();
    let bearer = format!("Authorization: Bearer {TOKEN}");
    wait_until(WAIT, "the second version", || {
        let bearer = bearer.clone();
        async move {
            let r = curl(&["-H", &bearer, &format!("http://{admin}/config/versions")]).await;
            r.body.matches("\"version\"").count() >= 2
        }
    })
    .await;

    // Without credentials: 401, with a challenge a browser answers.
    let r = curl(&[&format!("http://{admin}/")]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "www-authenticate" && v.starts_with("Basic")),
        "{r:?}"
    );
    // A browser's Basic credentials: any user, the token as password.
    let r = curl(&["-u", &format!("ops:{TOKEN}"), &format!("http://{admin}/")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        r.header("content-security-policy")
            .is_some_and(|c| c.contains("default-src 'none'")),
        "{r:?}"
    );

    // In the browser, with the credentials in the URL.
    let url = format!("http://ops:{TOKEN}@{admin}/");
    let dom = browse(browser, &["--dump-dom"], &url).await;
    for want in [
        "lb-status-1",
        "web.test",
        "*.web.test",
        "shop.test",
        "<code>/api</code>",
        &format!("data-upstream=\"{}\" data-state=\"", web1.addr),
        &format!("data-upstream=\"{}\" data-state=\"", web2.addr),
        &format!("data-upstream=\"{dead}\" data-state=\"ejected\""),
        "id=\"errors\"",
        "file",
        "blog",
    ] {
        assert!(dom.contains(want), "the page lacks {want:?}:\n{dom}");
    }
    let errors = &dom[dom.find("id=\"errors\"").unwrap()..];
    let errors = &errors[..errors.find("</table>").unwrap()];
    assert!(
        errors.contains("api") && errors.contains("502"),
        "recent errors: {errors}"
    );

    // Screenshots: a laptop and a phone.
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for (name, size) in [
        ("status-page.png", (1280, 900)),
        ("status-page-phone.png", (390, 844)),
    ] {
        let file = out_dir.join(name);
        let _ = std::fs::remove_file(&file);
        browse(
            browser,
            &[
                &format!("--screenshot={}", file.display()),
                &format!("--window-size={},{}", size.0, size.1),
            ],
            &url,
        )
        .await;
        let (w, h) = png_size(&file);
        assert!(w >= size.0 && h >= size.1 / 2, "{name}: {w}x{h}");
        eprintln!("screenshot: {}", file.display());
    }
}
