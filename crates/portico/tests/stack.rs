//! The stack files in `deploy/`, deployed as a user would (`docker stack
//! deploy`) on this machine's single-node swarm, with an image built `FROM
//! scratch` from this workspace's binary (issue 13, items 7 and 8): each
//! routes a labelled service through its host-mode port, and a redeploy
//! with an edited config rolls the proxy (stop-first: no task left
//! Pending, the old proxy drained) and routing goes on with the new
//! config. The shipped config files are used as they are, except for what
//! must differ on a shared machine (unique names, a free port).
//! Everything created is removed at the end, failed or not.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portico_testkit::docker::{self as dk, Cleanup};
use portico_testkit::{curl, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_portico");
const CONVERGE: Duration = Duration::from_secs(90);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// `docker ARGS` with `env`, off the async workers; stdout, or stderr as
/// the error.
async fn docker_env(args: &[&str], env: &[(&str, String)]) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("docker")
            .args(&args)
            .envs(env)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    })
    .await
    .unwrap()
}

async fn d(args: &[&str]) -> String {
    docker_env(args, &[])
        .await
        .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
}

/// What the service's tasks logged (Portico logs to stderr, which `docker
/// service logs` passes on as its own).
async fn logs(service: &str) -> String {
    let service = service.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("docker")
            .args(["service", "logs", "--raw", &service])
            .output()
            .unwrap();
        let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
        all.push_str(&String::from_utf8_lossy(&out.stderr));
        all
    })
    .await
    .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `portico echo` service on `network`, routed for `host` by labels.
async fn echo_service(cleanup: &mut Cleanup, image: &str, network: &str, host: &str) -> String {
    let name = dk::unique("pst-app");
    cleanup.services.push(name.clone());
    d(&[
        "service",
        "create",
        "--detach",
        "--name",
        &name,
        "--network",
        network,
        "--label",
        &format!("com.docker.lb.hosts={host}"),
        "--label",
        "com.docker.lb.port=8080",
        image,
        "echo",
        "--listen",
        "0.0.0.0:8080",
    ])
    .await;
    name
}

/// The status and `x-proxy-id` of a request for `host` at `addr`.
async fn get(addr: SocketAddr, host: &str) -> (u16, String) {
    let r = curl(&["-H", &format!("Host: {host}"), &format!("http://{addr}/")]).await;
    (
        r.status,
        r.header("x-proxy-id").unwrap_or_default().to_owned(),
    )
}

