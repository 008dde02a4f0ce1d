//! Keep-alive HTTP/1.1 connections to one upstream, one set per worker lane
//! (see [`crate::workers`]), on hyper's connection API.
//!
//! A request takes the first ready connection of its own lane: one
//! uncontended lock and a few atomic loads, where hyper-util's general
//! pool hashed a pool key, took a shared lock, rewrote the URI, formatted a
//! `Host` header and spawned a task to return the connection on every call.
//! Requests here are already built for this upstream (origin-form target,
//! a `Host` header made once), so none of that is needed.
//!
//! A connection is back in the pool the moment hyper reports it ready for
//! the next request (its previous response read to the end); streams hold
//! theirs until they end. Closed connections, idle ones past the idle
//! allowance and ones idle longer than the idle timeout are dropped when
//! the lane is next used.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, Uri,
    body::Incoming,
    client::conn::{
        TrySendError,
        http1::{self, SendRequest},
    },
    header::{self, HeaderValue},
};
use hyper_util::rt::TokioIo;

/// How long a connection may sit idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Pool {
    /// `host:port` to connect to (resolved at each connect).
    address: String,
    /// The `Host` header every request carries.
    host: HeaderValue,
    /// The origin-form target (`/mcp?…`) requests are sent to.
    target: Uri,
    connect_timeout: Duration,
    /// Idle connections a lane keeps.
    max_idle: usize,
    lanes: Box<[Mutex<Vec<Conn>>]>,
}

/// What sending on a connection comes to: the response head, or why not
/// (with the request back when it was never written).
type Sent = Result<Response<Incoming>, TrySendError<Request<Full<Bytes>>>>;

/// A checkout: sent on a pooled connection, or the request back.
#[allow(clippy::large_enum_variant)] // returned and matched at once, never stored
enum Checkout<F> {
    Sent(F),
    NoneReady(Request<Full<Bytes>>),
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// When a request was last sent on it.
    used: Instant,
}

