//! Docker helpers for tests against the real engine: an image of our own
//! binary built `FROM scratch` (no registry is needed or used), uniquely
//! named objects, and a guard that removes everything a test created, even
//! when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Whether a Docker engine is usable. Without one, tests skip, unless
/// `PORTICO_REQUIRE_DOCKER=1` (as CI sets), which makes that a failure.
pub fn available() -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("PORTICO_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "PORTICO_REQUIRE_DOCKER=1 but no Docker engine is reachable"
        );
        eprintln!(
            "skipping: no Docker engine (set PORTICO_REQUIRE_DOCKER=1 to make this a failure)"
        );
    }
    ok
}

/// Runs `docker ARGS`, returning stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Like [`docker`], but returns failures instead of panicking.
pub fn try_docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:04x}", std::process::id(), fastrand_u16())
}

fn fastrand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
}

/// Builds `tag` from `binary` `FROM scratch`: the binary plus the shared
/// libraries `ldd` names (a statically linked release binary needs none).
pub fn build_image(binary: &Path, tag: &str) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(binary, ctx.path().join("portico")).unwrap();
    let ldd = Command::new("ldd").arg(binary).output().expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|p| p.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            let dest = ctx.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(p, &dest).unwrap();
        }
    }
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY . /\nENTRYPOINT [\"/portico\"]\n",
    )
    .unwrap();
    docker(&["build", "-q", "-t", tag, &ctx.path().display().to_string()]);
}

/// Removes what a test created when dropped, in dependency order; and
/// leaves the swarm if the test had to create it.
#[derive(Default)]
pub struct Cleanup {
    /// Removed first (`docker stack rm`), and waited for until their
    /// containers and networks are gone; then their volumes.
    pub stacks: Vec<String>,
    pub services: Vec<String>,
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub configs: Vec<String>,
    pub secrets: Vec<String>,
    pub images: Vec<String>,
    pub left_swarm_on_drop: bool,
    /// The swarm's docker_gwbridge network was made by `ensure_swarm`.
    pub remove_gwbridge_on_drop: bool,
    /// Taken by `ensure_swarm`, released after everything is removed.
    swarm_lock: Option<std::fs::File>,
}

/// One swarm test at a time on this machine, across processes: nextest's
/// test group serialises one run, but two runs (two people, or `cargo
/// test`'s threads) on one engine tear down each other's swarm (`swarm
/// leave --force` by whichever made it), and a Portico under test with the
/// socket attaches itself to the other run's networks, which then cannot
/// be removed. An flock, so a run that dies releases it.
fn swarm_lock() -> Result<std::fs::File, String> {
    let path = std::env::temp_dir().join("portico-docker-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // `flock N` locks the open file behind its descriptor N, here its
    // stdin, which is ours: the lock outlives the command until `file`
    // is closed (std has File::lock only from Rust 1.89, above our MSRV).
    let flock = |args: &[&str]| -> Result<bool, String> {
        let stdin = file.try_clone().map_err(|e| e.to_string())?;
        Command::new("flock")
            .args(args)
            .stdin(stdin)
            .status()
            .map(|s| s.success())
            .map_err(|e| format!("flock: {e}"))
    };
    if flock(&["-x", "-n", "0"])? {
        return Ok(file);
    }
    eprintln!(
        "waiting for another Docker test run to finish (it holds {})",
        path.display()
    );
    if flock(&["-x", "-w", "900", "0"])? {
        Ok(file)
    } else {
        Err(format!(
            "another Docker test run held {} for 15 minutes",
            path.display()
        ))
    }
}

impl Cleanup {
    /// Makes sure the engine is a swarm manager; remembers to leave the
    /// swarm afterwards if it wasn't one. Waits first for any other
    /// process's swarm test to finish (see `swarm_lock`).
    pub fn ensure_swarm(&mut self) -> Result<(), String> {
        if self.swarm_lock.is_none() {
            self.swarm_lock = Some(swarm_lock()?);
        }
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        if state == "active" {
            return Ok(());
        }
        // `swarm init` also creates the docker_gwbridge network, which
        // `swarm leave` keeps: removed afterwards unless it was there.
        self.remove_gwbridge_on_drop =
            try_docker(&["network", "inspect", "docker_gwbridge"]).is_err();
        // Swarm needs a non-loopback address to advertise: the bridge's.
        try_docker(&["swarm", "init", "--advertise-addr", "docker0"])?;
        self.left_swarm_on_drop = true;
        Ok(())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for stack in &self.stacks {
            let _ = try_docker(&["stack", "rm", stack]);
        }
        for stack in &self.stacks {
            let label = format!("label=com.docker.stack.namespace={stack}");
            for _ in 0..300 {
                let containers = try_docker(&["ps", "-aq", "--filter", &label]).unwrap_or_default();
                let networks =
                    try_docker(&["network", "ls", "-q", "--filter", &label]).unwrap_or_default();
                if containers.is_empty() && networks.is_empty() {
                    // Named volumes outlive `stack rm`; their containers are gone now.
                    let volumes =
                        try_docker(&["volume", "ls", "-q", "--filter", &label]).unwrap_or_default();
                    for v in volumes.lines() {
                        let _ = try_docker(&["volume", "rm", v]);
                    }
                    break;
                }
                if containers.is_empty() {
                    // `stack rm` gives up on a network its tasks still held.
                    for n in networks.lines() {
                        let _ = try_docker(&["network", "rm", n]);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for s in &self.services {
            let _ = try_docker(&["service", "rm", s]);
        }
        for c in &self.containers {
            let _ = try_docker(&["rm", "-f", c]);
        }
        // Task containers of removed services linger for a moment and hold
        // the network; wait for them before removing networks.
        for s in &self.services {
            for _ in 0..100 {
                let left = try_docker(&[
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=com.docker.swarm.service.name={s}"),
                ])
                .unwrap_or_default();
                if left.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for c in &self.configs {
            let _ = try_docker(&["config", "rm", c]);
        }
        for s in &self.secrets {
            let _ = try_docker(&["secret", "rm", s]);
        }
        for n in &self.networks {
            for _ in 0..50 {
                if try_docker(&["network", "rm", n]).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for i in &self.images {
            let _ = try_docker(&["rmi", "-f", i]);
        }
        if self.left_swarm_on_drop {
            let _ = try_docker(&["swarm", "leave", "--force"]);
        }
        if self.remove_gwbridge_on_drop {
            let _ = try_docker(&["network", "rm", "docker_gwbridge"]);
        }
    }
}

/// The host address a container port is published on (`docker port`).
pub fn published(container: &str, port: u16) -> std::net::SocketAddr {
    let out = docker(&["port", container, &format!("{port}/tcp")]);
    out.lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no published address for {container}:{port}: {out}"))
}

/// A directory for a config file to mount into a container.
pub fn config_dir(toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, toml).unwrap();
    (dir, path)
}
