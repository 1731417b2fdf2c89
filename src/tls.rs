//! The TLS that tandem terminates itself: the admin API's server side and `tandem status`'s
//! client side, built from PEM files.
//!
//! A leaf module: it imports nothing else of tandem, so config loading (which builds the server
//! config once to check the files for `tandem check` and reloads) and the admin API (which serves
//! it) share one reading of the files and one set of messages. Each error names the file and the
//! config key it came from. Always uses rustls' ring provider, passed explicitly, as the health
//! probes do: a process-wide default provider may be unset or something else. Performs file I/O
//! only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Which file a problem is in, named as the config key (or `tandem status` flag) that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The certificate chain served (`tls_cert`, `--cert`).
    Cert,
    /// Its private key (`tls_key`, `--key`).
    Key,
    /// The CA(s) the peer's certificate must chain to (`client_ca`, `--ca`).
    Ca,
}

impl Role {
    /// The `[admin]` key that names a file of this role.
    pub fn admin_key(self) -> &'static str {
        match self {
            Role::Cert => "tls_cert",
            Role::Key => "tls_key",
            Role::Ca => "client_ca",
        }
    }
}

/// Why TLS cannot be set up from the files given.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        role: Role,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file reads but holds no usable PEM object of the kind needed.
    #[error("{}: {reason}", path.display())]
    Invalid {
        role: Role,
        path: PathBuf,
        reason: String,
    },
    /// The files are each fine but do not go together (a key that is not the certificate's),
    /// or rustls refuses them.
    #[error("{reason}")]
    Rejected { role: Role, reason: String },
}

impl TlsError {
    /// The file the problem is in.
    pub fn role(&self) -> Role {
        match self {
            TlsError::Read { role, .. }
            | TlsError::Invalid { role, .. }
            | TlsError::Rejected { role, .. } => *role,
        }
    }
}

/// The admin API's TLS server config: `cert` (PEM chain, leaf first) with its `key`, and when
/// `client_ca` is given a client certificate signed by it is required in every handshake.
/// ALPN offers HTTP/1.1 only, the one protocol the admin API speaks.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(cert, Role::Cert)?;
    let key_der = load_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| rejected(Role::Cert, e))?;
    let builder = match client_ca {
        Some(path) => {
            let roots = load_roots(path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid {
                    role: Role::Ca,
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key_der).map_err(|e| {
        // rustls checks that the key is the leaf certificate's; say which files disagree.
        rejected(
            Role::Key,
            format!("{} does not go with {}: {e}", key.display(), cert.display()),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `tandem status`'s client config: the admin API's certificate must chain to `ca`; `identity`
/// (certificate, key) is presented when the admin API asks for a client certificate.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| rejected(Role::Ca, e))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = load_certs(cert, Role::Cert)?;
            builder
                .with_client_auth_cert(chain, load_key(key)?)
                .map_err(|e| {
                    rejected(
                        Role::Key,
                        format!("{} does not go with {}: {e}", key.display(), cert.display()),
                    )
                })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn rejected(role: Role, reason: impl fmt::Display) -> TlsError {
    TlsError::Rejected {
        role,
        reason: reason.to_string(),
    }
}

fn read(path: &Path, role: Role) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        role,
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, role: Role, reason: impl fmt::Display) -> TlsError {
    TlsError::Invalid {
        role,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Every certificate of a PEM file, in file order; at least one.
fn load_certs(path: &Path, role: Role) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, role)?;
    // Other PEM sections (a key bundled with the chain, say) are skipped by the iterator.
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, role, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            path,
            role,
            "no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)",
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, Role::Key)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => invalid(
            path,
            Role::Key,
            "no private key in it (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" \
             or \"BEGIN EC PRIVATE KEY\" block)",
        ),
        other => invalid(path, Role::Key, format!("bad PEM: {other}")),
    })
}

/// The CA certificates of a PEM file as a root store; every one must be usable as a CA.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = load_certs(path, Role::Ca)?;
    let total = certs.len();
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        // A half-usable CA file would admit some peers and not others: refuse it whole.
        roots.add(cert).map_err(|e| {
            invalid(
                path,
                Role::Ca,
                format!(
                    "certificate {} of {total} is not usable as a CA: {e}",
                    i + 1
                ),
            )
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        }
    }

    /// A CA, and a leaf for 127.0.0.1 it signed: (ca pem, leaf pem, leaf key pem).
    fn pki() -> (String, String, String) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer =
            CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("ca");
        let leaf_key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf");
        (issuer.pem(), leaf.pem(), leaf_key.serialize_pem())
    }

    fn server_error(cert: &Path, key: &Path, ca: Option<&Path>) -> TlsError {
        match server_config(cert, key, ca) {
            Ok(_) => panic!("setup should fail"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_matching_pair_and_ca_build() {
        let f = Files::new();
        let (ca, leaf, key) = pki();
        let (cert, key, ca) = (
            f.write("c.pem", &leaf),
            f.write("k.pem", &key),
            f.write("ca.pem", &ca),
        );
        let config = server_config(&cert, &key, Some(&ca)).expect("builds");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(server_config(&cert, &key, None).is_ok());
        assert!(client_config(&ca, Some((&cert, &key))).is_ok());
    }

    #[test]
    fn each_bad_file_is_named_with_its_role() {
        let f = Files::new();
        let (ca, leaf, key) = pki();
        let (_, _, other_key) = pki();
        let (cert, key, ca) = (
            f.write("c.pem", &leaf),
            f.write("k.pem", &key),
            f.write("ca.pem", &ca),
        );
        let missing = f.dir.path().join("missing.pem");
        let junk = f.write("junk.pem", "not pem\n");

        let e = server_error(&missing, &key, None);
        assert_eq!(e.role(), Role::Cert);
        assert!(e.to_string().starts_with("cannot read "), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let e = server_error(&junk, &key, None);
        assert_eq!(e.role(), Role::Cert);
        assert!(e.to_string().contains("no certificate in it"), "{e}");

        let e = server_error(&cert, &junk, None);
        assert_eq!(e.role(), Role::Key);
        assert!(e.to_string().contains("no private key in it"), "{e}");

        // A certificate file is not a key file.
        let e = server_error(&cert, &cert, None);
        assert_eq!(e.role(), Role::Key);

        let wrong = f.write("wrong.pem", &other_key);
        let e = server_error(&cert, &wrong, None);
        assert_eq!(e.role(), Role::Key);
        assert!(e.to_string().contains("does not go with"), "{e}");

        let e = server_error(&cert, &key, Some(&junk));
        assert_eq!(e.role(), Role::Ca);
        let broken = f.write(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let e = server_error(&cert, &key, Some(&broken));
        assert_eq!(e.role(), Role::Ca);
        assert!(e.to_string().contains("not usable as a CA"), "{e}");
        assert!(server_config(&cert, &key, Some(&ca)).is_ok());
    }
}
