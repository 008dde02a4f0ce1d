//! The MCP listener's transport: TCP with optional TLS (rustls, ALPN h2 and
//! http/1.1), HTTP/1.1 and HTTP/2 (hyper), and the limits an operator sets:
//! connections, header size, header/idle timeout, concurrent streams.
//!
//! Connections are held to limits that one client cannot use up for
//! everyone: per source address and per /24 (IPv4) or /64 (IPv6) beyond
//! which a new connection is closed at once; per agent, beyond which the
//! agent's requests on a further connection are refused (an agent with a
//! valid key could otherwise hold every slot, free requests like
//! `tools/list` keeping them alive); and at the global limit an idle
//! connection is closed to admit the newcomer: the oldest one that has not
//! carried an authenticated request, else the one idle longest (idle or
//! half-open connections would otherwise hold every slot until their
//! timeouts expire). A connection with a response stream open is not idle.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::BodyExt;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;

use super::{Body, conn::*, workers};

/// Connection limits of `[server]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections from one address.
    pub max_connections_per_ip: usize,
    /// Connections from one /24 (IPv4) or /64 (IPv6).
    pub max_connections_per_prefix: usize,
    /// Connections one agent's requests may come on.
    pub max_connections_per_agent: usize,
    pub max_header_bytes: usize,
    /// Time to receive a request's headers; on a kept-alive connection also
    /// how long it may sit idle between requests.
    pub header_timeout: Duration,
    pub max_concurrent_streams: u32,
}

/// The HTTP/1.1 and HTTP/2 connection settings of the MCP listener, within
/// `limits`.
pub fn http_builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Stops a listener started by [`serve`] gracefully. Dropping it stops the
/// listener as well (without waiting).
pub struct Stop {
    signal: tokio::sync::watch::Sender<bool>,
    open: Arc<AtomicUsize>,
}

impl Stop {
    /// Closes the listening sockets (new connections are refused by the
    /// kernel) and has every open connection finish the request it is on
    /// and close (HTTP/1.1 after its response, HTTP/2 with GOAWAY). Returns
    /// how many connections were still open when `grace` ran out.
    pub async fn drain(&self, grace: Duration) -> usize {
        let _ = self.signal.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let open = self.open.load(Ordering::Acquire);
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Counts a connection as open while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Binds `addr` once per worker (SO_REUSEPORT) and serves `handler` on
/// every connection, within `limits` (shared by the workers), until
/// [`Stop::drain`].
pub fn serve<H, F>(
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    workers: usize,
    handler: H,
) -> std::io::Result<(SocketAddr, Stop)>
where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let listeners = workers::bind(addr, workers)?;
    let local = listeners[0].local_addr()?;
    let builder = Arc::new(http_builder(&limits));
    let (signal, stop) = tokio::sync::watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    // One pool of slots for all workers: a worker takes one only once it
    // has a connection in hand, so a free slot never sits with a worker
    // whose backlog is empty while another's waits.
    let shared = Arc::new(Shared {
        permits: Arc::new(Semaphore::new(
            limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
        )),
        sources: Arc::new(Sources::new(&limits)),
        sheddable: Arc::new(Sheddable {
            next: AtomicU64::new(0),
            conns: Mutex::default(),
            agents: AgentConns::new(limits.max_connections_per_agent),
        }),
        noted: Noted::default(),
    });
    let count = open.clone();
    workers::spawn(listeners, move |listener| {
        accept_loop(
            listener,
            tls.clone(),
            limits,
            shared.clone(),
            builder.clone(),
            handler.clone(),
            (stop.clone(), count.clone()),
        )
    })?;
    Ok((local, Stop { signal, open }))
}

/// What the workers of one listener share.
struct Shared {
    permits: Arc<Semaphore>,
    sources: Arc<Sources>,
    sheddable: Arc<Sheddable>,
    noted: Noted,
}

/// Connections refused at a source's limit and shed at the global one:
/// logged at most once every 10 s with the counts since the last line, so
/// an operator sees a limit biting and a flood cannot flood the log.
#[derive(Default)]
struct Noted {
    last_unix_s: AtomicU64,
    refused: AtomicU64,
    shed: AtomicU64,
}

impl Noted {
    fn refused(&self, peer: SocketAddr, limit: &'static str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, limit, "connection refused: its source is at its limit");
        self.log(Some((peer, limit)));
    }

    fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
        self.log(None);
    }

