//! A tenant's state folder: created on first start, reused after.
//!
//! ```text
//! tls/ca.pem           the CA clients trust (self-signed, made here), and ca.key
//! tls/server.pem       the HTTPS certificate (SAN: 127.0.0.1, localhost, the configured names), and server.key
//! tenant.db            the directory (SQLite; not used with PostgreSQL)
//! ```
//! Private keys are written 0600. A given certificate (`--tls-cert`/`--tls-key`) replaces the
//! generated one.
//!
//! The tenant's identity (id, initial domain) and its token-signing key live in the database, so
//! every process behind one PostgreSQL signs and checks the same tokens. Tenants made before
//! that kept them here (`tenant.json`, `signing.p8`): those files are read once and moved into
//! the database.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use serde::{Deserialize, Serialize};

use crate::crypto::SigningKey;

/// Why the state folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing a file.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is there but unusable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io { what, path: path.to_path_buf(), source }
}

/// `tenant.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The tenant id (a GUID).
    pub tenant_id: String,
    /// The initial domain, e.g. `contoso.isthmus.local`.
    pub initial_domain: String,
}

/// What a tenant loads from its folder.
pub struct Loaded {
    /// Tenant id and initial domain, from an older tenant's `tenant.json`.
    pub legacy_identity: Option<Identity>,
    /// The token-signing key (PKCS#8), from an older tenant's `signing.p8`.
    pub legacy_signing: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// The HTTPS certificate (PEM).
    pub cert_pem: PathBuf,
    /// Its key (PEM).
    pub key_pem: PathBuf,
    /// The CA clients should trust (the generated one).
    pub ca_pem: PathBuf,
    /// The directory database file (SQLite).
    pub db_path: PathBuf,
    /// Names and addresses asked for that the HTTPS certificate does not cover (it is made on
    /// first start only, or given by the operator).
    pub uncovered: Vec<String>,
}

/// A new tenant's identity: a fresh id, `<name>.isthmus.local`.
pub fn new_identity(name: &str) -> Identity {
    Identity { tenant_id: crate::crypto::new_guid(), initial_domain: format!("{}.isthmus.local", name.to_lowercase()) }
}

/// Opens (creating on first use) the state folder, with a server certificate for `hosts`
/// besides 127.0.0.1 and localhost.
pub fn open(dir: &Path, hosts: &[String]) -> Result<Loaded, StateError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir.join("tls")).map_err(io("create", dir))?;
    // Password hashes and keys live here: only the service account may enter.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io("chmod", dir))?;
    let identity_path = dir.join("tenant.json");
    let legacy_identity = if identity_path.exists() {
        let text = std::fs::read_to_string(&identity_path).map_err(io("read", &identity_path))?;
        Some(serde_json::from_str(&text).map_err(|err| StateError::Invalid { path: identity_path.clone(), message: err.to_string() })?)
    } else {
        None
    };
    let signing_path = dir.join("signing.p8");
    let legacy_signing = if signing_path.exists() {
        let pkcs8 = zeroize::Zeroizing::new(std::fs::read(&signing_path).map_err(io("read", &signing_path))?);
        SigningKey::from_pkcs8(&pkcs8).map_err(|message| StateError::Invalid { path: signing_path.clone(), message })?;
        Some(pkcs8)
    } else {
        None
    };

    let ca_pem = dir.join("tls").join("ca.pem");
    let cert_pem = dir.join("tls").join("server.pem");
    let key_pem = dir.join("tls").join("server.key");
    if !cert_pem.exists() || !key_pem.exists() {
        issue_certificates(&dir.join("tls"), hosts)?;
    }
    // Fail early on unusable files (a given certificate), before the database is touched.
    server_config(&cert_pem, &key_pem, None)?;
    let uncovered = uncovered(&cert_pem, hosts);
    Ok(Loaded { legacy_identity, legacy_signing, cert_pem, key_pem, ca_pem, db_path: dir.join("tenant.db"), uncovered })
}

