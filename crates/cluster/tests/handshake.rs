//! The cluster's TLS over real sockets: first contact pinned by the join
//! token's CA digest, the join itself, and what the controller sees of
//! proxies with, without, or with the wrong certificates.

mod common;

use std::sync::Arc;

use common::{connect, join, read_line, rustls_error, Controller, CONTROLLER_NAMES};
use portico_cluster::tls::{self, Peer};
use portico_cluster::{ClusterCa, JoinToken, ProxyId};

fn cluster() -> (Arc<ClusterCa>, JoinToken) {
    let ca = ClusterCa::generate().unwrap();
    let token = JoinToken::generate(*ca.digest()).unwrap();
    (Arc::new(ca), token)
}

#[tokio::test]
async fn first_contact_with_the_tokens_digest_reaches_the_controller() {
    let (ca, token) = cluster();
    let mut controller = Controller::start(ca, token.clone()).await;
    let config = tls::first_contact_client_config(*token.ca_digest()).unwrap();
    // By name and by address: both are in the controller's certificate.
    for name in CONTROLLER_NAMES {
        let tls = connect(controller.addr, config.clone(), name)
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        drop(tls);
        assert_eq!(controller.next_outcome().await, Ok(Peer::Anonymous));
    }
}

#[tokio::test]
async fn first_contact_with_another_clusters_token_is_refused_naming_the_digest_mismatch() {
    let (ca, token) = cluster();
    let (other_ca, other_token) = cluster();
    let mut controller = Controller::start(ca.clone(), token).await;
    let config = tls::first_contact_client_config(*other_token.ca_digest()).unwrap();
    let err = connect(controller.addr, config, CONTROLLER_NAMES[0])
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("CA digest mismatch"), "{message}");
    assert!(
        message.contains(&other_ca.digest().to_string()),
        "{message}"
    );
    assert!(message.contains(&ca.digest().to_string()), "{message}");
    let mismatch = tls::ca_digest_mismatch(rustls_error(&err)).expect("a digest mismatch");
    assert_eq!(mismatch.expected, *other_ca.digest());
    assert_eq!(mismatch.presented, vec![*ca.digest()]);
    // The controller saw the proxy give up on it.
    assert!(controller.next_outcome().await.is_err());
}

#[tokio::test]
async fn first_contact_still_checks_the_server_name() {
    let (ca, token) = cluster();
    let mut controller = Controller::start(ca, token.clone()).await;
    let config = tls::first_contact_client_config(*token.ca_digest()).unwrap();
    let err = connect(controller.addr, config, "not-the-controller.example")
        .await
        .unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{err}"
    );
    assert!(controller.next_outcome().await.is_err());
}

/// An impostor can send the real CA certificate (it is public) after a leaf
/// of its own: the digest matches, but the leaf does not chain to it.
#[tokio::test]
async fn first_contact_refuses_an_impostor_that_sends_the_real_ca_certificate() {
    let (ca, token) = cluster();
    let impostor_ca = ClusterCa::generate().unwrap();
    let impostor_leaf = impostor_ca.issue_server(&CONTROLLER_NAMES).unwrap();
    // The server's chain: the impostor's leaf, then the real CA.
    let mut controller = Controller::start_with(ca, token.clone(), impostor_leaf).await;
    let config = tls::first_contact_client_config(*token.ca_digest()).unwrap();
    let err = connect(controller.addr, config, CONTROLLER_NAMES[0])
        .await
        .unwrap_err();
    assert!(
        matches!(rustls_error(&err), rustls::Error::InvalidCertificate(_)),
        "{err}"
    );
    assert!(
        tls::ca_digest_mismatch(rustls_error(&err)).is_none(),
        "{err}"
    );
    assert!(controller.next_outcome().await.is_err());
}

#[tokio::test]
async fn a_joined_proxy_is_seen_as_verified_by_its_id() {
    let (ca, token) = cluster();
    let mut controller = Controller::start(ca.clone(), token.clone()).await;
    let joined = join(controller.addr, &token, "lb-1").await;
    assert_eq!(controller.next_outcome().await, Ok(Peer::Anonymous));
    assert_eq!(joined.ca_cert.der, *ca.cert_der());

    let mut tls = connect(
        controller.addr,
        joined.client_config().unwrap(),
        CONTROLLER_NAMES[0],
    )
    .await
    .unwrap();
    assert_eq!(read_line(&mut tls).await.unwrap(), "hello lb-1");
    assert_eq!(
        controller.next_outcome().await,
        Ok(Peer::Proxy(ProxyId::new("lb-1").unwrap()))
    );
}

#[tokio::test]
async fn a_wrong_secret_gets_no_certificate() {
    let (ca, token) = cluster();
    let mut controller = Controller::start(ca.clone(), token.clone()).await;
    // Right CA digest (it passes first contact), wrong secret.
    let guess = JoinToken::generate(*ca.digest()).unwrap();
    let pending = portico_cluster::PendingJoin::new(&guess, ProxyId::new("lb-1").unwrap()).unwrap();
    let config = tls::first_contact_client_config(*guess.ca_digest()).unwrap();
    let mut tls = connect(controller.addr, config, CONTROLLER_NAMES[0])
        .await
        .unwrap();
    let request = serde_json::to_string(pending.request()).unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tls, format!("{request}\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        read_line(&mut tls).await.unwrap(),
        "refused: the join token's secret is wrong"
    );
    assert_eq!(controller.next_outcome().await, Ok(Peer::Anonymous));
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_at_the_handshake() {
    let (ca, token) = cluster();
    let other_ca = ClusterCa::generate().unwrap();
    let mut controller = Controller::start(ca.clone(), token).await;
    // It trusts the right CA, but its certificate is the other one's.
    let stranger = other_ca
        .issue_client(&ProxyId::new("lb-1").unwrap())
        .unwrap();
    let config = tls::joined_client_config(ca.cert_der(), &stranger).unwrap();
    // In TLS 1.3 the client's side of the handshake ends before the server
    // has judged its certificate: the refusal arrives as an alert on read.
    let outcome = match connect(controller.addr, config, CONTROLLER_NAMES[0]).await {
        Ok(mut tls) => read_line(&mut tls).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let err = outcome.expect_err("the controller accepted a stranger");
    assert!(
        matches!(rustls_error(&err), rustls::Error::AlertReceived(_)),
        "{err}"
    );
    let server_side = controller.next_outcome().await.unwrap_err();
    assert!(
        server_side.contains("invalid peer certificate"),
        "{server_side}"
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_connects_but_presents_nothing() {
    let (ca, token) = cluster();
    let mut controller = Controller::start(ca.clone(), token).await;
    // A proxy that trusts the cluster CA but has no certificate of its own.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(tls::PROTOCOL_VERSIONS)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = connect(controller.addr, config, CONTROLLER_NAMES[0])
        .await
        .unwrap();
    drop(tls);
    // So the caller can hold it to the join endpoint.
    assert_eq!(controller.next_outcome().await, Ok(Peer::Anonymous));
}

#[tokio::test]
async fn tls_1_2_is_refused() {
    let (ca, token) = cluster();
    let mut controller = Controller::start(ca.clone(), token).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(connect(controller.addr, config, CONTROLLER_NAMES[0])
        .await
        .is_err());
    assert!(controller.next_outcome().await.is_err());
}
