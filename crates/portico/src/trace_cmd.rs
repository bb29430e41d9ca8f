//! `portico trace`: the command line over `portico_trace`. Exit 0 when every
//! checked hop passes, 1 when one fails, 2 on bad usage (clap's own errors
//! exit 2 too).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use portico_trace::options::{parse_addr, parse_admin, parse_admin_url};
use portico_trace::{Options, Resolve, Target};

#[derive(clap::Args)]
#[command(
    about = "Check each hop to a service, innermost first, and name the first that fails",
    after_help = "Hops, innermost first: route and upstream (needs --admin, or a controller's \
                  proxy), version (each proxy's config version, with --controller-admin), proxy \
                  (each --proxy and each proxy the controller lists, with a crafted Host and SNI; \
                  those it lists as departed are shown, not tried), \
                  lb (each --lb), dns, client (the request by name).\n\
                  Exit status: 0 every checked hop passed, 1 a hop failed, 2 bad usage.\n\n\
                  Example: portico trace http://foo.app.test:8080/ --admin http://127.0.0.1:9090 \\\n\
                  \x20   --proxy 10.0.0.5:8080 --lb 10.0.0.2:80 --dns 10.0.0.53\n\
                  In a cluster: portico trace http://foo.app.test/ --controller-admin \
                  http://10.0.0.1:9090 --admin-token-file /run/secrets/admin-token \\\n\
                  \x20   --proxy-admin-token-file /run/secrets/proxy-admin-token\n\
                  The --admin-token(-file) token goes only to --controller-admin and --admin; \
                  the admin APIs the proxies announce get the --proxy-admin-token-file token, \
                  or none."
)]
pub struct TraceArgs {
    /// The host name or URL to trace: foo.app.test, http://foo.app.test:8080/path, https://…
    #[arg(value_name = "HOST_OR_URL")]
    target: String,
    /// A proxy node, asked directly with the crafted Host (repeatable).
    #[arg(long = "proxy", value_name = "IP:PORT", value_parser = proxy_addr)]
    proxies: Vec<SocketAddr>,
    /// An address of the external load balancer (repeatable).
    #[arg(long = "lb", value_name = "IP:PORT", value_parser = lb_addr)]
    lbs: Vec<SocketAddr>,
    /// Use ADDRESS for HOST:PORT instead of DNS, as curl's --resolve.
    #[arg(long, value_name = "HOST:PORT:ADDRESS", value_parser = resolve)]
    resolve: Vec<Resolve>,
    /// Ask this DNS server (IP[:PORT], default port 53) instead of the system resolver.
    #[arg(long, value_name = "SERVER", value_parser = dns_addr)]
    dns: Option<SocketAddr>,
    /// The proxy's admin API, http://IP:PORT: enables the route and upstream hops.
    #[arg(long, value_name = "URL", value_parser = admin_addr)]
    admin: Option<SocketAddr>,
    /// A cluster's controller's admin API, http://IP:PORT: checks every
    /// proxy it lists, and which serve the published version.
    #[arg(long, value_name = "URL", value_parser = controller_admin_addr)]
    controller_admin: Option<SocketAddr>,
    /// Bearer token for --admin and --controller-admin (never sent to the
    /// admin APIs the proxies announce).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PORTICO_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Read the admin token from FILE (e.g. a Docker secret) instead: a
    /// token on the command line shows in `ps`.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// With --controller-admin and no --admin: the token (in FILE) for the
    /// admin APIs its proxies announce, asked for the route and upstream
    /// hops. Without it they are asked without a token, and skipped if
    /// they require one.
    #[arg(long, value_name = "FILE")]
    proxy_admin_token_file: Option<PathBuf>,
    /// Request path (default: the URL's, else /).
    #[arg(long)]
    path: Option<String>,
    /// Use HTTPS (SNI = host) at every hop; implied by an https:// URL.
    #[arg(long)]
    https: bool,
    /// Verify certificates against the CA(s) in FILE (PEM) instead of the system's.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Bound on each hop, e.g. 2s or 500ms.
    #[arg(long, default_value = "5s", value_parser = duration)]
    timeout: Duration,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn proxy_addr(s: &str) -> Result<SocketAddr, String> {
    parse_addr("--proxy", s, None).map_err(|e| e.to_string())
}

fn lb_addr(s: &str) -> Result<SocketAddr, String> {
    parse_addr("--lb", s, None).map_err(|e| e.to_string())
}

fn dns_addr(s: &str) -> Result<SocketAddr, String> {
    parse_addr("--dns", s, Some(53)).map_err(|e| e.to_string())
}

fn admin_addr(s: &str) -> Result<SocketAddr, String> {
    parse_admin(s).map_err(|e| e.to_string())
}

fn controller_admin_addr(s: &str) -> Result<SocketAddr, String> {
    parse_admin_url("--controller-admin", s).map_err(|e| e.to_string())
}

fn resolve(s: &str) -> Result<Resolve, String> {
    s.parse()
        .map_err(|e: portico_trace::UsageError| e.to_string())
}

fn duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be greater than zero".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("portico trace: {e}");
    ExitCode::from(2)
}

pub fn run(args: TraceArgs) -> ExitCode {
    let target = match Target::parse(&args.target, args.https, args.path.as_deref()) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    if args.cacert.is_some() && !target.https {
        return usage("--cacert needs --https or an https:// URL");
    }
    let mut opts = match Options::new(target, args.cacert) {
        Ok(o) => o,
        Err(e) => return usage(e),
    };
    opts.proxies = args.proxies;
    opts.lbs = args.lbs;
    opts.resolve = args.resolve;
    opts.dns = args.dns;
    opts.admin = args.admin;
    opts.controller_admin = args.controller_admin;
    opts.admin_token = args.admin_token;
    if let Some(path) = &args.admin_token_file {
        match std::fs::read_to_string(path) {
            Ok(token) => opts.admin_token = Some(token.trim().to_owned()),
            Err(e) => return usage(format!("--admin-token-file {}: {e}", path.display())),
        }
    }
    if let Some(path) = &args.proxy_admin_token_file {
        match std::fs::read_to_string(path) {
            Ok(token) => opts.proxy_admin_token = Some(token.trim().to_owned()),
            Err(e) => return usage(format!("--proxy-admin-token-file {}: {e}", path.display())),
        }
    }
    opts.timeout = args.timeout;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portico trace: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = runtime.block_on(portico_trace::trace(&opts));
    // A system DNS lookup that outlived its timeout still holds a blocking
    // thread; don't wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render());
    }
    ExitCode::from(report.exit_code())
}
