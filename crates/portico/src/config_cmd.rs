//! `portico config`: the versions a running proxy has applied, read through
//! its admin API, as `docker config ls` and `docker config inspect` show
//! Interlock's: `list`, `show [VERSION]`, `diff A B`, and `render --format
//! nginx [VERSION]`. Versions are named as the logs name them: the 6 hex
//! digits of `updatedVersion=`, the 12 of `version=`, the full digest, or
//! any unique prefix of at least 4.
//!
//! Exit status: 0 on success; 1 when the admin API cannot be reached,
//! refuses the token or names no such version or format (the message, on
//! stderr, says which and how to fix it); 2 on bad usage.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use portico_model::ConfigDiff;
use portico_trace::api::{AdminClient, AdminError, ConfigBody, VersionInfo};
use portico_trace::options::parse_admin;
use serde::Serialize;

#[derive(clap::Args)]
#[command(
    about = "The proxy's applied config versions: list, show, diff, render as nginx.conf",
    after_help = "Versions: the 6 hex digits of the logs' updatedVersion=, the 12 of version=, \
                  the full digest, or a unique prefix of at least 4.\n\
                  Exit status: 0 success, 1 the admin API failed or refused, 2 bad usage.\n\n\
                  Example: portico config diff e2b509 3edc6f --admin http://127.0.0.1:9090"
)]
pub struct ConfigArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    command: ConfigCommand,
}

/// How to reach a proxy's admin API: `portico trace`'s options, parsed by
/// the same function, and accepted before or after the subcommand.
#[derive(clap::Args)]
pub struct AdminArgs {
    /// The proxy's admin API, http://IP:PORT (its [admin] listen address).
    #[arg(long, value_name = "URL", value_parser = admin_addr, global = true)]
    admin: Option<SocketAddr>,
    /// Bearer token for the admin API.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PORTICO_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    admin_token: Option<String>,
    /// Bound on the admin API's answer, e.g. 2s or 500ms.
    #[arg(long, default_value = "10s", value_parser = duration, global = true)]
    timeout: Duration,
}

#[derive(clap::Subcommand)]
enum ConfigCommand {
    /// The versions the proxy keeps, newest first: when, from whose input, what changed.
    List {
        /// Print the admin API's JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One version's config and what changed from the version before it.
    Show {
        /// The version (default: the one in force).
        version: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// What changed from version A to version B, service by service.
    Diff {
        from: String,
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// A version (default: the one in force) as another proxy's config file.
    Render {
        /// The output's format: nginx.
        #[arg(long, value_name = "FORMAT")]
        format: String,
        version: Option<String>,
    },
}

fn admin_addr(s: &str) -> Result<SocketAddr, String> {
    parse_admin(s).map_err(|e| e.to_string())
}

fn duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be greater than zero".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(args: ConfigArgs) -> ExitCode {
    let Some(addr) = args.admin.admin else {
        eprintln!(
            "portico config: --admin http://IP:PORT is required: the proxy's [admin] listen address"
        );
        return ExitCode::from(2);
    };
    let client = AdminClient {
        addr,
        token: args.admin.admin_token.filter(|t| !t.is_empty()),
        timeout: args.admin.timeout,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portico config: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let printed = runtime.block_on(async {
        match args.command {
            ConfigCommand::List { json } => list(&client, json).await,
            ConfigCommand::Show { version, json } => show(&client, version, json).await,
            ConfigCommand::Diff { from, to, json } => diff(&client, &from, &to, json).await,
            ConfigCommand::Render { format, version } => client
                .config_render(&format, version.as_deref())
                .await
                .map(|text| print!("{text}")),
        }
    });
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portico config: {}", explain(&client, &e));
            ExitCode::FAILURE
        }
    }
}

/// What went wrong, and what to do about it.
fn explain(client: &AdminClient, e: &AdminError) -> String {
    match e {
        AdminError::Unreachable { addr, error } => format!(
            "cannot reach the admin API at {addr} ({error}): is portico running there? \
             It serves the admin API only when its config has an [admin] table \
             (listen = \"{addr}\")"
        ),
        AdminError::Unauthorized { addr } if client.token.is_some() => format!(
            "the admin API at {addr} refused the token (401): pass the [admin] token \
             with --admin-token TOKEN or PORTICO_ADMIN_TOKEN"
        ),
        AdminError::Unauthorized { addr } => format!(
            "the admin API at {addr} requires a token (401): pass the [admin] token \
             with --admin-token TOKEN or PORTICO_ADMIN_TOKEN"
        ),
        // The API's own message names the versions kept, or the formats.
        AdminError::Status { error, .. } => error.clone(),
        AdminError::Decode { addr, error } => format!(
            "the admin API at {addr} sent an unreadable answer ({error}): is it a Portico of \
             this version?"
        ),
    }
}

fn print_json<T: Serialize>(doc: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(doc).expect("admin documents serialise")
    );
}