    fn log(&self, last_refused: Option<(SocketAddr, &'static str)>) {
        let now = crate::clock::unix_s();
        let last = self.last_unix_s.load(Ordering::Relaxed);
        if now < last + 10
            || self
                .last_unix_s
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (refused, shed) = (
            self.refused.swap(0, Ordering::AcqRel),
            self.shed.swap(0, Ordering::AcqRel),
        );
        let (peer, limit) = last_refused.map_or((None, None), |(p, l)| (Some(p), Some(l)));
        tracing::warn!(
            refused,
            shed,
            ?peer,
            ?limit,
            "connection limits: connections refused at a source's limit, idle ones shed at the global limit (counts since the last such line)"
        );
    }
}

async fn accept_loop<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shared: Arc<Shared>,
    builder: Arc<Builder<TokioExecutor>>,
    handler: H,
    (mut stop, open): (tokio::sync::watch::Receiver<bool>, Arc<AtomicUsize>),
) where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // One address, or one network, cannot take more than its share.
        let source = match shared.sources.admit(peer.ip()) {
            Ok(g) => g,
            Err(limit) => {
                shared.noted.refused(peer, limit);
                continue;
            }
        };
        let permit = match slot(&shared, &mut stop).await {
            Slot::Taken(p) => p,
            Slot::Closed => return,
            Slot::Stopping => break,
        };
        let _ = stream.set_nodelay(true);
        let id = shared.sheddable.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(
            peer,
            stream.local_addr().map_or(0, |a| a.port()),
            Some((id, shared.sheddable.clone())),
        ));
        shared.sheddable.add(&conn);
        let held = (permit, Open::new(&open), source, Unlisted(conn.clone()));
        let serve = serve_conn(
            stream,
            conn,
            tls.clone(),
            limits.header_timeout,
            builder.clone(),
            handler.clone(),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            let _held = held;
            serve.await
        });
    }
    // Stopping: the socket closes now; open connections finish their
    // requests (the runtime lives until they have).
    drop(listener);
    graceful.shutdown().await;
}

/// A connection slot, or why there is none.
enum Slot {
    Taken(tokio::sync::OwnedSemaphorePermit),
    /// The semaphore closed: the listener is gone.
    Closed,
    /// The listener is stopping.
    Stopping,
}

/// A slot under the global limit. At the limit, an idle connection makes
/// room (one that has not authenticated first); with none, the newcomer
/// waits for a slot (and later ones in the kernel's backlog).
async fn slot(shared: &Shared, stop: &mut tokio::sync::watch::Receiver<bool>) -> Slot {
    if let Ok(p) = shared.permits.clone().try_acquire_owned() {
        return Slot::Taken(p);
    }
    // Tried again while waiting: a busy connection may become idle before
    // any closes.
    let mut retry = tokio::time::interval(SHED_RETRY);
    loop {
        tokio::select! {
            p = shared.permits.clone().acquire_owned() => match p {
                Ok(p) => return Slot::Taken(p),
                Err(_) => return Slot::Closed,
            },
            _ = retry.tick() => {
                if shared.sheddable.shed_one() {
                    shared.noted.shed();
                }
            }
            _ = stop.wait_for(|s| *s) => return Slot::Stopping,
        }
    }
}

/// Serves one accepted connection (its TLS handshake first, within the
/// header timeout) until it ends, the listener stops, or it is shed for a
/// newcomer.
async fn serve_conn<H, F>(
    stream: tokio::net::TcpStream,
    conn: Arc<Conn>,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    builder: Arc<Builder<TokioExecutor>>,
    handler: H,
    watcher: hyper_util::server::graceful::Watcher,
) where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let (peer, shed) = (conn.peer, conn.clone());
    let svc = counted_service(conn, handler);
    let serve = async move {
        match tls {
            Some(acceptor) => {
                match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(tls_stream), svc))
                            .await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        Ok(())
                    }
                }
            }
            None => {
                watcher
                    .watch(builder.serve_connection(TokioIo::new(stream), svc))
                    .await
            }
        }
    };
    let result = tokio::select! {
        r = serve => r,
        // Shed for a newcomer: dropping the connection closes it.
        _ = shed.shed.notified() => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The handler as hyper's service for `conn`, counting the connection busy
/// while a request is answered, and while a response stream is open.
fn counted_service<H, F>(
    conn: Arc<Conn>,
    handler: H,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // The connection goes to the handler as an argument, not as a request
    // extension (which costs two allocations per request).
    service_fn(move |req: Request<Incoming>| {
        let busy = conn.hold();
        let fut = handler(req, conn.clone());
        async move {
            let resp = fut.await;
            // A response stream keeps the connection busy until it ends (an
            // agent's listen stream is not an idle connection to shed);
            // other answers free it now.
            if is_stream(&resp) {
                return Ok::<_, Infallible>(resp.map(|b| {
                    BodyExt::boxed(BodyExt::map_frame(b, move |f| {
                        let _open = &busy;
                        f
                    }))
                }));
            }
            drop(busy);
            Ok::<_, Infallible>(resp)
        }
    })
}

/// How often a newcomer waiting at the global limit looks for an idle
/// connection to shed.
const SHED_RETRY: Duration = Duration::from_millis(100);

/// Takes a closed connection off the list of those that may be shed.
struct Unlisted(Arc<Conn>);

impl Drop for Unlisted {
    fn drop(&mut self) {
        if let Some((id, set)) = &self.0.shed_entry {
            set.remove(*id);
        }
    }
}

/// Whether a response is an event stream (it stays open for as long as
/// its body does).
fn is_stream(resp: &Response<Body>) -> bool {
    resp.headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// A plain HTTP/1.1 listener on `addr` answering each request with
/// `handle` (the stats and admin listeners; `what` names it in logs).
/// Returns the bound address and the serving task.
pub async fn serve_http1<H, F, B>(
    addr: std::net::SocketAddr,
    what: &'static str,
    handle: H,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let answer = handle(req);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((local, task))
}