/// Each task of `service` as `DESIRED CURRENT`.
async fn tasks(service: &str) -> Vec<String> {
    d(&[
        "service",
        "ps",
        service,
        "--format",
        "{{.DesiredState}} {{.CurrentState}}",
    ])
    .await
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Waits for the service's update (after a redeploy) to complete: its
/// update status says so and one task runs, none is pending.
async fn wait_for_update(service: &str) {
    wait_until(
        CONVERGE,
        &format!("the update of {service} to complete"),
        || async {
            let state = d(&[
                "service",
                "inspect",
                service,
                "--format",
                "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
            ])
            .await;
            let tasks = tasks(service).await;
            state == "completed"
                && tasks
                    .iter()
                    .filter(|t| t.starts_with("Running Running"))
                    .count()
                    == 1
                && !tasks.iter().any(|t| t.contains("Pending"))
        },
    )
    .await;
}

/// Waits until the service's one running task says healthy.
async fn wait_healthy(service: &str) {
    wait_until(
        CONVERGE,
        &format!("{service}'s task to be healthy"),
        || async {
            let id = d(&[
                "ps",
                "-q",
                "--filter",
                &format!("label=com.docker.swarm.service.name={service}"),
                "--filter",
                "health=healthy",
            ])
            .await;
            !id.is_empty()
        },
    )
    .await;
}

/// The shipped file `name` with `line` added after its `[proxy]` header.
fn with_proxy_line(name: &str, line: &str) -> String {
    let text = std::fs::read_to_string(deploy_dir().join(name)).unwrap();
    text.replacen("[proxy]\n", &format!("[proxy]\n{line}\n"), 1)
}

fn swarm(cleanup: &mut Cleanup) -> String {
    if let Err(e) = cleanup.ensure_swarm() {
        panic!("no swarm: {e}");
    }
    let image = format!("{}:test", dk::unique("portico-stack"));
    dk::build_image(Path::new(BIN), &image);
    cleanup.images.push(image.clone());
    image
}

#[tokio::test]
async fn all_in_one_stack_routes_and_rolls_an_edited_config() {
    if !dk::available() {
        return;
    }
    let mut cleanup = Cleanup::default();
    let image = swarm(&mut cleanup);
    let apps = dk::unique("pst-apps");
    d(&["network", "create", "-d", "overlay", "--attachable", &apps]).await;
    cleanup.networks.push(apps.clone());
    let app = echo_service(&mut cleanup, &image, &apps, "app.stack.test").await;

    let stack = dk::unique("pst");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let file = deploy_dir().join("portico-stack.yml");
    let work = tempfile::tempdir().unwrap();
    let deploy = |version: &'static str, config: Option<PathBuf>| {
        let mut env = vec![
            ("PORTICO_IMAGE", image.clone()),
            ("PORTICO_HTTP_PORT", port.to_string()),
            ("PORTICO_CONFIG_VERSION", format!("{stack}-{version}")),
        ];
        if let Some(c) = config {
            env.push(("PORTICO_CONFIG_FILE", c.display().to_string()));
        }
        let (file, stack) = (file.display().to_string(), stack.clone());
        async move {
            docker_env(
                &[
                    "stack",
                    "deploy",
                    "--detach=true",
                    "--resolve-image",
                    "never",
                    "-c",
                    &file,
                    &stack,
                ],
                &env,
            )
            .await
            .unwrap_or_else(|e| panic!("docker stack deploy: {e}"))
        }
    };
    cleanup.stacks.push(stack.clone());
    for v in ["1", "2"] {
        cleanup.configs.push(format!("portico_toml_{stack}-{v}"));
    }
    let service = format!("{stack}_portico");

    // As shipped: deploy/portico.toml, HTTPS off, /healthz for the balancer.
    deploy("1", None).await;
    wait_until(CONVERGE, "the stack to route app.stack.test", || async {
        get(addr, "app.stack.test").await.0 == 200
    })
    .await;
    let health = curl(&[&format!("http://{addr}/healthz")]).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    wait_healthy(&service).await;

    // `portico check --docker` where the README says to run it, in the
    // proxy's task: the service is reachable there. On the host it is not
    // (an overlay network), and the command says where to run it instead.
    let task = d(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ])
    .await;
    let inside = docker_env(
        &[
            "exec",
            task.lines().next().unwrap(),
            "/portico",
            "check",
            "--docker",
            "--config",
            "/etc/portico/portico.toml",
        ],
        &[],
    )
    .await;
    let inside = inside.unwrap_or_else(|e| panic!("check --docker in the task failed: {e}"));
    assert!(
        inside.contains(&app) && !inside.contains("note:"),
        "{inside}"
    );
    let outside = std::process::Command::new(BIN)
        .args(["check", "--docker"])
        .env_remove("HOSTNAME")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&outside.stdout);
    assert!(!outside.status.success(), "{said}");
    assert!(
        said.contains(&app)
            && said.contains("note: this check ran outside Portico's container")
            && said.contains("docker exec"),
        "{said}"
    );

    // An edited config is a new config object: the redeploy rolls the
    // proxy, stop-first, and the new one serves the new settings.
    let edited = work.path().join("portico.toml");
    std::fs::write(
        &edited,
        with_proxy_line("portico.toml", "proxy_id = \"edited\""),
    )
    .unwrap();
    deploy("2", Some(edited)).await;
    wait_for_update(&service).await;
    wait_until(CONVERGE, "the edited config to serve", || async {
        get(addr, "app.stack.test").await == (200, "edited".to_owned())
    })
    .await;
    wait_healthy(&service).await;
    let logs = logs(&service).await;
    assert!(
        logs.contains("draining: the health URI answers 503") && logs.contains("drain_delay=10s"),
        "the old proxy drained:\n{logs}"
    );
}

/// The node's `portico.lb` label, removed when the test ends.
struct NodeLabel(String);

impl NodeLabel {
    fn add() -> NodeLabel {
        let node = dk::docker(&["info", "--format", "{{.Swarm.NodeID}}"]);
        dk::docker(&["node", "update", "--label-add", "portico.lb=true", &node]);
        NodeLabel(node)
    }
}

impl Drop for NodeLabel {
    fn drop(&mut self) {
        let _ = dk::try_docker(&["node", "update", "--label-rm", "portico.lb", &self.0]);
    }
}

