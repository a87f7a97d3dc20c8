//! A TLS-only etcd with a throwaway CA generated at test time (rcgen).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use leader_testkit::servers::free_port;

/// A CA that can sign server and client certificates.
pub struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
pub struct Signed {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    /// A fresh self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for 127.0.0.1 and localhost, for servers and clients.
    pub fn sign(&self, common_name: &str) -> Signed {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Signed {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A single-member etcd serving clients over TLS only.
pub struct TlsEtcd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a PEM file");
    path
}

impl TlsEtcd {
    /// Starts it with a server certificate from `ca`; with `client_auth`,
    /// clients must present a certificate signed by `ca`. Readiness is
    /// awaited by the caller (it needs a TLS client).
    pub fn start(ca: &TestCa, client_auth: bool) -> TlsEtcd {
        let dir = tempfile::Builder::new()
            .prefix("leader-etcd-tls-")
            .tempdir()
            .expect("temp dir");
        let server = ca.sign("etcd");
        let ca_file = write(dir.path(), "ca.pem", ca.pem());
        let cert = write(dir.path(), "server.pem", &server.cert);
        let key = write(dir.path(), "server.key", &server.key);
        let port = free_port().expect("a free port");
        let peer = free_port().expect("a free port");
        let client_url = format!("https://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "n1"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("n1={peer_url}")])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .arg("--cert-file")
            .arg(&cert)
            .arg("--key-file")
            .arg(&key)
            .args(["--logger=zap", "--log-outputs=stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if client_auth {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&ca_file);
        }
        // A missing binary is a failure, never a skip.
        let child = cmd
            .spawn()
            .expect("start etcd (Debian package etcd-server must be installed)");
        TlsEtcd {
            child,
            port,
            dir,
            ca_file,
        }
    }

    /// Writes `text` into this server's folder and returns the path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        write(self.dir.path(), name, text)
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
