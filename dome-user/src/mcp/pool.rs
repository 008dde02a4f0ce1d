//! Keep-alive HTTP/1.1 connections to one upstream, one set per worker lane
//! (see [`crate::workers`]), spoken inline ([`super::h1`]).
//!
//! A request takes an idle connection of its own lane (one uncontended
//! lock), writes itself and reads the answer on the calling task. Requests
//! here are already built for this upstream (origin-form target, a `Host`
//! header made once).
//!
//! A connection is back in its lane the moment its response has been read
//! to the end: at once when the whole body came with the head (the common
//! case), else when the caller has read the streamed body to its end.
//! Dropping a body part-way closes its connection (which is how a cancelled
//! call reaches the upstream). A lane keeps at most its idle allowance;
//! closed connections and ones idle longer than the idle timeout are
//! dropped as checkouts come across them (the newest and the oldest are
//! looked at on every one).
//!
//! An event stream can be given an idle timeout ([`Body::idle_timeout`]):
//! an upstream that starts answering and then goes quiet between events
//! would otherwise hold the call, its connection and the caller's stream
//! for as long as it liked.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, Uri,
    body::{Frame, SizeHint},
    header::HeaderValue,
};

use super::h1::{Conn, Decoder, Step};

/// Why a request got no response head: a whole sentence, and whether the
/// request may have reached the upstream (`sent`), which decides whether
/// sending it again could make the upstream act twice.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub sent: bool,
    pub message: String,
}

impl SendError {
    fn unsent(message: String) -> SendError {
        SendError {
            sent: false,
            message,
        }
    }

    fn after_sending(message: String) -> SendError {
        SendError {
            sent: true,
            message,
        }
    }
}

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
    lanes: Arc<Lanes>,
}

/// Each lane's idle connections.
struct Lanes {
    idle: Box<[Mutex<Vec<Conn>>]>,
    /// Idle connections a lane keeps.
    max_idle: usize,
}

