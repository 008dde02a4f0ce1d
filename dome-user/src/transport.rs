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
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::BodyExt;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};
use tokio::{
    net::TcpListener,
    sync::{Notify, Semaphore},
};
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

/// The connection a request came on (a request extension): the client's
/// address and Dome's port, and the kernel flow binding made for it, which
/// goes when the connection closes.
pub struct Conn {
    pub peer: SocketAddr,
    pub local_port: u16,
    pub binding: std::sync::Mutex<Option<ConnBinding>>,
    /// Set once a request on it passed authentication (or needed none):
    /// from then on it is shed for a newcomer only after every idle one
    /// that has not.
    admitted: AtomicBool,
    /// The agent (identity slot + 1; 0: none yet) it is counted against.
    agent: AtomicU32,
    /// Requests being answered on it now, and response streams open: a
    /// connection is idle at zero.
    busy: AtomicU32,
    /// When it last became idle (`mono_ms`).
    idle_since: AtomicU64,
    /// Its number among the listener's connections, and where they are kept.
    shed_entry: Option<(u64, Arc<Sheddable>)>,
    /// Notified when it is shed.
    shed: Notify,
}

fn mono_ms() -> u64 {
    crate::clock::monotonic_ns() / 1_000_000
}

impl Conn {
    /// Marks the connection as having carried an authenticated request
    /// (`agent`: the caller's identity slot; `None` without credentials):
    /// it is shed only after the idle ones that have not. The first
    /// agent's request on it counts it against that agent's share; false
    /// when the agent holds its share already (the request is refused and
    /// the connection stays among the first to be shed). One atomic load
    /// per request once counted.
    pub fn authenticated(&self, agent: Option<u32>) -> bool {
        if let Some(slot) = agent
            && self.agent.load(Ordering::Acquire) == 0
            && let Some((_, set)) = &self.shed_entry
        {
            if !set.agents.admit(slot) {
                return false;
            }
            // Two requests of one HTTP/2 connection may race here: one counts.
            if self
                .agent
                .compare_exchange(0, slot.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                set.agents.release(slot);
            }
        }
        if !self.admitted.load(Ordering::Acquire) {
            self.admitted.store(true, Ordering::Release);
        }
        true
    }

    /// Counts a response stream as open on the connection while the guard
    /// lives: a connection with one is busy, not idle, and is not shed.
    fn hold(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn new(peer: SocketAddr, local_port: u16, shed_entry: Option<(u64, Arc<Sheddable>)>) -> Conn {
        Conn {
            peer,
            local_port,
            binding: std::sync::Mutex::new(None),
            admitted: AtomicBool::new(false),
            agent: AtomicU32::new(0),
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(mono_ms()),
            shed_entry,
            shed: Notify::new(),
        }
    }
}

/// The listener's open connections, oldest first: those a newcomer may
/// displace at the global limit when idle, and the count of each agent's.
/// Shared by the workers; its lock is taken when a connection opens or
/// closes, and to shed one, never per request.
pub struct Sheddable {
    next: AtomicU64,
    conns: Mutex<std::collections::BTreeMap<u64, Weak<Conn>>>,
    agents: AgentConns,
}

impl Sheddable {
    fn add(&self, conn: &Arc<Conn>) {
        if let Some((id, _)) = &conn.shed_entry {
            self.conns
                .lock()
                .expect("sheddable lock")
                .insert(*id, Arc::downgrade(conn));
        }
    }

    fn remove(&self, id: u64) {
        self.conns.lock().expect("sheddable lock").remove(&id);
    }

