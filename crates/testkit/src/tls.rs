//! Test certificates: a private CA per server and a server certificate for its loopback address.
//!
//! Servers get certificates whose subjectAltName holds both their DNS name and their IP address,
//! so clients verify them normally; nothing in the kit turns verification off.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

use crate::{Error, Result, io_err};

/// PEM files of a CA and a server certificate it issued.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate; clients trust this.
    pub ca_pem: PathBuf,
    /// The server certificate.
    pub cert_pem: PathBuf,
    /// The server's private key.
    pub key_pem: PathBuf,
}

/// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir` for a server known as `dns_name` at `ip`.
pub fn issue_server_cert(dir: &Path, dns_name: &str, ip: Ipv4Addr) -> Result<TlsFiles> {
    let cert_err = |err: rcgen::Error| Error::Certificate(err.to_string());
    let ca_key = KeyPair::generate().map_err(cert_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("Isthmus test CA for {dns_name}"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(vec![dns_name.to_string()]).map_err(cert_err)?;
    params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(ip)));
    params.distinguished_name.push(DnType::CommonName, dns_name);
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;

    std::fs::create_dir_all(dir).map_err(io_err("create TLS folder", dir))?;
    let files = TlsFiles { ca_pem: dir.join("ca.pem"), cert_pem: dir.join("cert.pem"), key_pem: dir.join("key.pem") };
    write_private(&files.ca_pem, &ca_cert.pem())?;
    write_private(&files.cert_pem, &cert.pem())?;
    write_private(&files.key_pem, &key.serialize_pem())?;
    Ok(files)
}

/// A rustls client configuration that trusts only the CA in `ca_pem`.
pub fn client_config(ca_pem: &Path) -> Result<Arc<rustls::ClientConfig>> {
    Ok(Arc::new(client_builder(ca_pem)?.with_no_client_auth()))
}

/// The same, presenting a client certificate (mutual TLS): `cert_pem` (the chain, leaf first)
/// and its private key `key_pem`.
pub fn client_config_with_certificate(ca_pem: &Path, cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let bad = |err: &dyn std::fmt::Display| Error::Certificate(format!("client certificate: {err}"));
    let chain =
        rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem).collect::<std::result::Result<Vec<_>, _>>().map_err(|err| bad(&err))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| bad(&err))?;
    client_builder(ca_pem)?.with_client_auth_cert(chain, key).map_err(|err| bad(&err))
}

fn client_builder(ca_pem: &Path) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem)
        .map_err(|err| Error::Certificate(format!("{}: {err}", ca_pem.display())))?
    {
        let cert = cert.map_err(|err| Error::Certificate(format!("{}: {err}", ca_pem.display())))?;
        roots.add(cert).map_err(|err| Error::Certificate(err.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Certificate(err.to_string()))?
        .with_root_certificates(roots))
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).map_err(io_err("write certificate", path))?;
    // Samba refuses a key file that others can read.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err("chmod certificate", path))
}
