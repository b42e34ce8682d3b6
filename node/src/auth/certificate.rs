//! Client certificates as callers (`[tls] client_ca` with `[[auth.certificates]]`).
//!
//! With `client_ca` set, rustls accepts a TLS connection only with a client certificate signed by
//! that CA (chain and validity checked during the handshake), so by the time a request reaches
//! the auth layer its certificate is verified. What it may do is configuration: each
//! `[[auth.certificates]]` entry maps one subject (the certificate's full subject DN, e.g.
//! `CN=deployer` or `CN=deployer, O=Acme`) to scopes and flag sets, and becomes a [`Principal`]
//! named `cert:<subject>` (what the audit log records). A subject no entry names has no scopes:
//! the certificate gets it onto the port, nothing more.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::transport::server::TlsConnectInfo;

use super::principal::{FlagSets, Principal, PrincipalId};
use super::scope::Scopes;
use crate::config::CertificateGrant;
use crate::edge::EdgeConnectInfo;

/// A subject longer than this is not one an operator wrote into a config; it is not looked up,
/// and not quoted back in full.
pub const MAX_SUBJECT_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateGrantError {
    #[error("auth.certificates: subject {subject:?}: {problem}")]
    Invalid { subject: String, problem: String },
    #[error("auth.certificates: subject {0:?} is listed twice")]
    Duplicate(String),
}

/// The subjects the node knows, and what each may do. Read once at start-up.
#[derive(Debug, Default)]
pub struct Certificates {
    by_subject: HashMap<String, Arc<Principal>>,
}

impl Certificates {
    pub fn from_config(grants: &[CertificateGrant]) -> Result<Certificates, CertificateGrantError> {
        let mut by_subject = HashMap::new();
        for grant in grants {
            let invalid = |problem: String| CertificateGrantError::Invalid {
                subject: grant.subject.clone(),
                problem,
            };
            let subject = grant.subject.trim();
            if subject.is_empty() || subject.len() > MAX_SUBJECT_BYTES {
                return Err(invalid(format!(
                    "a subject is 1 to {MAX_SUBJECT_BYTES} bytes, e.g. \"CN=deployer\""
                )));
            }
            let scopes = Scopes::parse(grant.scopes.iter().map(String::as_str))
                .map_err(|e| invalid(e.to_string()))?;
            if scopes.is_empty() {
                return Err(invalid("needs at least one scope".to_owned()));
            }
            let flag_sets = match &grant.flag_sets {
                None => FlagSets::All,
                Some(sets) if sets.is_empty() => {
                    return Err(invalid(
                        "flag_sets is empty; leave it out for every set".to_owned(),
                    ));
                }
                Some(sets) => FlagSets::Only(sets.iter().cloned().collect()),
            };
            let principal = Principal {
                id: PrincipalId::Certificate(subject.into()),
                name: format!("cert:{subject}"),
                scopes,
                flag_sets,
                // The certificate's own validity is checked by rustls at the handshake.
                expires_at: None,
            };
            if by_subject
                .insert(subject.to_owned(), Arc::new(principal))
                .is_some()
            {
                return Err(CertificateGrantError::Duplicate(subject.to_owned()));
            }
        }
        Ok(Certificates { by_subject })
    }

    pub fn is_empty(&self) -> bool {
        self.by_subject.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_subject.len()
    }

    /// The principal `subject` maps to, if any.
    pub fn principal(&self, subject: &str) -> Option<Arc<Principal>> {
        self.by_subject.get(subject).cloned()
    }
}

/// The subject DN of a DER certificate, attributes in certificate order, `, ` between them
/// (`CN=deployer, O=Acme`); `None` if it cannot be parsed (rustls verified it, so that is a
/// certificate with a name x509-parser cannot render, which then maps to nobody).
pub fn subject_of(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    certificate
        .subject()
        .to_string_with_registry(x509_parser::objects::oid_registry())
        .ok()
}

/// The verified client certificate's subject on the connection a request came in on: the first
/// (end-entity) certificate of the chain the client presented. `None` on a connection without
/// TLS or without a client certificate.
pub fn peer_subject(extensions: &http::Extensions) -> Option<String> {
    let info = extensions.get::<TlsConnectInfo<EdgeConnectInfo>>()?;
    let certs = info.peer_certs()?;
    subject_of(certs.first()?.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::Scope;

    fn grant(subject: &str, scopes: &[&str], sets: Option<&[&str]>) -> CertificateGrant {
        CertificateGrant {
            subject: subject.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            flag_sets: sets.map(|s| s.iter().map(|x| (*x).to_owned()).collect()),
        }
    }

    #[test]
    fn grants_become_principals_named_by_subject() {
        let certs = Certificates::from_config(&[
            grant(
                "CN=deployer",
                &["flags:write", "flags:read"],
                Some(&["shop"]),
            ),
            grant("CN=ops, O=Acme", &["cluster:read"], None),
        ])
        .unwrap();
        let deployer = certs.principal("CN=deployer").unwrap();
        assert_eq!(deployer.name, "cert:CN=deployer");
        assert!(deployer.scopes.contains(Scope::FlagsWrite));
        assert!(!deployer.scopes.contains(Scope::TokensAdmin));
        assert!(deployer.flag_sets.allows("shop") && !deployer.flag_sets.allows("billing"));
        assert_eq!(
            certs.principal("CN=ops, O=Acme").unwrap().flag_sets,
            FlagSets::All
        );
        for unknown in ["CN=Deployer", "CN=ops", "", "CN=deployer, O=Acme"] {
            assert!(certs.principal(unknown).is_none(), "{unknown}");
        }
    }

    #[test]
    fn bad_grants_are_refused_by_subject() {
        let cases: &[(Vec<CertificateGrant>, &str)] = &[
            (vec![grant("CN=a", &["flags:admin"], None)], "flags:admin"),
            (vec![grant("CN=a", &[], None)], "at least one scope"),
            (vec![grant("CN=a", &["evaluate"], Some(&[]))], "flag_sets"),
            (vec![grant(" ", &["evaluate"], None)], "1 to"),
            (
                vec![
                    grant("CN=a", &["evaluate"], None),
                    grant("CN=a", &["sync"], None),
                ],
                "twice",
            ),
        ];
        for (grants, expected) in cases {
            let error = Certificates::from_config(grants).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn the_subject_is_read_from_the_certificate() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "deployer");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_of(cert.der()).as_deref(),
            Some("CN=deployer, O=Acme")
        );
        assert_eq!(subject_of(b"not a certificate"), None);
    }
}
