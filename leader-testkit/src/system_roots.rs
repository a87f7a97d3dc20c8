//! Checks that a store trusts a CA from the *system* certificate store.
//!
//! rustls-native-certs reads `SSL_CERT_FILE` when it loads the system store,
//! and the variable is process-wide, so the check runs in a child process:
//! the test binary again, running only one `#[ignore]`d entry point with
//! `--ignored`. The entry point reads the store URL with [`child_url`], which
//! fails when it is run on its own, so it can never pass as a test by doing
//! nothing.

use std::path::Path;
use std::time::Duration;

/// The variable that carries the store URL to the child.
pub const URL_VAR: &str = "LEADER_TEST_SYSTEM_ROOTS_URL";

/// The line the child prints once it has connected and acquired.
pub const CHILD_OK: &str = "SYSTEM ROOTS OK";

/// Runs the `#[ignore]`d test `child` of this test binary with `SSL_CERT_FILE`
/// = `ca` (and no other CA source: `SSL_CERT_DIR` and `unset` removed) and
/// [`URL_VAR`] = `url`, and panics unless it printed [`CHILD_OK`].
pub async fn run_child(child: &str, ca: &Path, url: &str, unset: &[&str]) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = tokio::process::Command::new(exe);
    command
        .args([
            "--exact",
            child,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SSL_CERT_FILE", ca)
        .env_remove("SSL_CERT_DIR")
        .env(URL_VAR, url)
        .kill_on_drop(true);
    for var in unset {
        command.env_remove(var);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the child process finishes")
        .expect("run the child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(CHILD_OK),
        "the child did not connect through the system store ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The store URL in the child; panics when the test runs on its own.
pub fn child_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!("{URL_VAR} is not set: this entry point is run by system_roots::run_child")
    })
}