#[tokio::test]
async fn cluster_stack_routes_reports_stray_networks_and_rolls_the_proxies() {
    if !dk::available() {
        return;
    }
    let mut cleanup = Cleanup::default();
    let image = swarm(&mut cleanup);
    let _label = NodeLabel::add();
    let apps = dk::unique("pcs-apps");
    let other = dk::unique("pcs-other");
    for n in [&apps, &other] {
        d(&["network", "create", "-d", "overlay", "--attachable", n]).await;
        cleanup.networks.push(n.clone());
    }
    echo_service(&mut cleanup, &image, &apps, "app.cluster.test").await;
    let stray = echo_service(&mut cleanup, &image, &other, "stray.cluster.test").await;

    // The cluster's credentials, as the README says: init, then secrets.
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("cluster");
    let init = std::process::Command::new(BIN)
        .args(["controller", "init", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let prefix = dk::unique("pcs");
    for (name, file) in [
        ("ca_crt", "ca.crt"),
        ("ca_key", "ca.key"),
        ("join_token", "join-token"),
    ] {
        let secret = format!("{prefix}_{name}");
        cleanup.secrets.push(secret.clone());
        d(&[
            "secret",
            "create",
            &secret,
            &state.join(file).display().to_string(),
        ])
        .await;
    }
    let controller_toml = work.path().join("controller.toml");
    let shipped = std::fs::read_to_string(deploy_dir().join("controller.toml")).unwrap();
    std::fs::write(
        &controller_toml,
        shipped.replace("[\"portico_apps\"]", &format!("[\"{apps}\"]")),
    )
    .unwrap();

    let stack = dk::unique("pcs");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let file = deploy_dir().join("portico-cluster-stack.yml");
    let deploy = |version: &'static str, proxy_config: Option<PathBuf>| {
        let mut env = vec![
            ("PORTICO_IMAGE", image.clone()),
            ("PORTICO_HTTP_PORT", port.to_string()),
            ("PORTICO_SECRETS", prefix.clone()),
            ("PORTICO_APPS_NETWORK", apps.clone()),
            ("PORTICO_CONTROLLER_CONFIG_VERSION", format!("{stack}-1")),
            (
                "PORTICO_CONTROLLER_CONFIG_FILE",
                controller_toml.display().to_string(),
            ),
            ("PORTICO_PROXY_CONFIG_VERSION", format!("{stack}-{version}")),
        ];
        if let Some(c) = proxy_config {
            env.push(("PORTICO_PROXY_CONFIG_FILE", c.display().to_string()));
        }
        let (file, stack) = (file.display().to_string(), stack.clone());
        async move {
            docker_env(
                &[
                    "stack",
                    "deploy",
                    "--detach=true",
                    "--resolve-image",
                    "never",
                    "-c",
                    &file,
                    &stack,
                ],
                &env,
            )
            .await
            .unwrap_or_else(|e| panic!("docker stack deploy: {e}"))
        }
    };
    cleanup.stacks.push(stack.clone());
    cleanup
        .configs
        .push(format!("portico_controller_toml_{stack}-1"));
    for v in ["1", "2"] {
        cleanup
            .configs
            .push(format!("portico_proxy_toml_{stack}-{v}"));
    }
    let (controller, proxy) = (format!("{stack}_controller"), format!("{stack}_proxy"));

    deploy("1", None).await;
    wait_until(CONVERGE, "the proxy to route app.cluster.test", || async {
        get(addr, "app.cluster.test").await.0 == 200
    })
    .await;
    // The stray service shares no network with the proxies: the
    // controller says why and what to do, and it is not routed.
    wait_until(
        CONVERGE,
        "the controller to report the stray service",
        || async {
            let logs = logs(&controller).await;
            logs.lines().any(|l| {
                l.contains("service skipped")
                    && l.contains(&stray)
                    && l.contains(&format!("no proxy is on network \\\"{other}\\\""))
                    && l.contains("add it to the proxy service's networks")
            })
        },
    )
    .await;
    assert_eq!(get(addr, "stray.cluster.test").await.0, 503);
    wait_healthy(&proxy).await;

    let edited = work.path().join("proxy.toml");
    std::fs::write(
        &edited,
        with_proxy_line("proxy.toml", "proxy_id = \"edited\""),
    )
    .unwrap();
    deploy("2", Some(edited)).await;
    wait_for_update(&proxy).await;
    wait_until(CONVERGE, "the rolled proxy to serve", || async {
        get(addr, "app.cluster.test").await == (200, "edited".to_owned())
    })
    .await;
    let logs = logs(&proxy).await;
    assert!(
        logs.contains("draining: the health URI answers 503"),
        "the old proxy drained:\n{logs}"
    );
}