    /// Closes an idle connection: the oldest that has not authenticated,
    /// else the authenticated one idle longest (keep-alive connections an
    /// agent keeps open must not hold slots a newcomer needs). False when
    /// every connection is busy.
    fn shed_one(&self) -> bool {
        let mut conns = self.conns.lock().expect("sheddable lock");
        let mut dead = Vec::new();
        let mut victim: Option<(u64, Arc<Conn>)> = None;
        let mut longest: Option<(u64, u64, Arc<Conn>)> = None;
        for (id, weak) in conns.iter() {
            match weak.upgrade() {
                None => dead.push(*id),
                Some(c) if c.busy.load(Ordering::Acquire) != 0 => {}
                Some(c) if !c.admitted.load(Ordering::Acquire) => {
                    victim = Some((*id, c));
                    break;
                }
                Some(c) => {
                    let since = c.idle_since.load(Ordering::Acquire);
                    if longest.as_ref().is_none_or(|(s, _, _)| since < *s) {
                        longest = Some((since, *id, c));
                    }
                }
            }
        }
        for id in dead {
            conns.remove(&id);
        }
        let Some((id, c)) = victim.or(longest.map(|(_, id, c)| (id, c))) else {
            return false;
        };
        conns.remove(&id);
        drop(conns);
        tracing::debug!(peer = %c.peer, authenticated = c.admitted.load(Ordering::Acquire), "shed an idle connection for a new one");
        c.shed.notify_one();
        true
    }
}

/// Open connections counted against each agent (by identity slot),
/// sharded so workers do not wait on one lock.
struct AgentConns {
    shards: Vec<Mutex<std::collections::HashMap<u32, u32>>>,
    per_agent: u32,
}

impl AgentConns {
    fn new(per_agent: usize) -> AgentConns {
        AgentConns {
            shards: (0..SOURCE_SHARDS).map(|_| Mutex::default()).collect(),
            per_agent: u32::try_from(per_agent).unwrap_or(u32::MAX).max(1),
        }
    }

    fn shard(&self, slot: u32) -> &Mutex<std::collections::HashMap<u32, u32>> {
        &self.shards[slot as usize % SOURCE_SHARDS]
    }

    /// Counts one more connection of `slot`'s, unless it holds its share.
    fn admit(&self, slot: u32) -> bool {
        let mut m = self.shard(slot).lock().expect("agents lock");
        let n = m.entry(slot).or_default();
        if *n >= self.per_agent {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, slot: u32) {
        let mut m = self.shard(slot).lock().expect("agents lock");
        if let std::collections::hash_map::Entry::Occupied(mut e) = m.entry(slot) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Open connections per source address and per /24 or /64, sharded by
/// prefix (an address is in its prefix's shard) so workers accepting from
/// different networks do not wait on one lock.
struct Sources {
    shards: Vec<Mutex<std::collections::HashMap<SourceKey, u32>>>,
    per_ip: u32,
    per_prefix: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum SourceKey {
    Addr(std::net::IpAddr),
    Prefix(std::net::IpAddr),
}

const SOURCE_SHARDS: usize = 16;

/// The /24 (IPv4) or /64 (IPv6) an address is in.
fn prefix_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(v4) => std::net::IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        std::net::IpAddr::V6(v6) => std::net::IpAddr::V6(
            (u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000).into(),
        ),
    }
}

impl Sources {
    fn new(limits: &Limits) -> Sources {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).max(1);
        Sources {
            shards: (0..SOURCE_SHARDS).map(|_| Mutex::default()).collect(),
            per_ip: clamp(limits.max_connections_per_ip),
            per_prefix: clamp(limits.max_connections_per_prefix),
        }
    }

    fn shard(&self, prefix: std::net::IpAddr) -> &Mutex<std::collections::HashMap<SourceKey, u32>> {
        use std::hash::BuildHasher;
        let h = foldhash::fast::FixedState::default().hash_one(prefix);
        &self.shards[h as usize % SOURCE_SHARDS]
    }

    /// Counts a connection from `ip`, or why not: its address or its
    /// prefix is at its limit.
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Result<SourceGuard, &'static str> {
        let ip = ip.to_canonical();
        let prefix = prefix_of(ip);
        let mut m = self.shard(prefix).lock().expect("sources lock");
        let at_ip = m.get(&SourceKey::Addr(ip)).copied().unwrap_or(0);
        let at_prefix = m.get(&SourceKey::Prefix(prefix)).copied().unwrap_or(0);
        if at_ip >= self.per_ip {
            return Err("max_connections_per_ip");
        }
        if at_prefix >= self.per_prefix {
            return Err("max_connections_per_prefix");
        }
        *m.entry(SourceKey::Addr(ip)).or_default() += 1;
        *m.entry(SourceKey::Prefix(prefix)).or_default() += 1;
        Ok(SourceGuard {
            sources: self.clone(),
            ip,
        })
    }
}

/// A connection counted against its source while it lives.
struct SourceGuard {
    sources: Arc<Sources>,
    ip: std::net::IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let prefix = prefix_of(self.ip);
        let mut m = self.sources.shard(prefix).lock().expect("sources lock");
        for k in [SourceKey::Addr(self.ip), SourceKey::Prefix(prefix)] {
            if let std::collections::hash_map::Entry::Occupied(mut e) = m.entry(k) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }
}

/// Counts a request as being answered on its connection while it lives.
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(mono_ms(), Ordering::Release);
        }
    }
}