impl Lanes {
    /// Puts a connection whose last response was read to the end back in
    /// `lane`, unless the lane holds enough idle ones.
    fn put(&self, lane: usize, conn: Conn) {
        let mut idle = self.idle[lane].lock().expect("pool lane");
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }
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
            lanes: Arc::new(Lanes {
                idle: (0..lanes).map(|_| Mutex::new(Vec::new())).collect(),
                max_idle: max_idle.div_ceil(lanes).max(1),
            }),
        })
    }

    /// Where requests go: build them with this URI.
    pub fn target(&self) -> &Uri {
        &self.target
    }

    /// Sends `req` on an idle connection of this lane, or on a new one.
    /// A request that never left (its pooled connection turned out closed
    /// when written to) is sent again on a new connection; one that may
    /// have reached the upstream never is. An error says which it was.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Body>, SendError> {
        let (head, body) = req.into_parts();
        let body = full_bytes(body);
        let lane = crate::workers::lane() % self.lanes.idle.len();
        let now = Instant::now();
        let mut conn = match self.checkout(lane, now) {
            Some(mut conn) => match conn.write_request(&head, &self.host, &body).await {
                Ok(()) => conn,
                // Never delivered: the upstream had closed it.
                Err(_) => self.fresh(&head, &body).await?,
            },
            None => self.fresh(&head, &body).await?,
        };
        conn.used = now;
        let h = conn
            .read_head(head.method == Method::HEAD)
            .await
            .map_err(SendError::after_sending)?;
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = h.status;
        *resp.version_mut() = h.version;
        *resp.headers_mut() = h.headers;
        let decoder = h.body;
        // The whole body is usually here already: take it, and the
        // connection goes back before the caller even reads it.
        if let Decoder::Length(n) = decoder
            && conn.buffered().len() as u64 >= n
        {
            let data = conn.buffered().split_to(n as usize).freeze();
            if h.keep_alive && conn.buffered().is_empty() {
                self.lanes.put(lane, conn);
            }
            *resp.body_mut() = Body(Inner::Full(Some(data).filter(|d| !d.is_empty())));
            return Ok(resp);
        }
        // Anything else streams (`Length(0)` was whole above).
        *resp.body_mut() = Body(Inner::Stream(Box::new(Stream {
            conn: Some(conn),
            decoder,
            keep_alive: h.keep_alive,
            home: (self.lanes.clone(), lane),
            idle: None,
        })));
        Ok(resp)
    }

    /// A new connection with the request written on it.
    async fn fresh(
        &self,
        head: &hyper::http::request::Parts,
        body: &[u8],
    ) -> Result<Conn, SendError> {
        let mut conn = self.connect().await.map_err(SendError::unsent)?;
        // A request cut short is one the upstream cannot act on (its body
        // is shorter than its Content-Length).
        conn.write_request(head, &self.host, body)
            .await
            .map_err(|e| {
                SendError::unsent(format!("writing the request to {}: {e}", self.address))
            })?;
        Ok(conn)
    }

    /// The lane's most recently used idle connection that is still open
    /// (dropping closed and stale ones on the way). The oldest is looked at
    /// on every checkout too, so ones the upstream closed or that sat past
    /// the idle timeout do not linger under busier ones.
    fn checkout(&self, lane: usize, now: Instant) -> Option<Conn> {
        let usable = |c: &mut Conn| now.duration_since(c.used) < IDLE_TIMEOUT && c.alive();
        let mut idle = self.lanes.idle[lane].lock().expect("pool lane");
        if idle.len() > 1 && !usable(&mut idle[0]) {
            idle.remove(0);
        }
        while let Some(mut conn) = idle.pop() {
            if usable(&mut conn) {
                return Some(conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, String> {
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
        Ok(Conn::new(stream))
    }

    /// Idle connections this lane holds.
    #[cfg(test)]
    fn held(&self) -> usize {
        let lane = crate::workers::lane() % self.lanes.idle.len();
        self.lanes.idle[lane].lock().expect("pool lane").len()
    }
}

/// The bytes of a request body Dome built: `Full` yields its one frame at
/// once.
fn full_bytes(body: Full<Bytes>) -> Bytes {
    let mut body = std::pin::pin!(body);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match hyper::body::Body::poll_frame(body.as_mut(), &mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// An upstream response body: whole, or streamed off its connection.
pub struct Body(Inner);

enum Inner {
    Full(Option<Bytes>),
    Stream(Box<Stream>),
}

struct Stream {
    /// `None` once the body has ended.
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
    /// Where the connection goes back when the body ends.
    home: (Arc<Lanes>, usize),
    idle: Option<Box<Idle>>,
}

/// The idle timeout of an event stream: the longest the body may wait for
/// more bytes once its last event ended.
struct Idle {
    after: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Set when the body starts waiting after an event ended (or at the
    /// start); cleared when an event ends. A body nobody polls (a call
    /// parked for its caller's input) is not timed meanwhile.
    armed: bool,
    /// Line ends in a row seen last (two end an event), and whether the
    /// last byte was a CR (a CRLF is one line end).
    ends: u8,
    cr: bool,
}

impl Idle {
    /// Whether `data` ends an event (a blank line), carrying the line-end
    /// state over from the bytes before.
    fn ends_event(&mut self, data: &[u8]) -> bool {
        let mut ended = false;
        for &b in data {
            match b {
                b'\n' if self.cr => self.cr = false,
                b'\r' | b'\n' => {
                    self.ends = self.ends.saturating_add(1);
                    ended |= self.ends >= 2;
                    self.cr = b == b'\r';
                }
                _ => {
                    self.ends = 0;
                    self.cr = false;
                }
            }
        }
        ended
    }
}

impl Body {
    fn empty() -> Self {
        Body(Inner::Full(None))
    }

    /// Ends the body with a `TimedOut` error (and drops its connection) when
    /// no event ends within `after` of the previous one (or of now).
    /// Only for event streams; a body that came whole is unaffected.
    pub fn idle_timeout(&mut self, after: Duration) {
        if let Inner::Stream(s) = &mut self.0 {
            s.idle = Some(Box::new(Idle {
                after,
                timer: Box::pin(tokio::time::sleep(after)),
                armed: false,
                ends: 0,
                cr: false,
            }));
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let s = match &mut self.get_mut().0 {
            Inner::Full(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Inner::Stream(s) => s,
        };
        let mut eof = false;
        loop {
            let Some(conn) = s.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match s.decoder.step(conn.buffered(), eof) {
                Ok(Step::Data(d)) => {
                    if let Some(idle) = s.idle.as_mut()
                        && idle.ends_event(&d)
                    {
                        idle.armed = false;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(Step::End) => {
                    let mut conn = s.conn.take().expect("connection");
                    if s.keep_alive && conn.buffered().is_empty() {
                        conn.used = Instant::now();
                        s.home.0.put(s.home.1, conn);
                    }
                    return Poll::Ready(None);
                }
                Ok(Step::More) => match conn.poll_fill(cx) {
                    Poll::Pending => {
                        let Some(idle) = s.idle.as_mut() else {
                            return Poll::Pending;
                        };
                        if !idle.armed {
                            idle.armed = true;
                            let at = tokio::time::Instant::now() + idle.after;
                            idle.timer.as_mut().reset(at);
                        }
                        if idle.timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        let ms = idle.after.as_millis();
                        s.conn = None;
                        return Poll::Ready(Some(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no event for {ms} ms"),
                        ))));
                    }
                    Poll::Ready(Ok(n)) => eof = n == 0,
                    Poll::Ready(Err(e)) => {
                        s.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Err(e) => {
                    s.conn = None;
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e,
                    ))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(d) => d.is_none(),
            Inner::Stream(s) => s.conn.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Stream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
    use hyper::{body::Incoming, header, service::service_fn};
    use hyper_util::rt::TokioIo;

    use super::*;

    type TestBody = BoxBody<Bytes, std::convert::Infallible>;

    /// A real HTTP/1.1 server (hyper's) on 127.0.0.1 answering `HOST URI`.
    /// `?slow` answers after 100 ms; `?chunked` streams three pieces 10 ms
    /// apart (chunked coding); `?big` sends 300,000 bytes with a
    /// Content-Length; `?len` answers the request body's length and the
    /// Content-Length it came with; `?hold` sends a piece and never ends.
    /// Counts the connections it accepted and the ones that have ended.
    fn server(
        listener: tokio::net::TcpListener,
        accepted: Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<()> {
        server_counting(listener, accepted, Arc::default())
    }

    fn server_counting(
        listener: tokio::net::TcpListener,
        accepted: Arc<AtomicUsize>,
        ended: Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let ended = ended.clone();
                conns.spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(answer(req).await)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        })
    }

    async fn answer(req: Request<Incoming>) -> Response<TestBody> {
        let piece =
            |s: &'static str| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(s)));
        match req.uri().query() {
            Some("chunked") => {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    for s in ["one,", "two,", "three"] {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        let _ = tx.send(piece(s)).await;
                    }
                });
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                return Response::new(StreamBody::new(stream).boxed());
            }
            Some("hold") => {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    let _ = tx.send(piece("first")).await;
                    tx.closed().await;
                });
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                return Response::new(StreamBody::new(stream).boxed());
            }
            Some("big") => {
                return Response::new(Full::new(Bytes::from(vec![b'x'; 300_000])).boxed());
            }
            Some("len") => {
                let cl = req.headers().get(header::CONTENT_LENGTH).cloned();
                let n = req.into_body().collect().await.unwrap().to_bytes().len();
                let cl = cl
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("-")
                    .to_string();
                return Response::new(Full::new(Bytes::from(format!("{n} {cl}"))).boxed());
            }
            Some("slow") => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => {}
        }
        let host = req.headers().get(header::HOST).cloned();
        let text = format!(
            "{} {}",
            host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-"),
            req.uri()
        );
        Response::new(Full::new(Bytes::from(text)).boxed())
    }

    async fn get(pool: &Pool, query: &str) -> Result<String, String> {
        post(pool, query, "").await
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
    async fn an_event_ends_at_a_blank_line_however_its_bytes_are_split() {
        let idle = || Idle {
            after: Duration::from_secs(1),
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(1))),
            armed: false,
            ends: 0,
            cr: false,
        };
        for pieces in [
            &[&b"data: x\n\n"[..]][..],
            &[b"data: x\n", b"\n"],
            &[b"data: x\r\n\r", b"\n"],
            &[b"data: x\r\r"],
        ] {
            let mut i = idle();
            let ended = pieces.iter().map(|p| i.ends_event(p)).collect::<Vec<_>>();
            assert!(ended.contains(&true), "{pieces:?}");
        }
        // One line end, CRLF or not, ends a line, not an event.
        for text in [&b"data: x\r\n"[..], b"data: x\n", b"data: x\r\ndata: y\r\n"] {
            assert!(!idle().ends_event(text), "{text:?}");
        }
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

    /// Whether a failed request may have reached the upstream decides
    /// whether it is safe to send again: never connected, it did not; an
    /// upstream that read it and then hung up may have acted on it.
    #[tokio::test]
    async fn a_failure_says_whether_the_request_was_sent() {
        let req = |addr: std::net::SocketAddr| {
            Request::post(format!("http://{addr}/mcp").parse::<Uri>().unwrap())
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap()
        };
        let (addr, _, server) = start().await;
        server.abort();
        let _ = server.await;
        let Err(err) = pool(addr).send(req(addr)).await else {
            panic!("sent to a closed port")
        };
        assert!(!err.sent, "{err}");
        // An upstream that reads the whole request, then closes.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hangs_up = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.ends_with(b"{}") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
        });
        let Err(err) = pool(addr).send(req(addr)).await else {
            panic!("answered by an upstream that hung up")
        };
        assert!(err.sent, "{err}");
        hangs_up.await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_clear_error() {
        let (addr, _, server) = start().await;
        server.abort();
        let _ = server.await;
        let err = get(&pool(addr), "").await.unwrap_err();
        assert!(err.contains(&format!("connecting to {addr}")), "{err}");
    }

    async fn post(pool: &Pool, query: &str, body: &'static str) -> Result<String, String> {
        let uri: Uri = format!("{}{query}", pool.target()).parse().unwrap();
        let req = Request::post(uri)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = pool.send(req).await.map_err(|e| e.to_string())?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    }

    #[tokio::test]
    async fn streamed_and_long_bodies_arrive_whole_and_free_their_connection() {
        let (addr, accepted, _server) = start().await;
        let pool = pool(addr);
        for _ in 0..3 {
            assert_eq!(get(&pool, "?chunked").await.unwrap(), "one,two,three");
            assert_eq!(get(&pool, "?big").await.unwrap().len(), 300_000);
            assert_eq!(post(&pool, "?len", "hello").await.unwrap(), "5 5");
            assert_eq!(
                post(&pool, "?len", "").await.unwrap(),
                "0 0",
                "a POST says its length"
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "every body was read to its end"
        );
        assert_eq!(pool.held(), 1);
    }

    #[tokio::test]
    async fn a_streamed_body_arrives_piece_by_piece() {
        let (addr, _, _server) = start().await;
        let pool = pool(addr);
        let uri: Uri = format!("{}?chunked", pool.target()).parse().unwrap();
        let req = Request::post(uri).body(Full::new(Bytes::new())).unwrap();
        let mut body = pool.send(req).await.unwrap().into_body();
        let mut pieces = Vec::new();
        while let Some(f) = body.frame().await {
            pieces.push(f.unwrap().into_data().unwrap());
        }
        assert_eq!(pieces, ["one,", "two,", "three"], "not buffered to the end");
        assert_eq!(pool.held(), 1, "back once it ended");
    }

    #[tokio::test]
    async fn dropping_a_body_part_way_closes_its_connection() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (accepted, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let _server = server_counting(l, accepted.clone(), ended.clone());
        let pool = pool(addr);
        let uri: Uri = format!("{}?hold", pool.target()).parse().unwrap();
        let req = Request::post(uri).body(Full::new(Bytes::new())).unwrap();
        let mut body = pool.send(req).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first");
        drop(body);
        // The upstream sees the connection end (the call is cancelled there).
        for _ in 0..200 {
            if ended.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(ended.load(Ordering::SeqCst), 1);
        assert_eq!(pool.held(), 0, "a connection mid-body is never reused");
        assert_eq!(get(&pool, "").await.unwrap(), format!("{addr} /mcp"));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A raw TCP upstream that reads a request and writes `reply`, then
    /// closes.
    async fn raw_upstream(reply: &'static [u8]) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn broken_upstream_answers_are_clear_errors() {
        for (reply, expect) in [
            (&b""[..], "closed the connection before answering"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting Content-Length",
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "invalid response head"),
            (b"HTTP/1.1 200 OK\r\nContent-Le", "mid-head"),
        ] {
            let addr = raw_upstream(reply).await;
            let err = get(&pool(addr), "").await.unwrap_err();
            assert!(err.contains(expect), "{reply:?}: {err}");
        }
        // A body cut short is an error of the body, not a short answer.
        let addr = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").await;
        let err = get(&pool(addr), "").await.unwrap_err();
        assert!(err.contains("mid-body"), "{err}");
        // Without a length the body runs to the close, and the connection is not kept.
        let addr = raw_upstream(b"HTTP/1.0 200 OK\r\n\r\nto the end").await;
        let p = pool(addr);
        assert_eq!(get(&p, "").await.unwrap(), "to the end");
        assert_eq!(p.held(), 0);
        // Interim answers are skipped.
        let addr = raw_upstream(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
        let p = pool(addr);
        assert_eq!(get(&p, "").await.unwrap(), "ok");
        assert_eq!(p.held(), 0, "`Connection: close` is honoured");
        // After a 101 the connection is no longer HTTP: never reused.
        let addr = raw_upstream(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n").await;
        let p = pool(addr);
        assert_eq!(get(&p, "").await.unwrap(), "");
        assert_eq!(p.held(), 0);
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
        assert_eq!(p.lanes.max_idle, 32);
    }
}
