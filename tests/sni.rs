//! Routing by TLS server name end to end: real TLS clients (tokio-rustls) with different SNI
//! reach the pool of their route and complete the handshake with that member's certificate;
//! clients without SNI, not speaking TLS, stalling, or sending their ClientHello one byte per
//! segment; `sni_required`; and a route failing over on its own.

mod common;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tandem::failover::Side;
use tandem::health::state::Verdict;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A test CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    roots: Arc<RootCertStore>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sni test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
            .expect("CA cert");
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(issuer.der().to_vec()))
            .expect("root");
        Ca {
            issuer,
            roots: Arc::new(roots),
        }
    }

    /// A server config presenting a certificate for `names` (DNS names, wildcards allowed,
    /// and IP literals).
    fn acceptor(&self, names: &[&str]) -> TlsAcceptor {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let leaf = params.signed_by(&key, &self.issuer).expect("leaf cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        TlsAcceptor::from(Arc::new(config))
    }

    fn connector(&self) -> TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// A TLS member: after the handshake it sends its name on a line, then echoes until EOF.
struct TlsMember {
    name: String,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl TlsMember {
    async fn start(name: &str, host: u8, acceptor: TlsAcceptor) -> TlsMember {
        let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 3, host), 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let greeting = format!("{name}\n");
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = tls.write_all(greeting.as_bytes()).await;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsMember {
            name: name.to_string(),
            addr,
            accept,
        }
    }

    /// Closes the listener: the port refuses from now on.
    fn stop(&self) {
        self.accept.abort();
    }
}

impl Drop for TlsMember {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Writes at most one byte per call, so with TCP_NODELAY every byte leaves in its own segment.
struct OneByteWrites(TcpStream);

impl AsyncRead for OneByteWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for OneByteWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let one = &buf[..buf.len().min(1)];
        Pin::new(&mut self.0).poll_write(cx, one)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connects over TLS asking for `name` (a DNS name sends SNI; an IP sends none), verifies the
/// member's certificate against `ca` for that name, and returns the member's greeting after
/// an echo round trip.
async fn tls_greeting<S>(ca: &Ca, io: S, name: &str) -> io::Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let server_name = ServerName::try_from(name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tls = ca.connector().connect(server_name, io).await?;
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut tls = reader.into_inner();
    tls.write_all(b"ping").await?;
    let mut echo = [0u8; 4];
    tls.read_exact(&mut echo).await?;
    assert_eq!(&echo, b"ping", "echo through the balancer");
    Ok(line.trim_end().to_string())
}

async fn tls_via(ca: &Ca, addr: SocketAddr, name: &str) -> io::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    tls_greeting(ca, tcp, name).await
}

/// Whether the balancer closed `stream` without a byte (reads EOF or a reset).
async fn closed_without_a_byte(mut stream: TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Three TLS pools (`owa`, `org`, `dflt`), a backup for `owa`, and a plain demo pool.
struct Setup {
    ca: Ca,
    owa: TlsMember,
    owa2: TlsMember,
    org: TlsMember,
    dflt: TlsMember,
    plain: Vec<DemoMember>,
}

impl Setup {
    async fn start(first_host: u8) -> Setup {
        let ca = Ca::new();
        let owa = TlsMember::start("owa", first_host, ca.acceptor(&["owa.example.com"])).await;
        let owa2 =
            TlsMember::start("owa2", first_host + 1, ca.acceptor(&["owa.example.com"])).await;
        let org = TlsMember::start("org", first_host + 2, ca.acceptor(&["*.example.org"])).await;
        let dflt = TlsMember::start(
            "dflt",
            first_host + 3,
            ca.acceptor(&["default.test", "other.example.com", "127.0.0.1"]),
        )
        .await;
        let plain = members("plain", first_host + 4, 1).await;
        Setup {
            ca,
            owa,
            owa2,
            org,
            dflt,
            plain,
        }
    }

    fn pools(&self) -> String {
        let check = fast_tcp_check(1, 1);
        pool_toml_of("owa", [self.owa.addr], &check)
            + &pool_toml_of("owa2", [self.owa2.addr], &check)
            + &pool_toml_of("org", [self.org.addr], &check)
            + &pool_toml_of("dflt", [self.dflt.addr], &check)
            + &pool_toml("plain", &self.plain)
    }
}

const ROUTES: &str = r#"
  [[service.route]]
  sni = ["owa.example.com"]
  pool = "owa"
  backup_pool = "owa2"
  [[service.route]]
  name = "org"
  sni = ["*.Example.ORG"]
  pool = "org"
"#;

#[tokio::test]
async fn server_names_reach_their_route_and_complete_the_handshake_with_its_member() {
    let s = Setup::start(10).await;
    let toml = s.pools() + &service_toml("tls", "dflt", ROUTES);
    let app = balancer(&toml).await;
    let addr = app.local_addr("tls").expect("bound");

    assert_eq!(
        tls_via(&s.ca, addr, "owa.example.com").await.expect("owa"),
        "owa"
    );
    assert_eq!(
        tls_via(&s.ca, addr, "OWA.Example.Com").await.expect("case"),
        "owa"
    );
    assert_eq!(
        tls_via(&s.ca, addr, "a.example.org")
            .await
            .expect("wildcard"),
        "org"
    );
    assert_eq!(
        tls_via(&s.ca, addr, "mail.example.org")
            .await
            .expect("wildcard"),
        "org"
    );
    // No route matches: the service's own pool.
    assert_eq!(
        tls_via(&s.ca, addr, "default.test").await.expect("default"),
        "dflt"
    );
    assert_eq!(
        tls_via(&s.ca, addr, "other.example.com")
            .await
            .expect("default"),
        "dflt"
    );
    // The wildcard is one label: a.b.example.org is not *.example.org, so it lands on the
    // default member, whose certificate does not name it.
    assert!(tls_via(&s.ca, addr, "a.b.example.org").await.is_err());
    // No SNI at all (a client connecting to an IP sends none).
    assert_eq!(
        tls_via(&s.ca, addr, "127.0.0.1").await.expect("no SNI"),
        "dflt"
    );

    let st = app.stats("tls").expect("stats");
    assert_eq!(st.sni_default, 4, "{st:?}");
    assert_eq!(st.sni_unreadable, 0);
    let metrics = app.view().render_metrics();
    for line in [
        "tandem_route_connections_total{service=\"tls\",route=\"owa.example.com\"} 2",
        "tandem_route_connections_total{service=\"tls\",route=\"org\"} 2",
        "tandem_route_connections_total{service=\"tls\",route=\"default\"} 4",
        "tandem_route_active_pool{service=\"tls\",route=\"owa.example.com\",pool=\"owa\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_client_hello_one_byte_per_segment_is_read_whole() {
    let s = Setup::start(20).await;
    let app = balancer(&(s.pools() + &service_toml("tls", "dflt", ROUTES))).await;
    let addr = app.local_addr("tls").expect("bound");
    for (name, member) in [("owa.example.com", "owa"), ("x.example.org", "org")] {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let got = tls_greeting(&s.ca, OneByteWrites(tcp), name)
            .await
            .expect("handshake");
        assert_eq!(got, member);
    }
}

#[tokio::test]
async fn clients_that_do_not_speak_tls_or_stall_go_to_the_default_pool() {
    let s = Setup::start(30).await;
    let toml = s.pools() + &service_toml("mixed", "plain", ROUTES).replace("\"1s\"", "\"300ms\"");
    let app = balancer(&toml).await;
    let addr = app.local_addr("mixed").expect("bound");

    // Plain text: sent on to the plain member unchanged, which greets and echoes it.
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
    let mut reader = BufReader::new(c);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).await.expect("greeting");
    assert_eq!(greeting.trim_end(), s.plain[0].name());
    let mut echoed = vec![0u8; 18];
    reader.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(echoed, b"GET / HTTP/1.0\r\n\r\n");

    // Silent: after connect_timeout (300 ms here) it goes to the default pool all the same.
    let started = std::time::Instant::now();
    let (name, _stream) = greeting_from(client_ip(3), addr).await.expect("served");
    assert_eq!(name, s.plain[0].name());
    assert!(started.elapsed() >= Duration::from_millis(300));

    // TLS with a route still works on the same service.
    assert_eq!(
        tls_via(&s.ca, addr, "owa.example.com").await.expect("owa"),
        "owa"
    );
    let st = app.stats("mixed").expect("stats");
    assert_eq!((st.sni_unreadable, st.sni_default), (2, 2), "{st:?}");
}

#[tokio::test]
async fn sni_required_closes_clients_without_a_server_name() {
    let s = Setup::start(40).await;
    let toml = s.pools()
        + &service_toml("strict", "dflt", &format!("sni_required = true\n{ROUTES}"))
            .replace("\"1s\"", "\"300ms\"");
    let app = balancer(&toml).await;
    let addr = app.local_addr("strict").expect("bound");

    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain.write_all(b"hello\n").await.expect("write");
    assert!(closed_without_a_byte(plain).await, "plain text was served");
    let silent = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_without_a_byte(silent).await,
        "a silent client was served"
    );
    assert!(
        tls_via(&s.ca, addr, "127.0.0.1").await.is_err(),
        "a client without SNI was served"
    );
    // A name, even one no route has, is served (by the default pool).
    assert_eq!(
        tls_via(&s.ca, addr, "default.test").await.expect("named"),
        "dflt"
    );
    assert_eq!(
        tls_via(&s.ca, addr, "a.example.org").await.expect("org"),
        "org"
    );
    let st = app.stats("strict").expect("stats");
    assert_eq!(st.rejected_sni_required, 3, "{st:?}");
    let metrics = app.view().render_metrics();
    let line = "tandem_connections_rejected_total{service=\"strict\",reason=\"sni_required\"} 3";
    assert!(metrics.contains(line), "missing {line}");
}

#[tokio::test]
async fn one_route_fails_over_alone() {
    let s = Setup::start(50).await;
    let app = balancer(&(s.pools() + &service_toml("tls", "dflt", ROUTES))).await;
    let addr = app.local_addr("tls").expect("bound");
    let mut events = app.events();
    assert_eq!(
        tls_via(&s.ca, addr, "owa.example.com").await.expect("owa"),
        "owa"
    );

    s.owa.stop();
    wait_health(
        &mut events,
        s.owa.addr,
        Verdict::Down,
        Duration::from_secs(10),
    )
    .await;
    let reason = wait_failover(
        &mut events,
        "tls/owa.example.com",
        Side::Backup,
        Duration::from_secs(10),
    )
    .await;
    assert!(reason.contains("below min_healthy"), "{reason}");

    // The route's clients reach its backup pool, with the backup's certificate; the other
    // route and the default pool are where they were, and the service did not fail over.
    assert_eq!(
        tls_via(&s.ca, addr, "owa.example.com").await.expect("owa2"),
        "owa2"
    );
    assert_eq!(
        tls_via(&s.ca, addr, "b.example.org").await.expect("org"),
        "org"
    );
    assert_eq!(
        tls_via(&s.ca, addr, "default.test").await.expect("default"),
        "dflt"
    );
    let snap = app.snapshot();
    let route = snap.route("tls").expect("route");
    assert_eq!(route.failover.side(), Side::Local);
    assert_eq!(route.sni[1].failover.side(), Side::Local);
    assert_eq!(route.sni[0].active_pool().name, "owa2");
    assert_eq!(s.owa2.name, "owa2");
}

#[tokio::test]
async fn route_failover_survives_a_reload_that_keeps_its_pools() {
    let s = Setup::start(60).await;
    let toml = s.pools() + &service_toml("tls", "dflt", ROUTES);
    let mut app = balancer(&toml).await;
    let addr = app.local_addr("tls").expect("bound");
    let mut events = app.events();
    s.owa.stop();
    wait_failover(
        &mut events,
        "tls/owa.example.com",
        Side::Backup,
        Duration::from_secs(10),
    )
    .await;
    // Another setting changes; the route keeps its pools, so it stays failed over (its
    // failback hold-down is not reset by the reload).
    let changed = toml.replace("connect_timeout = \"1s\"", "connect_timeout = \"2s\"");
    let cfg = tandem::config::parse(&changed, "t.toml").expect("valid");
    app.reload(cfg).await.expect("reload");
    let route = app.snapshot().route("tls").expect("route").clone();
    assert_eq!(route.sni[0].failover.side(), Side::Backup);
    assert_eq!(
        route.sni[0]
            .failover
            .failovers
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        tls_via(&s.ca, addr, "owa.example.com").await.expect("owa2"),
        "owa2"
    );
}