/// `3edc6f0a1b2c  2026-11-26T10:00:47Z  docker`, for headings.
fn heading(v: &VersionInfo) -> String {
    format!(
        "{} (applied {}, from {}{})",
        v.version,
        v.applied,
        v.source,
        if v.current { ", in force" } else { "" }
    )
}

async fn list(client: &AdminClient, json: bool) -> Result<(), AdminError> {
    let doc = client.config_versions().await?;
    if json {
        print_json(&doc);
        return Ok(());
    }
    let width = doc
        .versions
        .iter()
        .map(|v| v.source.len())
        .max()
        .unwrap_or(0)
        .max("SOURCE".len());
    println!(
        "  {:<12}  {:<20}  {:<width$}  SUMMARY",
        "VERSION", "APPLIED", "SOURCE"
    );
    for v in &doc.versions {
        println!(
            "{} {:<12}  {:<20}  {:<width$}  {}",
            if v.current { '*' } else { ' ' },
            v.version,
            v.applied,
            v.source,
            v.summary
        );
    }
    println!(
        "{} version(s) kept of at most {}; * is in force",
        doc.versions.len(),
        doc.kept
    );
    Ok(())
}

async fn show(client: &AdminClient, version: Option<String>, json: bool) -> Result<(), AdminError> {
    let id = match version {
        Some(v) => v,
        None => client.config_versions().await?.current,
    };
    let doc = client.config_version::<ConfigDiff>(&id).await?;
    if json {
        print_json(&doc);
        return Ok(());
    }
    println!("version {}", heading(&doc.info));
    println!("summary: {}", doc.info.summary);
    match (&doc.previous, &doc.diff_text) {
        (Some(previous), Some(text)) => {
            println!("\nchanges from {previous}:");
            for line in text.lines() {
                println!("  {line}");
            }
        }
        _ => println!("\nthe first version this proxy applied"),
    }
    println!("\nconfig:");
    print!("{}", as_toml(&doc.config));
    Ok(())
}

async fn diff(client: &AdminClient, from: &str, to: &str, json: bool) -> Result<(), AdminError> {
    let doc = client.config_diff::<ConfigDiff>(from, to).await?;
    if json {
        print_json(&doc);
        return Ok(());
    }
    println!("from {}", heading(&doc.from));
    println!("to   {}", heading(&doc.to));
    println!();
    print!("{}", doc.text);
    Ok(())
}

