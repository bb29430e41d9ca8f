//! `portico controller init` and `portico controller token`: the cluster's
//! credentials, made once and kept as Docker secrets, so that a controller
//! started on any manager issues certificates the proxies already trust
//! (see `portico_cluster`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use portico_cluster::ca::{ClusterCa, CA_CERT_FILE, CA_KEY_FILE};
use portico_cluster::JoinToken;

/// The join token's file in the state directory.
pub const TOKEN_FILE: &str = "join-token";

#[derive(clap::Subcommand, Debug)]
pub enum ControllerCommand {
    /// Create the cluster CA and a join token in DIR (refuses to replace an existing CA).
    Init {
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
    /// Print the join token kept in DIR.
    Token {
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
    /// Run the controller: the config's providers (file, and Docker if
    /// `[docker]` is set), published to the proxies on `[controller] listen`.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

pub fn run(command: ControllerCommand) -> ExitCode {
    let done = match command {
        ControllerCommand::Init { state_dir } => init(&state_dir),
        ControllerCommand::Token { state_dir } => token(&state_dir),
        ControllerCommand::Run { .. } => unreachable!("run by main, in a runtime"),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portico controller: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init(dir: &Path) -> Result<(), String> {
    let token_path = dir.join(TOKEN_FILE);
    // Checked before the CA is made: a token without its CA, or a CA
    // whose token was lost, would leave a half-made cluster.
    if token_path.exists() {
        return Err(format!(
            "{} exists: this directory already holds a cluster's credentials (a new CA would lock out every proxy that joined)",
            token_path.display()
        ));
    }
    let ca = ClusterCa::init(dir).map_err(|e| e.to_string())?;
    let token = JoinToken::generate(*ca.digest()).map_err(|e| e.to_string())?;
    token.write_file(&token_path).map_err(|e| e.to_string())?;
    let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    println!(
        "cluster CA:  {} (key {}, mode 0600)",
        cert.display(),
        key.display()
    );
    println!("join token:  {} (mode 0600)", token_path.display());
    println!();
    println!("Keep them as Docker secrets, so any manager can run the controller:");
    println!("  docker secret create portico_ca_crt {}", cert.display());
    println!("  docker secret create portico_ca_key {}", key.display());
    println!(
        "  docker secret create portico_join_token {}",
        token_path.display()
    );
    Ok(())
}

fn token(dir: &Path) -> Result<(), String> {
    let path = dir.join(TOKEN_FILE);
    let token = JoinToken::read_file(&path).map_err(|e| e.to_string())?;
    // The token is checked against the CA it names: a state directory
    // mixed from two clusters would hand out a token no proxy can use.
    let ca = ClusterCa::load(dir).map_err(|e| e.to_string())?;
    if token.ca_digest() != ca.digest() {
        return Err(format!(
            "{} names another CA than {}: this directory mixes two clusters' files",
            path.display(),
            dir.join(CA_CERT_FILE).display()
        ));
    }
    println!("{}", token.encode());
    Ok(())
}
