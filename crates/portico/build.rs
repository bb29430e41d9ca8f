//! Bakes the server-info string (`portico/<version> (<git sha>) <os>/<arch>`)
//! into the binary, so `--version` and `x-server-info` agree and name the commit.

use std::process::Command;

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    println!("cargo:rerun-if-changed={root}/.git/HEAD");
    println!("cargo:rerun-if-changed={root}/.git/refs/heads");
    println!("cargo:rerun-if-env-changed=PORTICO_GIT_SHA");
    let sha = std::env::var("PORTICO_GIT_SHA").ok().or_else(|| {
        Command::new("git")
            .args(["-C", root, "rev-parse", "--short=7", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    });
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH")
        .unwrap_or_default()
        .as_str()
    {
        "x86_64" => "amd64".to_owned(),
        "aarch64" => "arm64".to_owned(),
        other => other.to_owned(),
    };
    println!(
        "cargo:rustc-env=PORTICO_SERVER_INFO=portico/{} ({}) {os}/{arch}",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
        sha.as_deref().unwrap_or("unknown"),
    );
}
