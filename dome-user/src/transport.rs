//! The MCP listener's transport: TCP with optional TLS (rustls, ALPN h2 and
//! http/1.1), HTTP/1.1 and HTTP/2 (hyper), and the limits an operator sets:
//! connections, header size, header/idle timeout, concurrent streams.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;

/// `[tls]`: serve HTTPS with this certificate chain and key (PEM).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Connection limits of `[server]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    /// Time to receive a request's headers; on a kept-alive connection also
    /// how long it may sit idle between requests.
    pub header_timeout: Duration,
    pub max_concurrent_streams: u32,
}

/// The connection a request came on (a request extension): the client's
/// address and Dome's port, and the kernel flow binding made for it, which
/// goes when the connection closes.
pub struct Conn {
    pub peer: SocketAddr,
    pub local_port: u16,
    pub binding: std::sync::Mutex<Option<ConnBinding>>,
}

/// A flow bound to an identity slot in the kernel tier.
pub struct ConnBinding {
    pub tier: Arc<crate::xdp::KernelTier>,
    pub flow: crate::xdp::Flow,
    pub slot: u32,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(b) = self.binding.get_mut().ok().and_then(Option::take)
            && let Err(e) = b.tier.unbind_flow(&b.flow)
        {
            tracing::debug!(error = %e, "unbinding a closed connection's flow failed");
        }
    }
}

/// The listener's certificate, swapped in place when its files change (a
/// renewal written over the same paths, or other paths named on reload):
/// handshakes from then on get the new one, open connections keep theirs.
#[derive(Debug)]
pub struct Certificates {
    current: arc_swap::ArcSwap<CertifiedKey>,
    /// The files in use, and their size and modification time when last
    /// looked at (so a broken renewal is reported once, not every second).
    seen: std::sync::Mutex<(TlsConfig, Option<Stamp>)>,
}

type Stamp = [(u64, std::time::SystemTime); 2];

fn stamp(tls: &TlsConfig) -> Option<Stamp> {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.len(), m.modified().ok()?))
    };
    Some([one(&tls.cert)?, one(&tls.key)?])
}

impl rustls::server::ResolvesServerCert for Certificates {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificates {
    /// Loads the files again if `tls` names others or they changed since
    /// last looked at. `Ok(true)`: a new certificate is in use. An error
    /// names the file; the certificate in use stays.
    pub fn refresh(&self, tls: &TlsConfig) -> Result<bool, String> {
        let now = stamp(tls);
        {
            let mut seen = self.seen.lock().expect("certificates lock");
            if seen.0 == *tls && seen.1 == now {
                return Ok(false);
            }
            *seen = (tls.clone(), now);
        }
        self.current.store(Arc::new(load_certified(tls)?));
        Ok(true)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and its key from their PEM files, checked to
/// belong together; errors name the file.
fn load_certified(tls: &TlsConfig) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in the file",
            tls.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("{}: {e}", tls.key.display()))?;
    CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| format!("{} / {}: {e}", tls.cert.display(), tls.key.display()))
}

/// The TLS acceptor of the MCP listener, and its certificates (for
/// [`Certificates::refresh`]).
pub fn tls_acceptor(tls: &TlsConfig) -> Result<(TlsAcceptor, Arc<Certificates>), String> {
    let certificates = Arc::new(Certificates {
        current: arc_swap::ArcSwap::from_pointee(load_certified(tls)?),
        seen: std::sync::Mutex::new((tls.clone(), stamp(tls))),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), certificates))
}

/// Checks that the files exist and load (config validation).
pub fn check_tls(tls: &TlsConfig) -> Result<(), String> {
    for p in [&tls.cert, &tls.key] {
        if !Path::new(p).is_file() {
            return Err(format!("{}: no such file", p.display()));
        }
    }
    load_certified(tls).map(|_| ())
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
/// every connection, within `limits` (the connection limit is shared out
/// over the workers), until [`Stop::drain`].
pub fn serve<H, F>(
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    workers: usize,
    handler: H,
) -> std::io::Result<(SocketAddr, Stop)>
where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<crate::mcp::gateway::Body>> + Send + 'static,
{
    let listeners = crate::workers::bind(addr, workers)?;
    let local = listeners[0].local_addr()?;
    // Each worker holds its share: a permit must sit with the socket that
    // accepts, or a connection could wait in one worker's backlog while
    // another worker holds the free slot.
    let share = limits.max_connections.div_ceil(listeners.len()).max(1);
    let builder = Arc::new(http_builder(&limits));
    let (signal, stop) = tokio::sync::watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    crate::workers::spawn(listeners, move |listener| {
        accept_loop(
            listener,
            tls.clone(),
            limits,
            Arc::new(Semaphore::new(share)),
            builder.clone(),
            handler.clone(),
            (stop.clone(), count.clone()),
        )
    })?;
    Ok((local, Stop { signal, open }))
}

async fn accept_loop<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    permits: Arc<Semaphore>,
    builder: Arc<Builder<TokioExecutor>>,
    handler: H,
    (mut stop, open): (tokio::sync::watch::Receiver<bool>, Arc<AtomicUsize>),
) where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<crate::mcp::gateway::Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        // At the connection limit, stop accepting: new connections wait
        // in the kernel's backlog instead of being accepted and starved.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
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
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let conn = Arc::new(Conn {
            peer,
            local_port: stream.local_addr().map_or(0, |a| a.port()),
            binding: std::sync::Mutex::new(None),
        });
        let (watcher, open) = (graceful.watcher(), Open::new(&open));
        tokio::spawn(async move {
            let _held = (permit, open);
            // The connection goes to the handler as an argument, not as a
            // request extension (which costs two allocations per request).
            let svc = service_fn(move |req: Request<Incoming>| {
                let fut = handler(req, conn.clone());
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls_stream)) => {
                            watcher
                                .watch(builder.serve_connection(TokioIo::new(tls_stream), svc))
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), svc))
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    // Stopping: the socket closes now; open connections finish their
    // requests (the runtime lives until they have).
    drop(listener);
    graceful.shutdown().await;
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