/// The config in the file's own shape (`[proxy]`, `[admin]`,
/// `[[service]]`), for a person: unset keys left out, and for services
/// also `false` and empty lists, which are the defaults.
fn as_toml(config: &ConfigBody) -> String {
    let mut out = String::new();
    let table =
        |out: &mut String, value: serde_json::Value, first: &[&str], skip_defaults: bool| {
            let serde_json::Value::Object(map) = value else {
                return;
            };
            let keys = first
                .iter()
                .map(|k| (*k).to_owned())
                .chain(map.keys().filter(|k| !first.contains(&k.as_str())).cloned());
            for key in keys {
                let Some(v) = map.get(&key) else { continue };
                let default = match v {
                    serde_json::Value::Null => true,
                    serde_json::Value::Bool(false) => skip_defaults,
                    serde_json::Value::Array(a) => skip_defaults && a.is_empty(),
                    _ => false,
                };
                if !default {
                    out.push_str(&format!("{key} = {}\n", toml_value(v)));
                }
            }
        };
    out.push_str("[proxy]\n");
    table(
        &mut out,
        serde_json::to_value(&config.proxy).unwrap_or_default(),
        &["http_listen", "https_listen"],
        false,
    );
    if let Some(admin) = &config.admin {
        out.push_str("\n[admin]\n");
        table(
            &mut out,
            serde_json::to_value(admin).unwrap_or_default(),
            &["listen"],
            false,
        );
    }
    for s in &config.services {
        out.push_str("\n[[service]]\n");
        table(
            &mut out,
            serde_json::to_value(s).unwrap_or_default(),
            &["name", "hosts", "upstreams"],
            true,
        );
    }
    out
}

/// A JSON value written as TOML would write it (JSON's string escapes are
/// TOML's too).
fn toml_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        serde_json::Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_trace::api::{ProxyConfig, RedirectConfig, ServiceConfig};

    #[test]
    fn configs_show_in_the_files_shape() {
        let proxy = ProxyConfig {
            http_listen: "127.0.0.1:8080".parse().unwrap(),
            proxy_id: None,
            hide_info_headers: false,
            access_log: true,
            access_log_format: "interlock".into(),
            connect_timeout: "5s".into(),
            upstream_timeout: "1m".into(),
            client_header_timeout: "30s".into(),
            shutdown_grace: "30s".into(),
            max_client_connections: None,
            max_connections_per_upstream: 1024,
            idle_connections_per_upstream: 128,
            max_header_bytes: 65536,
            tunnel_idle_timeout: "10m".into(),
            client_body_timeout: "1m".into(),
            client_send_timeout: "1m".into(),
            client_body_min_rate: "1KiB/s".into(),
            client_body_grace: "10s".into(),
            max_bodies_per_client: 100,
            https_listen: None,
            default_tls_cert: None,
            default_tls_key: None,
            default_tls_ocsp: None,
            https_redirect_port: 443,
            max_body_size: None,
            trusted_proxies: vec![],
            http_proxy_protocol: false,
            https_proxy_protocol: false,
            outlier_consecutive_failures: 5,
            outlier_base_ejection_time: "10s".into(),
            outlier_max_ejection_time: "5m".into(),
            max_ejected_percent: 50,
            retry_budget_percent: 20,
            retry_budget_min_per_second: 3,
            hedge_delay: "200ms".into(),
            probe_interval: "off".into(),
            health_concurrency: 64,
            tls_profile: "intermediate".into(),
        };
        let service = ServiceConfig {
            name: "web".into(),
            hosts: vec!["web.test".into()],
            upstreams: vec!["10.0.0.1:80".parse().unwrap()],
            upstream_protocol: "http1".into(),
            balance: "round_robin".into(),
            context_root: Some("/app".into()),
            redirects: vec![RedirectConfig {
                from: "http://a.test".into(),
                to: "https://b.test".into(),
            }],
            ..ServiceConfig::default()
        };
        let text = as_toml(&ConfigBody {
            proxy,
            admin: None,
            services: vec![service],
        });
        assert!(
            text.starts_with("[proxy]\nhttp_listen = \"127.0.0.1:8080\"\n"),
            "{text}"
        );
        assert!(text.contains("\nhide_info_headers = false\n"), "{text}");
        assert!(
            !text.contains("proxy_id"),
            "unset keys are left out: {text}"
        );
        assert!(
            text.contains("\n[[service]]\nname = \"web\"\nhosts = [\"web.test\"]\nupstreams = [\"10.0.0.1:80\"]\n"),
            "{text}"
        );
        assert!(text.contains("\ncontext_root = \"/app\"\n"), "{text}");
        assert!(
            text.contains(
                "\nredirects = [{ from = \"http://a.test\", to = \"https://b.test\" }]\n"
            ),
            "{text}"
        );
        assert!(!text.contains("ssl_only"), "defaults are left out: {text}");
    }
}
