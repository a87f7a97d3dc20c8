//! A private Postgres, copied from a template data folder that `initdb`
//! creates once per machine (initdb takes about 0.5 s; a copy is far less).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::OnceCell;

use super::binaries::find_binary;
use super::probe::Probe;
use super::process::Spec;
use super::{Recipe, Server, server_dir, server_kind};
use crate::error::{Error, Result};

/// The user that runs Postgres when the test runs as root (`initdb` and
/// `postgres` refuse root).
const PG_USER: &str = "postgres";

/// A private Postgres (trust auth, user and database `postgres`, fsync off)
/// owned by the test, or an external one from `LEADER_TEST_POSTGRES_URL`.
/// Dereferences to [`Server`]. Its URL is
/// `postgres://postgres@127.0.0.1:P/postgres`.
#[derive(Debug)]
pub struct PostgresServer(Server);

impl PostgresServer {
    const NAME: &'static str = "postgres";
}

server_kind!(
    PostgresServer,
    start_postgres,
    "LEADER_TEST_POSTGRES_URL",
    5432
);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `(uid, gid)` of `user`, from /etc/passwd.
fn user_ids(user: &str) -> Result<(u32, u32)> {
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| Error::io("reading /etc/passwd", e))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&user))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .ok_or_else(|| Error::Command {
            command: format!("look up user {user}"),
            problem: format!(
                "no user `{user}` in /etc/passwd (the Debian package `postgresql` creates it)"
            ),
        })
}

/// Gives `path` to the Postgres user when running as root.
fn chown_to_pg(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let (uid, gid) = user_ids(PG_USER)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io(format!("chown {} to {PG_USER}", path.display()), e))
}

async fn run(program: &Path, args: &[&std::ffi::OsStr], as_pg: bool, cwd: &Path) -> Result<Output> {
    let shown = format!(
        "{} {}",
        program.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut cmd = if as_pg && is_root() {
        let setpriv = find_binary("setpriv", "util-linux", PostgresServer::ENV_VAR)?;
        let mut cmd = Command::new(setpriv);
        cmd.arg(format!("--reuid={PG_USER}"))
            .arg(format!("--regid={PG_USER}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(program);
        cmd
    } else {
        Command::new(program)
    };
    let output = cmd
        .args(args)
        .current_dir(cwd)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::io(format!("running {shown}"), e))?;
    if !output.status.success() {
        return Err(Error::Command {
            command: shown,
            problem: format!(
                "{}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(output)
}

/// The template data folder for `initdb`'s Postgres version, created once per
/// machine under the temporary folder (built aside, then renamed into place,
/// so a half-made template is never used).
async fn template(initdb: &Path) -> Result<PathBuf> {
    static TEMPLATE: OnceCell<PathBuf> = OnceCell::const_new();
    TEMPLATE
        .get_or_try_init(|| async {
            // `/usr/lib/postgresql/15/bin/initdb` -> "15".
            let version = initdb
                .parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                .and_then(|v| v.to_str())
                .filter(|v| v.chars().all(|c| c.is_ascii_digit()))
                .unwrap_or("local");
            let uid = nix::unistd::geteuid();
            let root = super::scratch_root();
            let final_dir = root.join(format!("leader-testkit-pg{version}-template-u{uid}"));
            if final_dir.join("PG_VERSION").exists() {
                return Ok(final_dir);
            }
            let staging = tempfile::Builder::new()
                .prefix("leader-testkit-pg-initdb-")
                .tempdir_in(&root)
                .map_err(|e| Error::io("creating a folder for initdb", e))?;
            chown_to_pg(staging.path())?;
            let data = staging.path().join("data");
            run(
                initdb,
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-U".as_ref(),
                    "postgres".as_ref(),
                    "--auth=trust".as_ref(),
                    "-E".as_ref(),
                    "UTF8".as_ref(),
                    "--locale=C.UTF-8".as_ref(),
                    "--no-sync".as_ref(),
                ],
                true,
                staging.path(),
            )
            .await?;
            // Another test binary may have won the race: then use its copy.
            if let Err(e) = std::fs::rename(&data, &final_dir)
                && !final_dir.join("PG_VERSION").exists()
            {
                return Err(Error::io(
                    format!("moving the initdb template to {}", final_dir.display()),
                    e,
                ));
            }
            Ok(final_dir)
        })
        .await
        .cloned()
}

async fn start_postgres() -> Result<Server> {
    let env = PostgresServer::ENV_VAR;
    // Resolve symlinks (`/usr/local/bin/initdb`): the real folder names the
    // version and holds the matching `postgres`.
    let initdb = find_binary("initdb", "postgresql", env)?;
    let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
    let program = initdb.with_file_name("postgres");
    if !program.exists() {
        return Err(Error::MissingBinary {
            binary: "postgres",
            package: "postgresql",
            extra: format!(" next to {}", initdb.display()),
            env_var: env,
        });
    }
    let template = template(&initdb).await?;
    let dir = server_dir("postgres")?;
    chown_to_pg(dir.path())?;
    let data = dir.path().join("data");
    let cp = find_binary("cp", "coreutils", env)?;
    run(
        &cp,
        &["-a".as_ref(), template.as_os_str(), data.as_os_str()],
        false,
        dir.path(),
    )
    .await?;
    let recipe = Recipe {
        name: PostgresServer::NAME,
        env_var: env,
        probe: Probe::PostgresStartup,
        ready_within: Duration::from_secs(30),
        ports: 1,
        url: |port| format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        spec: Box::new(move |dir, ports, _attempt| {
            let settings = [
                "listen_addresses=127.0.0.1".to_owned(),
                format!("unix_socket_directories={}", dir.display()),
                // Test data is disposable: skip durability for speed.
                "fsync=off".to_owned(),
                "synchronous_commit=off".to_owned(),
                "full_page_writes=off".to_owned(),
                // Session-bound stores pin a connection per lease; the
                // 32-acquirer case needs headroom over the default 100.
                "max_connections=300".to_owned(),
            ];
            let mut args: Vec<std::ffi::OsString> = vec![
                "-D".into(),
                dir.join("data").into(),
                "-p".into(),
                ports[0].to_string().into(),
            ];
            for s in settings {
                args.push("-c".into());
                args.push(s.into());
            }
            Ok(Spec {
                program: program.clone(),
                args,
                run_as: is_root().then(|| PG_USER.to_owned()),
                cwd: dir.to_owned(),
                log: dir.join("postgres.log"),
            })
        }),
    };
    Server::launch(recipe, dir).await
}