impl Pool {
    /// A pool for `url` (`http://host[:port]/path`) with `lanes` lanes,
    /// keeping up to `max_idle` idle connections over all of them.
    pub fn new(
        url: &Uri,
        lanes: usize,
        max_idle: usize,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let authority = url
            .authority()
            .ok_or_else(|| format!("`{url}` names no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("`{url}`: bad host: {e}"))?;
        let target = url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| format!("`{url}`: bad path: {e}"))?;
        let lanes = lanes.max(1);
        Ok(Pool {
            address: format!("{}:{port}", authority.host()),
            host,
            target,
            connect_timeout,
            max_idle: max_idle.div_ceil(lanes).max(1),
            lanes: (0..lanes).map(|_| Mutex::new(Vec::new())).collect(),
        })
    }

    /// Where requests go: build them with this URI.
    pub fn target(&self) -> &Uri {
        &self.target
    }

    /// Sends `req` on a ready connection of this lane, or on a new one.
    /// A request that never left (its pooled connection had closed) is
    /// sent again on a new connection; one that may have reached the
    /// upstream never is. Errors are the whole chain, as text.
    pub async fn send(&self, mut req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        req.headers_mut().insert(header::HOST, self.host.clone());
        let lane = self.lane();
        let req = match self.checkout(lane, req) {
            Checkout::NoneReady(req) => req,
            Checkout::Sent(sent) => match sent.await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection had closed meanwhile.
                    Some(req) => req,
                    None => return Err(crate::error_chain(e.error())),
                },
            },
        };
        let mut sender = self.connect().await?;
        let sent = sender.try_send_request(req);
        lane.lock().expect("pool lane").push(Conn {
            sender,
            used: Instant::now(),
        });
        sent.await.map_err(|e| crate::error_chain(e.error()))
    }

    /// This thread's lane.
    fn lane(&self) -> &Mutex<Vec<Conn>> {
        &self.lanes[crate::workers::lane() % self.lanes.len()]
    }

    /// Sends on the lane's first ready connection (dropping closed, surplus
    /// idle and stale ones on the way); `req` back when none is ready.
    fn checkout(
        &self,
        lane: &Mutex<Vec<Conn>>,
        req: Request<Full<Bytes>>,
    ) -> Checkout<impl Future<Output = Sent> + use<>> {
        let now = Instant::now();
        let mut conns = lane.lock().expect("pool lane");
        let mut idle = 0;
        conns.retain(|c| {
            if c.sender.is_closed() {
                return false;
            }
            if c.sender.is_ready() {
                idle += 1;
                return idle <= self.max_idle && now.duration_since(c.used) < IDLE_TIMEOUT;
            }
            true
        });
        match conns.iter_mut().find(|c| c.sender.is_ready()) {
            Some(conn) => {
                conn.used = now;
                Checkout::Sent(conn.sender.try_send_request(req))
            }
            None => Checkout::NoneReady(req),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(self.address.as_str()),
        )
        .await
        .map_err(|_| {
            format!(
                "connecting to {} timed out after {} ms",
                self.address,
                self.connect_timeout.as_millis()
            )
        })?
        .map_err(|e| format!("connecting to {}: {e}", self.address))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| crate::error_chain(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %crate::error_chain(&e), "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Connections this lane holds (busy or idle).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lane().lock().expect("pool lane").len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use http_body_util::BodyExt;
    use hyper::service::service_fn;

    use super::*;

    /// A real HTTP/1.1 server on 127.0.0.1 answering `HOST URI`; `?slow`
    /// answers after 100 ms. Counts the connections it accepted.
    fn server(
        listener: tokio::net::TcpListener,
        accepted: Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        if req.uri().query() == Some("slow") {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let host = req.headers().get(header::HOST).cloned();
                        let text = format!(
                            "{} {}",
                            host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-"),
                            req.uri()
                        );
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            text,
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
    }

    async fn get(pool: &Pool, query: &str) -> Result<String, String> {
        let uri: Uri = format!("{}{query}", pool.target()).parse().unwrap();
        let req = Request::post(uri).body(Full::new(Bytes::new())).unwrap();
        let resp = pool.send(req).await?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    }

    /// [`server`] on a free port: its address, its connection count, its task.
    async fn start() -> (
        std::net::SocketAddr,
        Arc<AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        (addr, accepted.clone(), server(l, accepted))
    }

    fn pool(addr: std::net::SocketAddr) -> Pool {
        let url: Uri = format!("http://{addr}/mcp").parse().unwrap();
        Pool::new(&url, 1, 8, Duration::from_secs(2)).unwrap()
    }

    #[tokio::test]
    async fn requests_carry_host_and_origin_form_and_reuse_one_connection() {
        let (addr, accepted, _server) = start().await;
        let pool = pool(addr);
        for _ in 0..5 {
            assert_eq!(get(&pool, "").await.unwrap(), format!("{addr} /mcp"));
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one keep-alive connection"
        );
        assert_eq!(pool.held(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_that_are_then_reused() {
        let (addr, accepted, _server) = start().await;
        let pool = pool(addr);
        let (a, b, c) = tokio::join!(
            get(&pool, "?slow"),
            get(&pool, "?slow"),
            get(&pool, "?slow")
        );
        for r in [a, b, c] {
            assert_eq!(r.unwrap(), format!("{addr} /mcp?slow"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        for _ in 0..6 {
            get(&pool, "").await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "no new connection");
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_are_replaced() {
        let (addr, accepted, first) = start().await;
        let pool = pool(addr);
        get(&pool, "").await.unwrap();
        // The upstream restarts: its connections (and the pooled one) die.
        first.abort();
        let _ = first.await;
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let _second = server(l, accepted.clone());
        for _ in 0..3 {
            assert_eq!(get(&pool, "").await.unwrap(), format!("{addr} /mcp"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.held(), 1, "the dead connection was dropped");
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_clear_error() {
        let (addr, _, server) = start().await;
        server.abort();
        let _ = server.await;
        let err = get(&pool(addr), "").await.unwrap_err();
        assert!(err.contains(&format!("connecting to {addr}")), "{err}");
    }

    #[test]
    fn urls_without_a_port_or_path_get_the_defaults() {
        let p = Pool::new(
            &"http://example.test".parse().unwrap(),
            2,
            64,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(p.address, "example.test:80");
        assert_eq!(p.target(), "/");
        assert_eq!(p.host, "example.test");
        assert_eq!(p.max_idle, 32);
    }
}
