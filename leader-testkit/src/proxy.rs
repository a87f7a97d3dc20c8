//! [`FaultProxy`]: a TCP proxy between a client and a store server whose
//! behaviour can be switched at run time: pass through, add latency,
//! blackhole, reset or refuse connections.
//!
//! Partition and slow-store scenarios use it (the kernel here has no
//! `tc netem`), and because it only needs an address it works in front of
//! external servers too.
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use std::time::Duration;
//! use leader_testkit::proxy::{FaultProxy, Mode};
//!
//! let proxy = FaultProxy::start(server).await?;
//! let url = format!("redis://{}", proxy.addr()); // give this to the client
//! proxy.set_mode(Mode::Latency { fixed: Duration::from_millis(50), jitter: Duration::from_millis(10) });
//! proxy.set_mode(Mode::Blackhole); // a partition: nothing flows, nothing fails
//! proxy.set_mode(Mode::PassThrough); // healed: held bytes flow on
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::try_join;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does with traffic. Switch with [`FaultProxy::set_mode`];
/// the new mode applies to open connections at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Forward everything as it comes.
    PassThrough,
    /// Delay every chunk of bytes, in each direction, by `fixed` plus a
    /// random part in `0..=jitter` (so a request and its reply take twice
    /// that). Order is kept.
    Latency {
        /// The delay every chunk gets.
        fixed: Duration,
        /// The upper bound of the random extra delay.
        jitter: Duration,
    },
    /// A network partition: new connections are accepted and held, and
    /// nothing is forwarded on any connection (bytes wait in buffers, as in
    /// TCP retransmission). Nothing fails: clients see silence until their
    /// own timeouts fire. Leaving this mode lets the held bytes flow on.
    Blackhole,
    /// A partition as the *server* sees it too: like [`Mode::Blackhole`],
    /// and once it has lasted `upstream_timeout` the proxy resets its
    /// connections to the server, as the server's TCP keepalive or user
    /// timeout would (session-bound stores then free the locks of the cut
    /// off clients). The clients still hear nothing; when the partition
    /// heals, their dead connections are reset.
    Partition {
        /// How long until the server notices the dead peers.
        upstream_timeout: Duration,
    },
    /// Reset every open connection (TCP RST to both sides) when set; while
    /// set, new connections are accepted and reset at once.
    Reset,
    /// Refuse new connections (the proxy stops listening, so a connect gets
    /// "connection refused"); open connections keep flowing.
    Refuse,
}

#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    /// Bumped by every `set_mode(Mode::Reset)`: a connection older than the
    /// current epoch is reset even if the mode already changed again.
    reset_epoch: u64,
    /// When the current [`Mode::Partition`] began.
    partition_since: Option<Instant>,
    closed: bool,
}

/// A running fault proxy in front of `upstream`. Dropping it closes the
/// listener and resets every connection through it.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    open: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream`, in
    /// [`Mode::PassThrough`].
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let (state, rx) = watch::channel(State {
            mode: Mode::PassThrough,
            reset_epoch: 0,
            partition_since: None,
            closed: false,
        });
        let open = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(accept_loop(listener, addr, upstream, rx, open.clone()));
        Ok(FaultProxy {
            addr,
            upstream,
            state,
            open,
            accept,
        })
    }

    /// The address clients connect to (instead of the server's).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Switches the mode; open connections follow at once.
    pub fn set_mode(&self, mode: Mode) {
        self.state.send_modify(|s| {
            let was_partition = matches!(s.mode, Mode::Partition { .. });
            s.partition_since = match mode {
                Mode::Partition { .. } if was_partition => s.partition_since,
                Mode::Partition { .. } => Some(Instant::now()),
                _ => None,
            };
            s.mode = mode;
            if mode == Mode::Reset {
                s.reset_epoch += 1;
            }
        });
        tracing::debug!(proxy = %self.addr, ?mode, "fault proxy mode");
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.state.borrow().mode
    }

    /// How many client connections are open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.send_modify(|s| s.closed = true);
        self.accept.abort();
    }
}

