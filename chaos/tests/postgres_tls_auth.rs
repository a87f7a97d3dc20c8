//! Postgres over TLS with `sslmode=verify-full` against certificates
//! generated at test time (rcgen), a wrong CA refused, and password
//! (SCRAM) authentication with the right and a wrong password. The password
//! never shows in the errors.
//!
//! (Here rather than in leader-postgres/tests because it needs rcgen and
//! sqlx as dev-dependencies, which that crate does not have.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use leader::{Acquire, ErrorKind, HolderId, LeaseKey, LeaseStore};
use leader_testkit::servers::PostgresServer;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sqlx::{Connection, PgConnection};

const PASSWORD: &str = "right-Pass-Zq9";

/// A throwaway CA: its PEM and what signs with it.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}

/// A server certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
fn server_cert(ca: &Issuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "postgres test server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, ca)
        .expect("sign the server certificate");
    (cert.pem(), key.serialize_pem())
}

/// The uid and gid of `postgres` (the server runs as it when tests run as root).
fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres"))
            .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
            .flatten()
    })
}

/// Writes a file the server can read (owned by it, 0600 for the key).
fn write_for_server(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write a server TLS file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    if nix::unistd::geteuid().is_root() {
        let (uid, gid) = postgres_ids().expect("the postgres user exists (Debian: postgresql)");
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
    }
}

struct TlsPostgres {
    server: PostgresServer,
    ca_file: PathBuf,
    wrong_ca_file: PathBuf,
    _files: tempfile::TempDir,
}

/// A private Postgres switched to TLS and SCRAM password authentication on
/// TCP (ssl on, a server certificate from a fresh CA, a password for
/// `postgres`, pg_hba requiring it), via its own trust connection.
async fn tls_postgres() -> TlsPostgres {
    let server = PostgresServer::start()
        .await
        .expect("postgres (Debian: postgresql)");
    let mut admin = PgConnection::connect(server.url())
        .await
        .expect("admin connection");
    let data_dir: String = sqlx::query_scalar("SHOW data_directory")
        .fetch_one(&mut admin)
        .await
        .expect("data directory");
    let hba_file: String = sqlx::query_scalar("SHOW hba_file")
        .fetch_one(&mut admin)
        .await
        .expect("hba file");
    let (ca_pem, ca) = new_ca("leader test CA");
    let (wrong_pem, _) = new_ca("some other CA");
    let (cert, key) = server_cert(&ca);
    let data = Path::new(&data_dir);
    write_for_server(&data.join("server.crt"), &cert);
    write_for_server(&data.join("server.key"), &key);
    let files = tempfile::tempdir().expect("a folder for the client's CA files");
    let ca_file = files.path().join("ca.crt");
    let wrong_ca_file = files.path().join("wrong-ca.crt");
    std::fs::write(&ca_file, ca_pem).expect("write the CA");
    std::fs::write(&wrong_ca_file, wrong_pem).expect("write the wrong CA");
    // Unix socket stays trusted (the admin's way in); TCP needs the password.
    let hba = "local all all trust\n\
               hostssl all all 127.0.0.1/32 scram-sha-256\n\
               hostnossl all all 127.0.0.1/32 scram-sha-256\n";
    write_for_server(Path::new(&hba_file), hba);
    for statement in [
        "ALTER SYSTEM SET ssl = 'on'".to_owned(),
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'".to_owned(),
        "ALTER SYSTEM SET ssl_key_file = 'server.key'".to_owned(),
        "SET password_encryption = 'scram-sha-256'".to_owned(),
        format!("ALTER USER postgres PASSWORD '{PASSWORD}'"),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        // Test-built statements (constants and a constant password).
        sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    // The reload is asynchronous: wait until a new session sees ssl on.
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = format!(
        "postgres://postgres:{PASSWORD}@{}/postgres?sslmode=require",
        server.addr()
    );
    loop {
        if let Ok(mut c) = PgConnection::connect(&url).await {
            let on: String = sqlx::query_scalar("SHOW ssl")
                .fetch_one(&mut c)
                .await
                .expect("SHOW ssl");
            if on == "on" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Postgres did not turn TLS on within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    TlsPostgres {
        server,
        ca_file,
        wrong_ca_file,
        _files: files,
    }
}

fn store(url: &str) -> std::sync::Arc<dyn LeaseStore> {
    leader::connect(url).expect("a valid Postgres URL")
}

fn key() -> LeaseKey {
    LeaseKey::new("tls-auth:", "resource").expect("key")
}

fn holder() -> HolderId {
    HolderId::new("tls-auth-test").expect("holder")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_and_password_works_a_wrong_ca_or_password_is_refused() {
    let pg = tls_postgres().await;
    let addr = pg.server.addr();
    let verify_full = |ca: &Path, password: &str| {
        format!(
            "postgres://postgres:{password}@{addr}/postgres?sslmode=verify-full&sslrootcert={}",
            ca.display()
        )
    };
    let ttl = Duration::from_secs(5);

    // Right CA, right password: a full lease cycle over TLS.
    let good = store(&verify_full(&pg.ca_file, PASSWORD));
    let outcome = good
        .acquire(&key(), &holder(), ttl)
        .await
        .expect("acquire over TLS");
    let Acquire::Acquired(lease) = outcome else {
        panic!("the key is free: {outcome:?}");
    };
    let info = good.current(&key()).await.expect("current").expect("held");
    assert_eq!(info.holder, holder());
    good.renew(&lease).await.expect("renew over TLS");
    assert!(good.release(&lease).await.expect("release over TLS"));

    // The session really is encrypted.
    let mut c = PgConnection::connect(&verify_full(&pg.ca_file, PASSWORD))
        .await
        .expect("a verify-full connection");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut c)
            .await
            .expect("pg_stat_ssl");
    assert!(encrypted, "verify-full connected without TLS");

    // A CA that did not sign the server's certificate: refused, typed, no panic.
    let wrong_ca = store(&verify_full(&pg.wrong_ca_file, PASSWORD));
    let err = wrong_ca
        .acquire(&key(), &holder(), ttl)
        .await
        .expect_err("a server certificate from another CA must be refused");
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Auth),
        "wrong CA: {:?} {err}",
        err.kind()
    );

    // A wrong password, over TLS and without it: Auth, and never echoed.
    for url in [
        verify_full(&pg.ca_file, "wrong-Pass-Zq9"),
        format!("postgres://postgres:wrong-Pass-Zq9@{addr}/postgres?sslmode=disable"),
    ] {
        let err = store(&url)
            .acquire(&key(), &holder(), ttl)
            .await
            .expect_err("a wrong password must be refused");
        assert_eq!(err.kind(), ErrorKind::Auth, "{url}: {err}");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("wrong-Pass-Zq9"),
            "the password shows: {shown}"
        );
    }

    // No password at all where one is required: Auth too.
    let err = store(&format!(
        "postgres://postgres@{addr}/postgres?sslmode=require"
    ))
    .acquire(&key(), &holder(), ttl)
    .await
    .expect_err("a missing password must be refused");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");

    // The right password without TLS works too (hostnossl entry).
    let plain = store(&format!(
        "postgres://postgres:{PASSWORD}@{addr}/postgres?sslmode=disable"
    ));
    let outcome = plain
        .acquire(&key(), &holder(), ttl)
        .await
        .expect("acquire without TLS");
    let Acquire::Acquired(lease) = outcome else {
        panic!("the key is free: {outcome:?}");
    };
    assert!(plain.release(&lease).await.expect("release"));
}

