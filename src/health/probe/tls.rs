//! TLS for probes: the client config a check builds once (CA file or accept-any), and the
//! handshake each probe does over its TCP connection.
//!
//! Always uses rustls' ring provider, passed explicitly: a process-wide default provider may be
//! unset, or set to something else by another part of the program. It must not weaken
//! verification beyond what the check asks for: `verify = false` skips the certificate check but
//! still requires a complete handshake with valid signatures.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{ProbeOutcome, ProbeSetupError, io_reason};
use crate::config::CheckTls;

/// A check's TLS client: cheap to clone, shared by all its probes.
#[derive(Clone)]
pub(crate) struct TlsClient {
    connector: TlsConnector,
    /// The configured SNI, parsed once; `None` uses each member's IP.
    sni: Option<ServerName<'static>>,
}

impl TlsClient {
    /// Builds the client config: verification against `ca_file`, or none when it is unset.
    pub(crate) fn new(settings: &CheckTls) -> Result<TlsClient, ProbeSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ProbeSetupError::Tls(e.to_string()))?;
        let config = match &settings.ca_file {
            Some(path) => builder
                .with_root_certificates(load_roots(path)?)
                .with_no_client_auth(),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert {
                    algorithms: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth(),
        };
        let sni = match &settings.sni {
            Some(sni) => Some(
                ServerName::try_from(sni.clone())
                    .map_err(|_| ProbeSetupError::Sni { sni: sni.clone() })?,
            ),
            None => None,
        };
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            sni,
        })
    }

    /// Runs the handshake over `tcp` to the member at `member`. The error is a probe reason.
    /// Any byte stream, so the fuzz target runs it on in-memory bytes (see `crate::fuzzing`).
    pub(crate) async fn handshake<S>(&self, tcp: S, member: IpAddr) -> Result<TlsStream<S>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Without a configured name the member's IP is both what is sent and what the
        // certificate must name (an IP SAN); rustls leaves SNI out for IPs, as RFC 6066 asks.
        let name = self.sni.clone().unwrap_or(ServerName::from(member));
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {}", io_reason(&e)))
    }
}

/// Ends a `tls` probe whose handshake completed: that is the pass.
pub(crate) async fn finish<S>(mut stream: TlsStream<S>) -> ProbeOutcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let version = match stream.get_ref().1.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        Some(ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_string(),
    };
    // close_notify, so the member logs a clean close rather than an aborted session. The verdict
    // is already made; a failure here changes nothing.
    let _ = stream.shutdown().await;
    ProbeOutcome::pass(format!("{version} handshake ok"))
}

/// Reads the CA certificates of `path` (PEM) into a root store.
fn load_roots(path: &Path) -> Result<RootCertStore, ProbeSetupError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| ProbeSetupError::CaFile {
        path: shown.clone(),
        source,
    })?;
    let invalid = |reason: String| ProbeSetupError::CaInvalid {
        path: shown.clone(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let mut found = 0;
    let mut rejected = None;
    // Other PEM sections (a key left in a bundle, say) are skipped by the iterator.
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| invalid(format!("bad PEM: {e}")))?;
        found += 1;
        if let Err(e) = roots.add(cert) {
            rejected.get_or_insert((found, e));
        }
    }
    if found == 0 {
        return Err(invalid(
            "no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)".to_string(),
        ));
    }
    match rejected {
        // A half-usable CA file would verify some members and not others: refuse it whole.
        Some((n, e)) => Err(invalid(format!(
            "certificate {n} of {found} is not usable as a CA: {e}"
        ))),
        None => Ok(roots),
    }
}

/// `verify = false`: any certificate chain and name are accepted, but the handshake signatures
/// are still checked, so the member must hold the key of the certificate it presents.
#[derive(Debug)]
struct AcceptAnyCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn settings(ca_file: Option<&Path>, sni: Option<&str>) -> CheckTls {
        CheckTls {
            sni: sni.map(str::to_string),
            ca_file: ca_file.map(Path::to_path_buf),
        }
    }

    fn setup_error(ca_file: Option<&Path>, sni: Option<&str>) -> String {
        match TlsClient::new(&settings(ca_file, sni)) {
            Ok(_) => panic!("setup should fail"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accept_any_needs_no_file() {
        assert!(TlsClient::new(&settings(None, None)).is_ok());
        assert!(TlsClient::new(&settings(None, Some("fe.example.com"))).is_ok());
        assert!(TlsClient::new(&settings(None, Some("10.1.0.11"))).is_ok());
    }

    #[test]
    fn bad_ca_files_are_setup_errors() {
        let missing = Path::new("/nonexistent/tandem-ca.pem");
        let e = setup_error(Some(missing), None);
        assert!(
            e.starts_with("cannot read ca_file /nonexistent/tandem-ca.pem:"),
            "{e}"
        );

        let mut empty = tempfile::NamedTempFile::new().unwrap();
        writeln!(empty, "not a certificate").unwrap();
        let e = setup_error(Some(empty.path()), None);
        assert!(e.contains("no certificate in it"), "{e}");

        let mut junk = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
        )
        .unwrap();
        let e = setup_error(Some(junk.path()), None);
        assert!(e.contains("not usable as a CA"), "{e}");
    }

    #[test]
    fn bad_sni_is_a_setup_error() {
        let e = setup_error(None, Some("not a name!"));
        assert_eq!(
            e,
            "sni \"not a name!\" is not a valid DNS name or IP address"
        );
    }
}
