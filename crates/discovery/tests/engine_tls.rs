//! The Engine API client over `tcp://` with TLS, against a TLS server of
//! the test's own standing in for a dockerd started with `--tlsverify`
//! (the real engine here listens on its unix socket only).

use bytes::Bytes;
use http_body_util::Full;
use portico_discovery::engine::{Engine, EngineError, Info};
use portico_model::DockerSettings;
use portico_testkit::{Backend, TestCa};

async fn fake_engine(ca: &TestCa) -> Backend {
    let tls = ca
        .issue(&["localhost", "127.0.0.1"])
        .server_config(&[b"http/1.1"]);
    Backend::start_with("engine", Some(tls), |req| async move {
        let body = match req.uri().path() {
            "/version" => r#"{"ApiVersion":"1.41"}"#,
            "/info" => r#"{"Swarm":{"LocalNodeState":"active","ControlAvailable":true}}"#,
            _ => "{}",
        };
        http::Response::new(Full::new(Bytes::from_static(body.as_bytes())))
    })
    .await
}

#[tokio::test]
async fn tcp_endpoints_speak_tls_verified_against_the_configured_ca() {
    let ca = TestCa::new("Engine CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path());
    let engine = fake_engine(&ca).await;
    let settings = DockerSettings {
        endpoint: Some(format!("tcp://127.0.0.1:{}", engine.addr.port())),
        tls_ca: Some(ca_file.display().to_string()),
        ..DockerSettings::default()
    };
    let client = Engine::from_settings(&settings).unwrap();
    let info: Info = client.get("/info").await.unwrap();
    assert_eq!(info.swarm.local_node_state, "active");
    assert!(info.swarm.control_available);

    // An engine whose certificate another CA signed is refused.
    let other = TestCa::new("Other CA");
    let other_dir = tempfile::tempdir().unwrap();
    let wrong = DockerSettings {
        tls_ca: Some(other.write(other_dir.path()).display().to_string()),
        ..settings.clone()
    };
    let err = Engine::from_settings(&wrong)
        .unwrap()
        .get::<Info>("/info")
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
}
