//! The admin API over TLS, on the real binary: a rustls client in the test, certificates made by
//! rcgen for each test. The right CA is served, a wrong CA fails the handshake, plain HTTP gets
//! no HTTP; with `client_ca` a connection without a client certificate (or with one from another
//! CA) is refused; a certificate rotated on disk is served to the next connection after a reload,
//! and a reload whose key does not load is rejected with the old certificate still served.
//! `tandem status --ca` (and `--cert`, `--key`) talks to it. The refusal of plain POST from
//! beyond loopback is unit-tested in `src/admin` (no test machine has a non-loopback peer to
//! spare); here, a loopback peer other than 127.0.0.1 still may POST in plain HTTP.

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use process::Tandem;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

const TOKEN: &str = "tls-test-token";

/// A test certificate authority.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA"))
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    /// A certificate it signed, as (certificate PEM, key PEM): for 127.0.0.1 as a server, or
    /// as a client.
    fn issue(&self, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.0).expect("cert");
        (cert.pem(), key.serialize_pem())
    }
}

/// A client identity: (certificate PEM, key PEM).
type Identity = (String, String);

/// A TLS client trusting `ca` (PEM), presenting `identity` if given, for 127.0.0.1.
fn connector(ca: &str, identity: Option<&Identity>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA usable");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert PEM"),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM"),
            )
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

/// One request over TLS; the whole raw response, or the error that ended the exchange (a failed
/// handshake, or an alert on the first read when the server refused our certificate).
async fn tls_request(
    admin: SocketAddr,
    ca: &str,
    identity: Option<&Identity>,
    method: &str,
    path: &str,
    headers: &str,
) -> Result<String, String> {
    let tcp = TcpStream::connect(admin).await.expect("admin connects");
    let name = ServerName::IpAddress(admin.ip().into());
    let mut tls = connector(ca, identity)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

async fn tls_get(
    admin: SocketAddr,
    ca: &str,
    identity: Option<&Identity>,
) -> Result<String, String> {
    tls_request(admin, ca, identity, "GET", "/healthz", "").await
}

fn assert_ok(response: &Result<String, String>) {
    match response {
        Ok(r) => assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}"),
        Err(e) => panic!("request failed: {e}"),
    }
}

/// No HTTP answer came back: the handshake failed or the connection ended without a response.
fn assert_refused(response: &Result<String, String>) {
    if let Ok(r) = response {
        assert!(!r.contains("HTTP/1.1"), "served: {r}");
    }
}

/// One plain-HTTP request from `from` (a loopback address); the whole raw response.
async fn plain_request(
    from: IpAddr,
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind source");
    let mut s = socket.connect(admin).await.expect("admin connects");
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    // A TLS server answers plain bytes with an alert or a reset; either way no HTTP.
    let _ = s.read_to_end(&mut raw).await;
    String::from_utf8_lossy(&raw).into_owned()
}

/// A running tandem whose admin API serves the files in `dir`.
struct Admin {
    tandem: Tandem,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _members: Vec<DemoMember>,
}

