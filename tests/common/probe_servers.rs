//! Members for the probe tests: loopback servers on port 0 that answer one scripted way, and a
//! test PKI (a CA and a leaf it signed) generated per test with rcgen.
//!
//! Servers report what they received over a channel instead of asserting in their own task, so
//! a malformed request fails the test rather than a detached task nobody watches.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::NamedTempFile;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Where the test members listen; the test certificates name this IP.
pub const MEMBER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 77));
/// The DNS name in the test member certificates.
pub const MEMBER_NAME: &str = "member.test";

/// A server-side connection, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Conn = Box<dyn Io>;

/// What a server received, one entry per connection.
pub type Received = mpsc::UnboundedReceiver<Vec<u8>>;

/// A listening test member; stops accepting when dropped.
pub struct Server {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Listens on `MEMBER_IP:0` and runs `handler` on each connection (after a TLS handshake with
/// `tls`, if given; a failed handshake just drops the connection).
pub async fn serve<F, Fut>(tls: Option<TlsAcceptor>, handler: F) -> Server
where
    F: Fn(Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((MEMBER_IP, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let handler = Arc::new(handler);
    let accept = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let conn: Conn = match tls {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(stream) => Box::new(stream),
                        Err(_) => return,
                    },
                    None => Box::new(tcp),
                };
                handler(conn).await;
            });
        }
    });
    Server { addr, accept }
}

/// A port nothing listens on: bound, then released.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind((MEMBER_IP, 0)).await.expect("bind");
    listener.local_addr().expect("local addr")
}

/// Reads a request head: up to and including the first empty line (or EOF, or 64 KiB).
pub async fn read_head(conn: &mut Conn) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// Waits until the client closes (or breaks) the connection, discarding what it sends.
async fn until_closed(conn: &mut Conn) {
    let mut sink = [0u8; 256];
    while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Reads a request head, reports it, writes `reply` and closes: an HTTP member.
pub async fn http(tls: Option<TlsAcceptor>, reply: &'static [u8]) -> (Server, Received) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = serve(tls, move |mut conn| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(read_head(&mut conn).await);
            let _ = conn.write_all(reply).await;
            let _ = conn.shutdown().await;
        }
    })
    .await;
    (server, rx)
}

/// Reads a request head, reports it, writes each of `replies` (separately flushed), then keeps
/// the connection open until the client closes it: a SIP member.
pub async fn sip(tls: Option<TlsAcceptor>, replies: Vec<&'static [u8]>) -> (Server, Received) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = serve(tls, move |mut conn| {
        let tx = tx.clone();
        let replies = replies.clone();
        async move {
            let _ = tx.send(read_head(&mut conn).await);
            for reply in replies {
                let _ = conn.write_all(reply).await;
                let _ = conn.flush().await;
            }
            until_closed(&mut conn).await;
        }
    })
    .await;
    (server, rx)
}

/// Reads exactly `read_len` bytes, reports them, writes `reply` and closes: a send-expect member.
pub async fn exchange(read_len: usize, reply: &'static [u8]) -> (Server, Received) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = serve(None, move |mut conn| {
        let tx = tx.clone();
        async move {
            let mut got = vec![0u8; read_len];
            if conn.read_exact(&mut got).await.is_ok() {
                let _ = tx.send(got);
            }
            let _ = conn.write_all(reply).await;
            let _ = conn.shutdown().await;
        }
    })
    .await;
    (server, rx)
}

/// Accepts (and completes TLS, if given) and then never sends a byte nor closes.
pub async fn silent(tls: Option<TlsAcceptor>) -> Server {
    serve(tls, |conn| async move {
        let _held = conn;
        std::future::pending::<()>().await;
    })
    .await
}

/// A certificate authority and a member certificate it signed, for `MEMBER_NAME` and
/// `MEMBER_IP`.
pub struct Pki {
    /// The CA certificate, PEM, as a `ca_file`.
    pub ca_file: NamedTempFile,
    /// A TLS server presenting the member certificate.
    pub acceptor: TlsAcceptor,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert")
}

fn pem_file(pem: &str) -> NamedTempFile {
    let file = NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), pem).expect("write PEM");
    file
}

/// A fresh test PKI; its member speaks TLS 1.2 and 1.3.
pub fn pki() -> Pki {
    pki_with(rustls::DEFAULT_VERSIONS)
}

/// A fresh test PKI whose member speaks only TLS 1.2, where handshake signatures are checked
/// through a different verifier path than in 1.3.
pub fn pki_tls12() -> Pki {
    pki_with(&[&rustls::version::TLS12])
}

fn pki_with(versions: &[&'static rustls::SupportedProtocolVersion]) -> Pki {
    let ca = ca("tandem test CA");
    let mut params = CertificateParams::new(vec![MEMBER_NAME.to_string(), MEMBER_IP.to_string()])
        .expect("leaf params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("leaf key");
    let leaf = params.signed_by(&key, &ca).expect("leaf cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    Pki {
        ca_file: pem_file(&ca.pem()),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}

/// A CA that signed none of the test certificates, as a `ca_file`.
pub fn unrelated_ca_file() -> NamedTempFile {
    pem_file(&ca("unrelated CA").pem())
}
