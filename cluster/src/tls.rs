//! Mutual TLS on the cluster port.
//!
//! The cookie authenticates peers but leaves the traffic in clear text; with TLS every session
//! is encrypted and both ends present a certificate signed by the cluster's CA. Members dial
//! each other by address, so certificates are checked against one shared name (default
//! [`DEFAULT_TLS_NAME`]) rather than per-host names: holding a CA-signed certificate for that
//! name is what makes a process a member, on top of knowing the cookie.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The name every member's certificate must carry (as a DNS subject alternative name) unless
/// configured otherwise.
pub const DEFAULT_TLS_NAME: &str = "bunting-cluster";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{path} holds no {what}")]
    Empty { what: &'static str, path: PathBuf },
    #[error("{0:?} is not a valid TLS server name")]
    Name(String),
    #[error("invalid TLS setup: {0}")]
    Config(String),
}

/// Both sides of the cluster port's TLS: accepting peers and dialling them.
#[derive(Clone)]
pub struct ClusterTls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) connector: TlsConnector,
    pub(crate) name: ServerName<'static>,
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(e: impl fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

impl ClusterTls {
    /// Mutual TLS from PEM files: this node's certificate chain and private key, and the CA
    /// certificate(s) that every member's certificate must chain to. Certificates are checked
    /// against `name` ([`DEFAULT_TLS_NAME`] when `None`).
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        ca: &Path,
        name: Option<&str>,
    ) -> Result<ClusterTls, TlsError> {
        fn pem(
            what: &'static str,
            path: &Path,
        ) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + use<> {
            let path = path.to_path_buf();
            move |e| TlsError::Pem {
                what,
                path: path.clone(),
                message: e.to_string(),
            }
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(pem("a certificate chain", cert))?
            .collect::<Result<_, _>>()
            .map_err(pem("a certificate chain", cert))?;
        if chain.is_empty() {
            return Err(TlsError::Empty {
                what: "certificate",
                path: cert.to_path_buf(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(pem("a private key", key))?;
        let mut roots = RootCertStore::empty();
        for ca_cert in CertificateDer::pem_file_iter(ca).map_err(pem("CA certificates", ca))? {
            roots
                .add(ca_cert.map_err(pem("CA certificates", ca))?)
                .map_err(config_error)?;
        }
        if roots.is_empty() {
            return Err(TlsError::Empty {
                what: "CA certificate",
                path: ca.to_path_buf(),
            });
        }
        ClusterTls::new(chain, key, roots, name.unwrap_or(DEFAULT_TLS_NAME))
    }

    /// Mutual TLS from parsed parts; see [`ClusterTls::from_pem_files`].
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: RootCertStore,
        name: &str,
    ) -> Result<ClusterTls, TlsError> {
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|_| TlsError::Name(name.to_string()))?;
        let roots = Arc::new(roots);
        let verifier = Arc::new(NamedClientVerifier {
            inner: WebPkiClientVerifier::builder_with_provider(roots.clone(), ring())
                .build()
                .map_err(config_error)?,
            name: server_name.clone(),
        });
        let server = ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_error)?;
        let client = ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config_error)?;
        Ok(ClusterTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            name: server_name,
        })
    }
}

/// Checks a dialling peer's certificate as webpki does (chained to the cluster's CA) and also
/// against the cluster name, as the dialling side checks the accepting one: otherwise any
/// certificate the CA signed, for whatever name, would be let in on inbound connections.
#[derive(Debug)]
struct NamedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    name: ServerName<'static>,
}

impl ClientCertVerifier for NamedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        rustls::client::verify_server_name(&ParsedCertificate::try_from(end_entity)?, &self.name)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let missing = Path::new("/nonexistent/bunting/tls/cert.pem");
        let err = ClusterTls::from_pem_files(missing, missing, missing, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent/bunting/tls/cert.pem"),
            "{err}"
        );

        let empty = std::env::temp_dir().join(format!("bunting-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "").unwrap();
        let err = ClusterTls::from_pem_files(&empty, &empty, &empty, None).unwrap_err();
        std::fs::remove_file(&empty).unwrap();
        assert!(
            matches!(
                err,
                TlsError::Empty {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );
    }
}
