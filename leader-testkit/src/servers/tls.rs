//! A throwaway CA and a certificate for loopback servers, generated at test
//! time (rcgen), as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use super::server_dir;
use crate::error::{Error, Result};

/// A fresh CA and a certificate it signed for `127.0.0.1` and `localhost`
/// (usable by servers and clients), written as PEM files into a folder that
/// is removed when this drops.
#[derive(Debug)]
pub struct TlsFiles {
    /// The CA certificate: what clients trust.
    pub ca: PathBuf,
    /// The certificate for 127.0.0.1 / localhost.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    dir: TempDir,
}

fn tls_error(what: &str, e: rcgen::Error) -> Error {
    Error::io(
        format!("generating a test {what}"),
        std::io::Error::other(e.to_string()),
    )
}

impl TlsFiles {
    /// Generates the CA and the certificate.
    ///
    /// # Errors
    ///
    /// Key generation or signing failed, or the files cannot be written.
    pub fn generate() -> Result<TlsFiles> {
        let dir = server_dir("tls")?;
        let ca_key = KeyPair::generate().map_err(|e| tls_error("CA key", e))?;
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_error("CA", e))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "leader-testkit CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|e| tls_error("CA", e))?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().map_err(|e| tls_error("key", e))?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(|e| tls_error("certificate", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| tls_error("certificate", e))?;
        Ok(TlsFiles {
            ca: write(dir.path(), "ca.pem", &ca_cert.pem())?,
            cert: write(dir.path(), "server.pem", &cert.pem())?,
            key: write(dir.path(), "server.key", &key.serialize_pem())?,
            dir,
        })
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, pem).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}
