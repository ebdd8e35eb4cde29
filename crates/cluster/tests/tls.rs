//! Client TLS against a real etcd that serves clients over TLS and wants client certificates: with the CA and
//! a client certificate every call works; without the certificate, or trusting another CA, nothing does.

use std::path::Path;
use std::time::Duration;

use cluster::{Client, ClientConfig, EtcdError, TlsFiles, WatchEvent};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use testkit::{EtcdCluster, ServerTls, TempDir};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name.push(DnType::CommonName, name);
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// A certificate `ca` signs, written as `<stem>.pem` and `<stem>-key.pem` in `dir`.
fn issue(ca: &Ca, dir: &Path, stem: &str, usage: &[ExtendedKeyUsagePurpose]) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, stem);
    p.extended_key_usages = usage.to_vec();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}-key.pem")), key.serialize_pem()).unwrap();
}

fn client(etcd: &EtcdCluster, tls: TlsFiles) -> Client {
    let mut cfg = ClientConfig::new(etcd.endpoints());
    cfg.tls = Some(tls);
    cfg.request_timeout = Duration::from_secs(2);
    Client::new(&cfg).unwrap()
}

#[tokio::test]
async fn calls_go_through_tls_with_a_client_certificate_and_fail_without() {
    let dir = TempDir::new("etcd-tls");
    let good = ca("slipway test CA");
    std::fs::write(dir.join("ca.pem"), good.cert.pem()).unwrap();
    // etcd's JSON gateway calls its own gRPC server with the server certificate: it needs client use too.
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    issue(&good, dir.path(), "server", &[ServerAuth, ClientAuth]);
    issue(&good, dir.path(), "client", &[ClientAuth]);
    let other = ca("another CA");
    std::fs::write(dir.join("other-ca.pem"), other.cert.pem()).unwrap();

    let etcd = EtcdCluster::start_tls(
        1,
        ServerTls {
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            ca: dir.join("ca.pem"),
            client_cert_auth: true,
        },
    )
    .await;
    assert!(etcd.endpoint(0).starts_with("https://"));

    let c = client(
        &etcd,
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: Some(dir.join("client.pem")),
            key: Some(dir.join("client-key.pem")),
        },
    );
    let mut w = c.watch_prefix("/tls/", 0).await.unwrap();
    c.put("/tls/k", b"over tls", None).await.unwrap();
    assert_eq!(c.get("/tls/k").await.unwrap().unwrap().value, b"over tls");
    let batch = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("event")
        .unwrap();
    assert!(matches!(&batch[0], WatchEvent::Put(kv) if kv.value == b"over tls"));

    let no_cert = client(
        &etcd,
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: None,
            key: None,
        },
    );
    let err = no_cert.get("/tls/k").await.unwrap_err();
    assert!(matches!(err, EtcdError::Unreachable(_)), "{err:?}");

    let wrong_ca = client(
        &etcd,
        TlsFiles {
            ca: dir.join("other-ca.pem"),
            cert: Some(dir.join("client.pem")),
            key: Some(dir.join("client-key.pem")),
        },
    );
    let err = wrong_ca.get("/tls/k").await.unwrap_err();
    assert!(
        matches!(&err, EtcdError::Unreachable(why) if why.contains("tls")),
        "{err:?}"
    );
}