/// Set by [`verify_full_trusts_a_ca_in_the_system_store_without_sslrootcert`]
/// for the child process it starts: the URL that child connects to.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_trusts_a_ca_in_the_system_store_without_sslrootcert() {
    let pg = tls_postgres().await;
    let url = format!(
        "postgres://postgres:{PASSWORD}@{}/postgres?sslmode=verify-full",
        pg.server.addr()
    );
    // Control: this process's system store does not hold the test CA.
    let err = store(&url)
        .acquire(&key(), &holder(), Duration::from_secs(5))
        .await
        .expect_err("the test CA is not in this process's system store");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    leader_testkit::system_roots::run_child(
        "system_roots_child",
        &pg.ca_file,
        &url,
        &["PGSSLROOTCERT"],
    )
    .await;
}

/// Not a check on its own: the child process of
/// `verify_full_trusts_a_ca_in_the_system_store_without_sslrootcert`, started
/// by `leader_testkit::system_roots::run_child`.
#[tokio::test]
#[ignore = "run by the system-roots test in a child process with SSL_CERT_FILE set"]
async fn system_roots_child() {
    let url = leader_testkit::system_roots::child_url();
    let good = store(&url);
    let outcome = good
        .acquire(&key(), &holder(), Duration::from_secs(5))
        .await
        .expect("acquire over verify-full TLS");
    let Acquire::Acquired(lease) = outcome else {
        panic!("the key is free: {outcome:?}");
    };
    assert!(good.release(&lease).await.expect("release over TLS"));
    println!("{}", leader_testkit::system_roots::CHILD_OK);
}
