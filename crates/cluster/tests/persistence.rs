//! What `portico controller init` leaves behind, and what a controller
//! started elsewhere from those files (Docker secrets) makes of it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use common::{connect, join, read_line, Controller, CONTROLLER_NAMES};
use portico_cluster::ca::{CA_CERT_FILE, CA_KEY_FILE};
use portico_cluster::tls::{self, Peer};
use portico_cluster::{CaError, ClusterCa, JoinToken, ProxyId};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// What `init` does: the CA into the state directory, a token beside it.
fn init(dir: &Path) -> (ClusterCa, JoinToken) {
    let ca = ClusterCa::init(dir).unwrap();
    let token = JoinToken::generate(*ca.digest()).unwrap();
    token.write_file(&dir.join("join-token")).unwrap();
    (ca, token)
}

#[test]
fn init_then_a_fresh_load_gives_the_same_ca_and_private_files_are_0600() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (ca, token) = init(&state);

    assert_eq!(mode(&state.join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&state.join("join-token")), 0o600);
    assert_eq!(mode(&state.join(CA_CERT_FILE)), 0o644);
    // A directory init created holds keys: its owner's only.
    assert_eq!(mode(&state), 0o700);

    // Another process: nothing shared but the files.
    let loaded = ClusterCa::load(&state).unwrap();
    assert_eq!(loaded.digest(), ca.digest());
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    let read = JoinToken::read_file(&state.join("join-token")).unwrap();
    assert_eq!(read.ca_digest(), loaded.digest());
    assert!(read.secret_matches(token.secret()));
    assert_eq!(read.encode(), token.encode());
}

#[test]
fn init_refuses_to_replace_an_existing_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = init(dir.path());
    let err = ClusterCa::init(dir.path()).unwrap_err();
    assert!(matches!(err, CaError::AlreadyInitialised { .. }), "{err}");
    assert_eq!(ClusterCa::load(dir.path()).unwrap().digest(), ca.digest());
}

#[test]
fn loading_names_the_files_and_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let err = ClusterCa::load(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains(CA_CERT_FILE),
        "a missing file is named: {err}"
    );
    init(dir.path());
    fs::write(dir.path().join(CA_KEY_FILE), "not a key").unwrap();
    let err = ClusterCa::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains(CA_KEY_FILE) && err.contains("CA key"), "{err}");
}

/// The controller rescheduled to another manager: it has only the secrets
/// (mounted under other names, as Docker does), a new server certificate,
/// and proxies that joined its predecessor must still trust it and be
/// trusted by it.
#[tokio::test]
async fn a_controller_started_elsewhere_from_the_secrets_is_trusted_by_proxies_that_joined_before()
{
    let dir = tempfile::tempdir().unwrap();
    let (ca, token) = init(&dir.path().join("state"));
    let first = Controller::start(Arc::new(ca), token.clone()).await;
    let joined = join(first.addr, &token, "lb-1").await;
    drop(first);

    let secrets = dir.path().join("run-secrets");
    fs::create_dir(&secrets).unwrap();
    for (from, to) in [
        ("state/ca.crt", "portico_ca_crt"),
        ("state/ca.key", "portico_ca_key"),
        ("state/join-token", "portico_join_token"),
    ] {
        fs::copy(dir.path().join(from), secrets.join(to)).unwrap();
    }
    let ca = ClusterCa::load_files(
        &secrets.join("portico_ca_crt"),
        &secrets.join("portico_ca_key"),
    )
    .unwrap();
    let token = JoinToken::read_file(&secrets.join("portico_join_token")).unwrap();
    let mut second = Controller::start(Arc::new(ca), token.clone()).await;

    // The proxy that joined before: verified, by its id.
    let mut tls = connect(
        second.addr,
        joined.client_config().unwrap(),
        CONTROLLER_NAMES[0],
    )
    .await
    .unwrap();
    assert_eq!(read_line(&mut tls).await.unwrap(), "hello lb-1");
    assert_eq!(
        second.next_outcome().await,
        Ok(Peer::Proxy(ProxyId::new("lb-1").unwrap()))
    );
    // A new proxy joins with the same token.
    let config = tls::first_contact_client_config(*token.ca_digest()).unwrap();
    drop(
        connect(second.addr, config, CONTROLLER_NAMES[0])
            .await
            .unwrap(),
    );
    assert_eq!(second.next_outcome().await, Ok(Peer::Anonymous));
    let newcomer = join(second.addr, &token, "lb-2").await;
    assert_eq!(newcomer.proxy_id, ProxyId::new("lb-2").unwrap());
}