/// The names and addresses of `hosts` the certificate in `cert_pem` is not valid for.
fn uncovered(cert_pem: &Path, hosts: &[String]) -> Vec<String> {
    use rustls::pki_types::pem::PemObject;
    let Some(Ok(der)) = rustls::pki_types::CertificateDer::pem_file_iter(cert_pem).ok().and_then(|mut certs| certs.next()) else {
        return hosts.to_vec();
    };
    let Ok(certificate) = webpki::EndEntityCert::try_from(&der) else { return hosts.to_vec() };
    hosts
        .iter()
        .filter(|host| {
            let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string());
            !name.is_ok_and(|name| certificate.verify_is_valid_for_subject_name(&name).is_ok())
        })
        .cloned()
        .collect()
}

/// Removes the files an older tenant kept its identity and key in, once the database holds them.
pub fn forget_legacy(dir: &Path) {
    for name in ["tenant.json", "signing.p8"] {
        let path = dir.join(name);
        if path.exists() {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(file = %path.display(), "moved into the database"),
                Err(err) => tracing::warn!(file = %path.display(), "could not remove after moving into the database: {err}"),
            }
        }
    }
}

fn issue_certificates(dir: &Path, hosts: &[String]) -> Result<(), StateError> {
    let bad = |err: rcgen::Error| StateError::Invalid { path: dir.to_path_buf(), message: err.to_string() };
    let ca_key = KeyPair::generate().map_err(bad)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Isthmus tenant local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(bad)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec!["localhost".to_string()];
    names.extend(hosts.iter().filter(|host| host.parse::<IpAddr>().is_err()).cloned());
    let key = KeyPair::generate().map_err(bad)?;
    let mut params = CertificateParams::new(names).map_err(bad)?;
    params.subject_alt_names.push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
    for host in hosts {
        if let Ok(ip) = host.parse::<IpAddr>() {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
    }
    params.distinguished_name.push(DnType::CommonName, "Isthmus tenant");
    let cert = params.signed_by(&key, &issuer).map_err(bad)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).map_err(io("write", &dir.join("ca.pem")))?;
    write_private(&dir.join("ca.key"), ca_key_pem.as_bytes())?;
    std::fs::write(dir.join("server.pem"), cert.pem()).map_err(io("write", &dir.join("server.pem")))?;
    write_private(&dir.join("server.key"), key.serialize_pem().as_bytes())?;
    Ok(())
}

/// rustls server settings from PEM files. With `agent_ca` (DER), clients may present a
/// certificate issued by it (pass-through agents, mutual TLS); clients without one (browsers,
/// MSAL, the sync) are served as before, and a certificate from any other issuer is refused.
pub fn server_config(cert_pem: &Path, key_pem: &Path, agent_ca: Option<&[u8]>) -> Result<Arc<rustls::ServerConfig>, StateError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |path: &Path, message: String| StateError::Invalid { path: path.to_path_buf(), message };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .map_err(|err| invalid(cert_pem, err.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|err| invalid(cert_pem, err.to_string()))?;
    if certs.is_empty() {
        return Err(invalid(cert_pem, "holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|err| invalid(key_pem, err.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid(cert_pem, err.to_string()))?;
    let builder = match agent_ca {
        Some(der) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from(der.to_vec())).map_err(|err| invalid(cert_pem, format!("the agent CA: {err}")))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|err| invalid(cert_pem, format!("the agent CA: {err}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|err| invalid(key_pem, err.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io("write", path))?;
    file.write_all(contents).map_err(io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_covers_the_names_of_the_first_start_and_says_which_later_ones_it_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path(), &["login.contoso.example".to_string(), "127.0.0.254".to_string()]).unwrap();
        assert!(first.uncovered.is_empty(), "{:?}", first.uncovered);
        let later =
            open(dir.path(), &["login.contoso.example".to_string(), "sso.contoso.example".to_string(), "10.0.0.9".to_string()]).unwrap();
        assert_eq!(later.uncovered, ["sso.contoso.example", "10.0.0.9"]);
    }
}