impl Admin {
    /// `server` (cert, key) as `tls_cert`/`tls_key`, `client_ca` (PEM) if given; a token.
    async fn start(server: &Identity, client_ca: Option<&str>) -> Admin {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, text: &str| -> PathBuf {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let cert = file("admin.crt", &server.0);
        let key = file("admin.key", &server.1);
        let token = file("admin.token", TOKEN);
        let mut admin = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            token.display(),
            cert.display(),
            key.display()
        );
        if let Some(ca) = client_ca {
            let ca = file("clients.pem", ca);
            admin += &format!("client_ca = \"{}\"\n", ca.display());
        }
        let members = members("tls", 150, 1).await;
        let config = admin + &pool_toml("p", &members) + &service_toml("s", "p", "");
        let path = file("tandem.toml", &config);
        let mut tandem = Tandem::spawn(&path, &["--no-watch"]);
        let addr = tandem.addr_of("admin API listening").await;
        Admin {
            tandem,
            addr,
            dir,
            _members: members,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the served certificate and key on disk (a certificate rotation).
    fn rotate(&self, server: &Identity) {
        std::fs::write(self.path("admin.crt"), &server.0).expect("write cert");
        std::fs::write(self.path("admin.key"), &server.1).expect("write key");
    }

    /// `tandem status` against this admin API with `args`.
    fn status_cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["status", "-c", "/nonexistent/tandem.toml", "--admin"])
            .arg(self.addr.to_string())
            .args(args)
            .output()
            .expect("tandem status runs")
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[tokio::test]
async fn the_right_ca_is_served_a_wrong_one_and_plain_http_are_not() {
    let ca = Ca::new("admin CA");
    let server = ca.issue(ExtendedKeyUsagePurpose::ServerAuth);
    let admin = Admin::start(&server, None).await;

    assert_ok(&tls_get(admin.addr, &ca.pem(), None).await);
    let wrong = tls_get(admin.addr, &Ca::new("another CA").pem(), None).await;
    assert!(
        matches!(&wrong, Err(e) if e.starts_with("handshake:")),
        "{wrong:?}"
    );
    let plain = plain_request(
        Ipv4Addr::LOCALHOST.into(),
        admin.addr,
        "GET",
        "/healthz",
        "",
    )
    .await;
    assert!(!plain.contains("HTTP/1.1"), "plain HTTP served: {plain}");

    // POST over TLS: the token decides, as in plain HTTP on loopback.
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let r = tls_request(admin.addr, &ca.pem(), None, "POST", "/reload", &auth).await;
    assert!(
        matches!(&r, Ok(r) if r.starts_with("HTTP/1.1 200 ")),
        "{r:?}"
    );
    let r = tls_request(admin.addr, &ca.pem(), None, "POST", "/reload", "").await;
    assert!(
        matches!(&r, Ok(r) if r.starts_with("HTTP/1.1 401 ")),
        "{r:?}"
    );

    // `tandem status --ca`: verified against the CA, the certificate naming the IP.
    let ca_file = write(admin.dir.path(), "ca.pem", &ca.pem());
    let out = admin.status_cli(&["--ca", &ca_file, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(status.get("pools").is_some(), "{status}");
    let other = write(admin.dir.path(), "other.pem", &Ca::new("other").pem());
    let out = admin.status_cli(&["--ca", &other]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS with the admin API at"), "{stderr}");
}

#[tokio::test]
async fn with_client_ca_a_client_certificate_signed_by_it_is_required() {
    let ca = Ca::new("admin CA");
    let clients = Ca::new("client CA");
    let server = ca.issue(ExtendedKeyUsagePurpose::ServerAuth);
    let admin = Admin::start(&server, Some(&clients.pem())).await;

    let client = clients.issue(ExtendedKeyUsagePurpose::ClientAuth);
    assert_ok(&tls_get(admin.addr, &ca.pem(), Some(&client)).await);
    // Every request, GETs included: no certificate, or one from another CA, gets nothing.
    assert_refused(&tls_get(admin.addr, &ca.pem(), None).await);
    let stranger = Ca::new("stranger CA").issue(ExtendedKeyUsagePurpose::ClientAuth);
    assert_refused(&tls_get(admin.addr, &ca.pem(), Some(&stranger)).await);

    let dir = admin.dir.path();
    let ca_file = write(dir, "ca.pem", &ca.pem());
    let cert = write(dir, "client.crt", &client.0);
    let key = write(dir, "client.key", &client.1);
    let out = admin.status_cli(&["--ca", &ca_file, "--cert", &cert, "--key", &key]);
    assert!(out.status.success(), "{out:?}");
    let out = admin.status_cli(&["--ca", &ca_file]);
    assert!(!out.status.success(), "{out:?}");
}

#[tokio::test]
async fn a_reload_rotates_the_certificate_and_one_that_does_not_load_is_rejected() {
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let admin = Admin::start(&old_ca.issue(ExtendedKeyUsagePurpose::ServerAuth), None).await;
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_ok(&tls_get(admin.addr, &old_ca.pem(), None).await);

    // New files in place, then a reload (over the old certificate, still served until then).
    admin.rotate(&new_ca.issue(ExtendedKeyUsagePurpose::ServerAuth));
    let r = tls_request(admin.addr, &old_ca.pem(), None, "POST", "/reload", &auth).await;
    assert!(
        matches!(&r, Ok(r) if r.starts_with("HTTP/1.1 200 ")),
        "{r:?}"
    );
    // The next connection gets the new certificate.
    assert_ok(&tls_get(admin.addr, &new_ca.pem(), None).await);
    assert_refused(&tls_get(admin.addr, &old_ca.pem(), None).await);

    // A key that is not the certificate's: the reload is rejected like a bad config, with the
    // place and the file, and the current certificate keeps serving.
    let (cert, _) = old_ca.issue(ExtendedKeyUsagePurpose::ServerAuth);
    let (_, other_key) = old_ca.issue(ExtendedKeyUsagePurpose::ServerAuth);
    admin.rotate(&(cert, other_key));
    let r = tls_request(admin.addr, &new_ca.pem(), None, "POST", "/reload", &auth)
        .await
        .expect("answered");
    assert!(r.starts_with("HTTP/1.1 422 "), "{r}");
    assert!(r.contains("admin: tls_key: "), "{r}");
    assert!(r.contains("does not go with"), "{r}");
    assert_ok(&tls_get(admin.addr, &new_ca.pem(), None).await);
    drop(admin.tandem);
}

#[tokio::test]
async fn a_plain_admin_api_takes_post_from_any_loopback_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = write(dir.path(), "admin.token", TOKEN);
    let members = members("plain", 152, 1).await;
    let config = format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{token}\"\n")
        + &pool_toml("p", &members)
        + &service_toml("s", "p", "");
    let path = write(dir.path(), "tandem.toml", &config);
    let mut tandem = Tandem::spawn(Path::new(&path), &["--no-watch"]);
    let admin = tandem.addr_of("admin API listening").await;
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    // 127.0.0.0/8 is all loopback, not only 127.0.0.1.
    for from in [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 3, 9)] {
        let r = plain_request(from.into(), admin, "POST", "/reload", &auth).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "from {from}: {r}");
    }
}

#[test]
fn check_warns_about_a_plain_admin_api_beyond_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Never bound: `tandem check` only reads the file. A documentation address.
    let config = "[admin]\nlisten = \"192.0.2.1:9900\"\n\
                  [[pool]]\nname = \"p\"\nmembers = [{ addr = \"127.0.1.1:80\" }]\n\
                  [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8000\"\npool = \"p\"\n";
    let path = write(dir.path(), "tandem.toml", config);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["check", "-c", &path])
        .output()
        .expect("tandem check runs");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: [admin] listen = \"192.0.2.1:9900\" is not loopback and the admin API has no TLS"),
        "{stderr}"
    );
    assert!(
        stderr.contains("POST /reload from a non-loopback peer is refused"),
        "{stderr}"
    );
}
