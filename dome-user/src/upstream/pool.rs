//! Keep-alive HTTP/1.1 connections to one upstream, one set per worker lane
//! (see [`crate::net::workers`]), spoken inline ([`super::h1`]).
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

/// Why a pool cannot be made for a URL (its host or path is unusable).
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("`{0}` names no host")]
    NoHost(Uri),
    #[error("`{url}`: bad host")]
    Host {
        url: Uri,
        #[source]
        source: hyper::header::InvalidHeaderValue,
    },
    #[error("`{url}`: bad path")]
    Path {
        url: Uri,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
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
    ) -> Result<Self, AddressError> {
        let authority = url
            .authority()
            .ok_or_else(|| AddressError::NoHost(url.clone()))?;
        let port = authority.port_u16().unwrap_or(80);
        let host =
            HeaderValue::from_str(authority.as_str()).map_err(|source| AddressError::Host {
                url: url.clone(),
                source,
            })?;
        let target = url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|source| AddressError::Path {
                url: url.clone(),
                source,
            })?;
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
        let lane = crate::net::workers::lane() % self.lanes.idle.len();
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
            .map_err(|e| SendError::after_sending(crate::error_chain(&e)))?;
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
        let lane = crate::net::workers::lane() % self.lanes.idle.len();
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
mod tests;