/// A listener with SO_REUSEADDR, so that [`Mode::Refuse`] can close it and
/// bind the same port again.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut rx: watch::Receiver<State>,
    open: Arc<AtomicUsize>,
) {
    let mut listener = Some(listener);
    loop {
        let state = *rx.borrow_and_update();
        if state.closed {
            return;
        }
        if state.mode == Mode::Refuse {
            // Not listening is what makes a connect fail with "refused".
            // Connections the kernel already completed are open ones for
            // their clients: take them before closing the listener.
            if let Some(l) = listener.take() {
                for client in drain_backlog(l) {
                    let guard = OpenGuard::new(open.clone());
                    tokio::spawn(connection(client, upstream, rx.clone(), guard));
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(l) = &listener else {
            match bind(addr) {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    tracing::warn!(proxy = %addr, error = %e, "fault proxy cannot listen again; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => match accepted {
                Ok((client, _)) => {
                    let guard = OpenGuard::new(open.clone());
                    tokio::spawn(connection(client, upstream, rx.clone(), guard));
                }
                Err(e) => {
                    tracing::debug!(proxy = %addr, error = %e, "fault proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Accepts every connection waiting in `listener`'s backlog, then closes it.
fn drain_backlog(listener: TcpListener) -> Vec<TcpStream> {
    let Ok(std_listener) = listener.into_std() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // The socket is non-blocking (tokio set it so): stop at WouldBlock.
    while let Ok((client, _)) = std_listener.accept() {
        if client.set_nonblocking(true).is_ok()
            && let Ok(client) = TcpStream::from_std(client)
        {
            out.push(client);
        }
    }
    out
}

/// Counts open connections.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        OpenGuard(count)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn must_reset(state: &State, epoch: u64) -> bool {
    state.closed || state.reset_epoch > epoch
}

/// Resolves when the connection born in `epoch` must be reset.
async fn reset_signal(mut rx: watch::Receiver<State>, epoch: u64) {
    loop {
        if must_reset(&rx.borrow_and_update(), epoch) {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl Mode {
    /// Whether traffic is held (nothing forwarded).
    fn holds(self) -> bool {
        matches!(self, Mode::Blackhole | Mode::Partition { .. })
    }
}

/// Waits while the proxy holds traffic. `Err` once the proxy is gone.
async fn while_blackholed(rx: &mut watch::Receiver<State>) -> Result<(), ()> {
    loop {
        if !rx.borrow_and_update().mode.holds() {
            return Ok(());
        }
        rx.changed().await.map_err(|_| ())?;
    }
}

/// Resolves once a [`Mode::Partition`] has lasted its upstream timeout.
async fn server_gives_up(mut rx: watch::Receiver<State>) {
    loop {
        let state = *rx.borrow_and_update();
        let deadline = match (state.mode, state.partition_since) {
            (Mode::Partition { upstream_timeout }, Some(since)) => Some(since + upstream_timeout),
            _ => None,
        };
        let changed = async {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        match deadline {
            Some(deadline) => tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                () = changed => {}
            },
            None => changed.await,
        }
    }
}

fn reset(stream: &TcpStream) {
    // Zero linger turns the close into a RST.
    let _ = stream.set_zero_linger();
}

async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut rx: watch::Receiver<State>,
    _guard: OpenGuard,
) {
    let state = *rx.borrow_and_update();
    let epoch = if state.mode == Mode::Reset {
        // Born during Reset: reset at once.
        reset(&client);
        return;
    } else {
        state.reset_epoch
    };
    let reset_now = reset_signal(rx.clone(), epoch);
    tokio::pin!(reset_now);

    // Hold a connection accepted during a blackhole until it lifts: the
    // server must not even see it.
    let connect = async {
        while_blackholed(&mut rx).await.ok()?;
        TcpStream::connect(upstream).await.ok()
    };
    let mut server = tokio::select! {
        server = connect => match server {
            Some(server) => server,
            None => {
                // The server is down: the client sees its connection reset.
                reset(&client);
                return;
            }
        },
        () = &mut reset_now => {
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);

    let end = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let flows = try_join(
            direction(&mut client_read, &mut server_write, rx.clone()),
            direction(&mut server_read, &mut client_write, rx.clone()),
        );
        tokio::select! {
            done = flows => if done.is_ok() { End::Closed } else { End::Reset },
            () = &mut reset_now => End::Reset,
            () = server_gives_up(rx.clone()) => End::ServerGaveUp,
        }
    };
    match end {
        End::Closed => {}
        End::Reset => {
            reset(&client);
            reset(&server);
        }
        End::ServerGaveUp => {
            reset(&server);
            drop(server);
            // The client hears nothing until the partition heals; then its
            // packets reach a server that forgot it: a reset.
            tokio::select! {
                _ = while_blackholed(&mut rx) => {}
                () = &mut reset_now => {}
            }
            reset(&client);
        }
    }
}

/// How a proxied connection ended.
enum End {
    /// Both sides closed cleanly.
    Closed,
    /// An error or a reset: both sides get a RST.
    Reset,
    /// A partition outlasted the server's patience.
    ServerGaveUp,
}

struct Chunk {
    data: Vec<u8>,
    read_at: Instant,
}

/// Forwards one direction: a reader that stops reading while blackholed,
/// and a writer that applies latency and holds chunks while blackholed.
/// `Ok` after a clean end of stream (propagated as a FIN), `Err` on an error.
async fn direction<R, W>(from: &mut R, to: &mut W, rx: watch::Receiver<State>) -> Result<(), ()>
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let (tx, mut chunks) = mpsc::channel::<Chunk>(64);
    let mut read_rx = rx.clone();
    let reader = async move {
        loop {
            while_blackholed(&mut read_rx).await?;
            let mut buf = vec![0u8; 16 * 1024];
            tokio::select! {
                read = from.read(&mut buf) => match read {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        buf.truncate(n);
                        let chunk = Chunk { data: buf, read_at: Instant::now() };
                        tx.send(chunk).await.map_err(|_| ())?;
                    }
                    Err(_) => return Err(()),
                },
                // Re-check the mode (a blackhole stops reading).
                changed = read_rx.changed() => changed.map_err(|_| ())?,
            }
        }
    };
    let mut write_rx = rx;
    let writer = async move {
        let mut not_before = Instant::now();
        while let Some(chunk) = chunks.recv().await {
            let delay = match write_rx.borrow().mode {
                Mode::Latency { fixed, jitter } => fixed + random_up_to(jitter),
                _ => Duration::ZERO,
            };
            // Never before an earlier chunk: jitter must not reorder bytes.
            not_before = not_before.max(chunk.read_at + delay);
            tokio::time::sleep_until(not_before).await;
            while_blackholed(&mut write_rx).await?;
            to.write_all(&chunk.data).await.map_err(|_| ())?;
        }
        // The reader saw the end of the stream: pass the FIN on.
        let _ = to.shutdown().await;
        Ok(())
    };
    try_join(reader, writer).await.map(|_| ())
}

fn random_up_to(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}