/// A flow bound to an identity slot in the kernel tier.
pub struct ConnBinding {
    pub tier: Arc<dyn crate::xdp::Enforcer>,
    pub flow: crate::xdp::Flow,
    pub slot: u32,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let agent = *self.agent.get_mut();
        if agent != 0
            && let Some((_, set)) = &self.shed_entry
        {
            set.agents.release(agent - 1);
        }
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
    F: Future<Output = Response<crate::mcp::gateway::Body>> + Send + 'static,
{
    let listeners = crate::workers::bind(addr, workers)?;
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
    crate::workers::spawn(listeners, move |listener| {
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
    F: Future<Output = Response<crate::mcp::gateway::Body>> + Send + 'static,
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
        // At the global limit, an idle connection makes room (one that has
        // not authenticated first); with none, the newcomer waits for a
        // slot (and later ones in the kernel's backlog).
        let permit = match shared.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Tried again while waiting: a busy connection may become
                // idle before any closes.
                let mut retry = tokio::time::interval(SHED_RETRY);
                loop {
                    tokio::select! {
                        p = shared.permits.clone().acquire_owned() => match p {
                            Ok(p) => break p,
                            Err(_) => return,
                        },
                        _ = retry.tick() => {
                            if shared.sheddable.shed_one() {
                                shared.noted.shed();
                            }
                        }
                        _ = stop.wait_for(|s| *s) => {
                            drop(listener);
                            graceful.shutdown().await;
                            return;
                        }
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let id = shared.sheddable.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(
            peer,
            stream.local_addr().map_or(0, |a| a.port()),
            Some((id, shared.sheddable.clone())),
        ));
        shared.sheddable.add(&conn);
        let (watcher, open) = (graceful.watcher(), Open::new(&open));
        tokio::spawn(async move {
            let _held = (permit, open, source, Unlisted(conn.clone()));
            let shed = conn.clone();
            // The connection goes to the handler as an argument, not as a
            // request extension (which costs two allocations per request).
            let svc = service_fn(move |req: Request<Incoming>| {
                let busy = conn.hold();
                let fut = handler(req, conn.clone());
                async move {
                    let resp = fut.await;
                    // A response stream keeps the connection busy until it
                    // ends (an agent's listen stream is not an idle
                    // connection to shed); other answers free it now.
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
            });
            let serve = async move {
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream))
                            .await
                        {
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
        });
    }
    // Stopping: the socket closes now; open connections finish their
    // requests (the runtime lives until they have).
    drop(listener);
    graceful.shutdown().await;
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
fn is_stream(resp: &Response<crate::mcp::gateway::Body>) -> bool {
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
