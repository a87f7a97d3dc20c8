//! The test servers really start, answer, pause, die, come back and clean up.
//!
//! A missing binary fails these tests (never a skip): install
//! `redis-server etcd-server postgresql` (see the README).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use leader_testkit::Error;
use leader_testkit::servers::{EtcdServer, PostgresServer, RedisServer, Server};
use leader_testkit::wait::eventually;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether `pid` still has a /proc entry (a zombie that nobody reaped has one).
fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The children (live or zombie) of `pid`, as /proc/PID/stat lines.
fn children(pid: u32) -> Vec<String> {
    let pid = pid.to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit(')').next() else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(1) == Some(&pid.as_str()) {
            out.push(stat);
        }
    }
    out
}

/// Each of `pids` is gone: not running, not a zombie.
fn assert_all_gone(pids: &[String], what: &str) {
    for stat in pids {
        let pid = stat.split_whitespace().next().expect("pid");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{what}: {stat}"
        );
    }
}

/// Reads Postgres backend messages until ReadyForQuery, within 10 s.
async fn read_until_ready(conn: &mut TcpStream) {
    let read = async {
        loop {
            let mut head = [0u8; 5];
            conn.read_exact(&mut head).await.expect("message header");
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            conn.read_exact(&mut body).await.expect("message body");
            assert_ne!(
                head[0],
                b'E',
                "postgres error: {}",
                String::from_utf8_lossy(&body)
            );
            if head[0] == b'Z' {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("ReadyForQuery within 10 s");
}

/// The whole life cycle of one server: answer, pause, resume, kill,
/// restart on the same port, drop with nothing left behind.
async fn life_cycle(server: &Server) -> (u32, Vec<String>, PathBuf) {
    assert!(!server.is_external());
    assert!(
        server.answers().await,
        "{} answers after start",
        server.name()
    );
    let pid = server.pid().expect("an owned server has a pid");
    let dir = server
        .dir()
        .expect("an owned server has a folder")
        .to_owned();
    let kids = children(pid);

    server.pause().expect("pause");
    // `pause` returns only once the stop has taken effect: kill(2) merely
    // queues SIGSTOP, and a thread running on the other core would answer
    // one more request.
    let states = thread_states(pid);
    assert!(
        !states.is_empty() && states.iter().all(|s| s == "T"),
        "{} returned from pause with threads in states {:?}",
        server.name(),
        states
    );
    assert!(
        !server.answers().await,
        "a paused {} must not answer",
        server.name()
    );
    server.resume().expect("resume");
    eventually(
        Duration::from_secs(10),
        &format!("{} to answer again after resume", server.name()),
        async || server.answers().await,
    )
    .await;

    let started = Instant::now();
    server.kill().await.expect("kill");
    println!(
        "{}: kill and reap took {:?}",
        server.name(),
        started.elapsed()
    );
    assert!(
        !process_exists(pid),
        "killed pid {pid} is gone (and reaped)"
    );
    assert_all_gone(&kids, "a child of the killed server is reaped");
    assert!(server.pid().is_none());
    let refused = TcpStream::connect(server.addr()).await;
    assert!(
        refused.is_err(),
        "a killed {} refuses connections",
        server.name()
    );
    assert!(matches!(server.pause(), Err(Error::NotRunning { .. })));

    let addr = server.addr();
    let started = Instant::now();
    server.restart().await.expect("restart");
    println!(
        "{}: restart after kill answered in {:?}",
        server.name(),
        started.elapsed()
    );
    assert_eq!(server.addr(), addr, "restart keeps the port");
    assert!(server.answers().await);
    let new_pid = server.pid().expect("restarted");
    assert_ne!(new_pid, pid);
    (new_pid, children(new_pid), dir)
}

fn assert_cleaned_up(pid: u32, kids: Vec<String>, dir: PathBuf) {
    assert!(!process_exists(pid), "server pid {pid} is gone after drop");
    assert_all_gone(&kids, "a child of the dropped server is reaped");
    assert!(!dir.exists(), "{} is removed after drop", dir.display());
    assert!(
        dir.starts_with(leader_testkit::servers::scratch_root()),
        "{} is under the scratch root",
        dir.display()
    );
}

#[tokio::test]
async fn redis_server_life_cycle() {
    let started = Instant::now();
    let redis = RedisServer::start().await.expect("start redis-server");
    println!("redis: start answered in {:?}", started.elapsed());
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    assert_eq!(redis.url(), format!("redis://{}", redis.addr()));
    let (pid, kids, dir) = life_cycle(&redis).await;
    drop(redis);
    assert_cleaned_up(pid, kids, dir);
}

#[tokio::test]
async fn etcd_server_life_cycle() {
    let started = Instant::now();
    let etcd = EtcdServer::start().await.expect("start etcd");
    println!("etcd: start answered in {:?}", started.elapsed());
    assert_eq!(etcd.url(), format!("http://{}", etcd.addr()));
    let (pid, kids, dir) = life_cycle(&etcd).await;
    drop(etcd);
    assert_cleaned_up(pid, kids, dir);
}

#[tokio::test]
async fn postgres_server_life_cycle_reaps_backends() {
    let started = Instant::now();
    let pg = PostgresServer::start().await.expect("start postgres");
    println!(
        "postgres: start (template copy) answered in {:?}",
        started.elapsed()
    );
    assert_eq!(
        pg.url(),
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            pg.addr().port()
        )
    );
    assert_eq!(
        pg.url_via("127.0.0.1:9".parse().expect("addr")),
        "postgres://postgres@127.0.0.1:9/postgres"
    );
    // Hold a backend open so that kill must reap a grandchild too.
    let mut conn = TcpStream::connect(pg.addr()).await.expect("connect");
    let mut startup = vec![0u8, 0, 0, 0, 0, 3, 0, 0];
    startup.extend_from_slice(b"user\0postgres\0database\0postgres\0\0");
    let len = (startup.len() as u32).to_be_bytes();
    startup[..4].copy_from_slice(&len);
    conn.write_all(&startup).await.expect("startup");
    read_until_ready(&mut conn).await;
    let pid = pg.pid().expect("running");
    let backends = children(pid);
    assert!(
        backends.len() >= 2,
        "postgres runs helper processes and our backend: {backends:?}"
    );

    // A paused server must not answer on an already open connection either.
    pg.pause().expect("pause");
    conn.write_all(b"Q\0\0\0\x0dSELECT 1\0")
        .await
        .expect("query");
    let mut byte = [0u8; 1];
    let while_paused = tokio::time::timeout(Duration::from_millis(500), conn.read(&mut byte)).await;
    assert!(
        while_paused.is_err(),
        "a paused backend answered: {while_paused:?}"
    );
    pg.resume().expect("resume");
    read_until_ready(&mut conn).await;

    let (pid, kids, dir) = life_cycle(&pg).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the killed server's backend connection is closed"
    );
    assert_all_gone(&backends, "the killed server's backends are reaped");
    drop(pg);
    assert_cleaned_up(pid, kids, dir);
}

#[tokio::test]
async fn servers_start_in_parallel_on_distinct_ports() {
    let (a, b, c) = tokio::join!(
        PostgresServer::start(),
        PostgresServer::start(),
        RedisServer::start()
    );
    let (a, b, c) = (a.expect("pg a"), b.expect("pg b"), c.expect("redis"));
    assert_ne!(a.addr(), b.addr());
    assert!(a.answers().await && b.answers().await && c.answers().await);
}

#[tokio::test]
async fn external_servers_cannot_be_controlled() {
    let owned = RedisServer::start().await.expect("start redis-server");
    let url = owned.url().replace("redis://", "redis://user:secret@");
    let external = RedisServer::external(url).await.expect("external handle");
    assert!(external.is_external());
    assert_eq!(external.addr(), owned.addr());
    assert!(external.answers().await);
    let err = external
        .kill()
        .await
        .expect_err("kill of an external server");
    let text = err.to_string();
    assert!(matches!(err, Error::External { .. }), "{text}");
    assert!(text.contains("LEADER_TEST_REDIS_URL"), "{text}");
    assert!(!text.contains("secret"), "the password is redacted: {text}");
    assert!(!format!("{external:?}").contains("secret"));
    assert!(matches!(external.pause(), Err(Error::External { .. })));
    assert!(matches!(
        external.restart().await,
        Err(Error::External { .. })
    ));
    assert!(owned.is_running(), "the owned server is untouched");
    let via: std::net::SocketAddr = "127.0.0.1:1234".parse().expect("addr");
    assert_eq!(owned.url_via(via), "redis://127.0.0.1:1234");
    assert_eq!(external.url_via(via), "redis://user:secret@127.0.0.1:1234");
}

#[tokio::test]
async fn bad_external_urls_are_refused_with_the_variable_name() {
    let err = EtcdServer::external("not a url")
        .await
        .expect_err("bad url");
    assert!(matches!(err, Error::BadUrl { .. }));
    assert!(err.to_string().contains("LEADER_TEST_ETCD_URL"), "{err}");

    // Nothing listens there (the port was just free): one clear error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/postgres");
    let err = PostgresServer::external(url)
        .await
        .expect_err("nothing listens");
    let text = err.to_string();
    assert!(
        text.contains("LEADER_TEST_POSTGRES_URL") && text.contains("cannot connect"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2"),
        "the password is redacted: {text}"
    );
}

/// When the test process dies without running `Drop` (SIGKILL, abort), the
/// kernel kills its servers (`--pdeathsig KILL`): nothing lingers.
#[tokio::test]
async fn servers_die_with_the_test_process() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::Pid;

    if std::env::var_os("LEADER_TESTKIT_CHILD").is_some() {
        // The child: start a server, say its pid and folder, wait to be killed.
        let redis = RedisServer::start().await.expect("start redis-server");
        println!("SERVER_DIR={}", redis.dir().expect("dir").display());
        println!("SERVER_PID={}", redis.pid().expect("pid"));
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }
    // Orphans of the killed child come to us, so we can reap and inspect them.
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "servers_die_with_the_test_process",
            "--nocapture",
        ])
        .env("LEADER_TESTKIT_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child test");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let (pid, dir): (i32, PathBuf) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut dir = None;
        while let Some(line) = lines.next_line().await.expect("read") {
            if let Some(d) = line.strip_prefix("SERVER_DIR=") {
                dir = Some(PathBuf::from(d.trim()));
            }
            if let Some(pid) = line.strip_prefix("SERVER_PID=") {
                return (pid.trim().parse().expect("pid"), dir.expect("dir first"));
            }
        }
        panic!("the child exited without starting a server");
    })
    .await
    .expect("the child starts a server within 30 s");
    assert!(process_exists(pid as u32));

    child.start_kill().expect("SIGKILL the child");
    child.wait().await.expect("child reaped");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => break other,
        }
    };
    assert!(
        matches!(
            status,
            Ok(WaitStatus::Signaled(
                _,
                nix::sys::signal::Signal::SIGKILL,
                _
            ))
        ),
        "the orphaned server must have been killed by the kernel: {status:?}"
    );
    assert!(!process_exists(pid as u32), "and nothing is left of it");
    // Only the folder stays (no Drop ran in the child); remove it here.
    std::fs::remove_dir_all(&dir).expect("remove the killed child's server folder");
}

/// The scheduler state (`/proc/PID/task/TID/stat`) of every thread of `pid`.
fn thread_states(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(str::to_owned)
        })
        .collect()
}
