//! HTTP/1.1 to an upstream, spoken inline by the task that makes the call.
//!
//! Why not hyper's client here: it runs every connection as a task of its
//! own and passes each request in and each response out over channels, so
//! one call wakes three tasks and crosses two queues. On the bench host
//! that machinery cost the floor relay (`bench-floor-proxy`) about 4 of
//! its 32 µs of CPU per call, measured before and after in the same
//! minutes. Here the caller writes the request with one `write` and reads
//! the response head with httparse (hyper's own parser); the body is framed
//! as RFC 9112 §6 says. Dome's listener stays on hyper: this side only ever
//! talks to the upstreams an operator configured, with requests Dome built.

use std::{
    io,
    task::{Context, Poll, Waker},
    time::Instant,
};

use bytes::{Buf, Bytes, BytesMut};
use hyper::{
    HeaderMap, Method, StatusCode, Version,
    header::{self, HeaderName, HeaderValue},
    http::request,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The largest response head read (status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a response head may have.
const MAX_HEADERS: usize = 128;
/// A chunk-size line (with extensions) or a trailer field longer than this
/// is refused.
const MAX_LINE: usize = 4096;
/// Trailers beyond this in all are refused.
const MAX_TRAILERS: usize = 64 * 1024;
/// What a read asks the kernel for at least.
const READ_ROOM: usize = 8 * 1024;

/// Why a response could not be read: the head, or the body's framing.
/// What Dome says of it (in `UpstreamError`, or as the body's I/O error)
/// is its text, the source joined on where there is one.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("response head over {} bytes", MAX_HEAD)]
    HeadTooLarge,
    #[error("the upstream closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("the upstream closed the connection mid-head")]
    ClosedMidHead,
    #[error("reading the response")]
    Read(#[source] io::Error),
    /// httparse refused the head.
    #[error("invalid response head")]
    Head(#[source] httparse::Error),
    #[error("invalid response head: bad status code")]
    Status,
    #[error("invalid response head: bad field name `{0}`")]
    FieldName(String),
    #[error("invalid response head: bad value of `{0}`")]
    FieldValue(HeaderName),
    #[error("invalid response head: bad Content-Length `{0}`")]
    ContentLength(String),
    #[error("invalid response head: conflicting Content-Length")]
    ConflictingContentLength,
    #[error("invalid chunk size")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("trailers over {} bytes", MAX_TRAILERS)]
    TrailersTooLarge,
    #[error("the upstream closed the connection mid-body")]
    ClosedMidBody,
    #[error("a line in the chunked body not ended by CRLF")]
    BareLineFeed,
    #[error("a chunked-body line over {} bytes", MAX_LINE)]
    LineTooLong,
}

/// One keep-alive connection with its read buffer (bytes past the last
/// response stay here) and its request buffer (reused, so writing a request
/// allocates nothing once warm).
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
    /// When a request last went out on it.
    pub used: Instant,
}

/// A response head and how its body is framed.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Decoder,
    /// Whether the connection can carry another request once the body is
    /// read to its end.
    pub keep_alive: bool,
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            used: Instant::now(),
        }
    }

    /// Whether an idle connection can take a request: nothing arrived on it
    /// since its last response (neither the upstream's close nor stray
    /// bytes). Asks the runtime's readiness first, so a quiet connection
    /// costs no system call.
    pub fn alive(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: the close, stray bytes, or readiness left over from
            // a read that filled its buffer exactly. Only the last is fine.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes the request: `head` for method, target and headers (any
    /// `Host`, `Content-Length`, `Transfer-Encoding` or `Connection` in it is
    /// replaced by Dome's own), `host` as `Host`, and `body`.
    pub async fn write_request(
        &mut self,
        head: &request::Parts,
        host: &HeaderValue,
        body: &[u8],
    ) -> io::Result<()> {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(head.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(
            head.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        );
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &head.headers {
            if [
                header::HOST,
                header::CONTENT_LENGTH,
                header::TRANSFER_ENCODING,
                header::CONNECTION,
            ]
            .contains(name)
            {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || !matches!(head.method, Method::GET | Method::HEAD | Method::DELETE) {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        self.io.write_all(out).await
    }

    /// Reads the response head (skipping interim 1xx responses). `head_only`:
    /// the request was HEAD, so no body follows whatever the head says.
    pub async fn read_head(&mut self, head_only: bool) -> Result<Head, H1Error> {
        let mut read_any = false;
        loop {
            if let Some(head) = parse_head(&mut self.buf, head_only)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Ok(head);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(H1Error::HeadTooLarge);
            }
            match self.fill().await {
                Ok(0) if !read_any && self.buf.is_empty() => {
                    return Err(H1Error::ClosedBeforeAnswer);
                }
                Ok(0) => return Err(H1Error::ClosedMidHead),
                Ok(_) => read_any = true,
                Err(e) => return Err(H1Error::Read(e)),
            }
        }
    }

    /// Reads more into the buffer: how many bytes (0 at the end of the
    /// stream).
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_ROOM);
        self.io.read_buf(&mut self.buf).await
    }

    /// Reads more into the buffer from a poll (a streamed body).
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_ROOM);
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// The bytes read past the head and not yet taken.
    pub fn buffered(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

/// A complete response head at the front of `buf`, taken off it; `None`
/// until one is complete. `head_only`: the request was HEAD. Public (rather
/// than a method of `Conn`, which owns a socket) so the fuzz target
/// `h1` can feed it bytes.
pub fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Head>, H1Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut fields);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(H1Error::Head(e)),
    };
    let status = StatusCode::from_u16(r.code.unwrap_or(0)).map_err(|_| H1Error::Status)?;
    let version = if r.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Where each field sits in the buffer, so names and values can be
    // taken from the head's bytes once it is split off, values uncopied.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let count = r.headers.len();
    for (f, s) in r.headers.iter().zip(spans.iter_mut()) {
        let (n, v) = (
            f.name.as_ptr() as usize - base,
            f.value.as_ptr() as usize - base,
        );
        *s = (n, n + f.name.len(), v, v + f.value.len());
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns..ne])
            .map_err(|_| H1Error::FieldName(String::from_utf8_lossy(&head[ns..ne]).into_owned()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| H1Error::FieldValue(name.clone()))?;
        headers.append(name, value);
    }
    let (body, mut keep_alive) = framing(&headers, status, head_only)?;
    // After a 101 the connection no longer speaks HTTP (Dome never asks
    // for an upgrade, so this is a broken upstream): never reuse it.
    keep_alive &= version == Version::HTTP_11
        && status != StatusCode::SWITCHING_PROTOCOLS
        && !headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "close"));
    Ok(Some(Head {
        status,
        version,
        headers,
        body,
        keep_alive,
    }))
}

/// How the body after `headers` is delimited (RFC 9112 §6.3), and whether
/// the framing leaves the connection reusable.
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    head_only: bool,
) -> Result<(Decoder, bool), H1Error> {
    if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Decoder::Length(0), true));
    }
    if let Some(last) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        let chunked = last
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        // With a Content-Length beside it the message may have been meant
        // for another framing: read it, but never reuse the connection.
        let reusable = chunked && !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Decoder::Chunked(Chunked::Size), reusable)
        } else {
            (Decoder::Close, false)
        });
    }
    let mut length: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.to_str().unwrap_or("x").split(',') {
            let part = part.trim();
            let n = part
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| H1Error::ContentLength(part.to_string()))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::ConflictingContentLength);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Decoder::Length(n), true),
        None => (Decoder::Close, false),
    })
}

/// Whether a comma-separated header value lists `token`.
fn has_token(v: &HeaderValue, token: &str) -> bool {
    v.to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// A body's framing, as a decoder over the connection's buffer.
#[derive(Debug)]
pub enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunked),
    /// Everything until the upstream closes the connection.
    Close,
}

#[derive(Debug)]
pub enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// In a chunk's data, this much left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// In the trailer section, having read this much of it.
    Trailers(usize),
    Done,
}

/// What decoding found in the buffer.
#[derive(Debug, PartialEq)]
pub enum Step {
    Data(Bytes),
    /// Needs more bytes from the connection.
    More,
    /// The body ended (its last byte taken off the buffer).
    End,
}

impl Decoder {
    /// The next piece of the body from `buf`; `eof`: the connection has
    /// ended and nothing more will come.
    pub fn step(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Step, H1Error> {
        match self {
            Decoder::Length(0) => Ok(Step::End),
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return more(eof);
                }
                Ok(Step::Data(take(left, buf)))
            }
            Decoder::Close => Ok(if !buf.is_empty() {
                Step::Data(buf.split().freeze())
            } else if eof {
                Step::End
            } else {
                Step::More
            }),
            Decoder::Chunked(state) => loop {
                match state {
                    Chunked::Done => return Ok(Step::End),
                    Chunked::Size => {
                        let Some(line) = take_line(buf)? else {
                            return more(eof);
                        };
                        let size = line.split(|&b| b == b';').next().unwrap_or(&[]);
                        let size = size.trim_ascii();
                        if size.is_empty()
                            || size.len() > 15
                            || !size.iter().all(u8::is_ascii_hexdigit)
                        {
                            return Err(H1Error::ChunkSize);
                        }
                        // At most 15 hex digits: fits a u64 and is checked above.
                        let n = u64::from_str_radix(std::str::from_utf8(size).unwrap_or("x"), 16)
                            .map_err(|_| H1Error::ChunkSize)?;
                        *state = if n == 0 {
                            Chunked::Trailers(0)
                        } else {
                            Chunked::Data(n)
                        };
                    }
                    Chunked::Data(left) => {
                        if buf.is_empty() {
                            return more(eof);
                        }
                        let data = take(left, buf);
                        if *left == 0 {
                            *state = Chunked::DataEnd;
                        }
                        return Ok(Step::Data(data));
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            return more(eof);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(H1Error::ChunkEnd);
                        }
                        buf.advance(2);
                        *state = Chunked::Size;
                    }
                    Chunked::Trailers(seen) => {
                        let Some(line) = take_line(buf)? else {
                            return more(eof);
                        };
                        if line.is_empty() {
                            *state = Chunked::Done;
                        } else {
                            *seen += line.len() + 2;
                            if *seen > MAX_TRAILERS {
                                return Err(H1Error::TrailersTooLarge);
                            }
                        }
                    }
                }
            },
        }
    }
}

/// Up to `left` bytes off the front of `buf`, counted off `left`.
fn take(left: &mut u64, buf: &mut BytesMut) -> Bytes {
    let n = (*left).min(buf.len() as u64) as usize;
    *left -= n as u64;
    buf.split_to(n).freeze()
}

fn more(eof: bool) -> Result<Step, H1Error> {
    if eof {
        Err(H1Error::ClosedMidBody)
    } else {
        Ok(Step::More)
    }
}

/// A CRLF-ended line taken off the front of `buf` (without its CRLF), or
/// `None` until one is complete.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, H1Error> {
    let window = &buf[..buf.len().min(MAX_LINE + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && window[i - 1] == b'\r' => {
            let line = buf.split_to(i + 1).freeze();
            Ok(Some(line.slice(..i - 1)))
        }
        Some(_) => Err(H1Error::BareLineFeed),
        None if window.len() > MAX_LINE => Err(H1Error::LineTooLong),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut d: Decoder, input: &[&[u8]]) -> Result<Vec<u8>, String> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut parts = input.iter();
        loop {
            match d.step(&mut buf, false).map_err(|e| e.to_string())? {
                Step::Data(b) => out.extend_from_slice(&b),
                Step::End => return Ok(out),
                Step::More => match parts.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => {
                        return match d.step(&mut buf, true).map_err(|e| e.to_string())? {
                            Step::End => Ok(out),
                            s => Err(format!("unexpected {s:?} at the end")),
                        };
                    }
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire: &[u8] =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n";
        for cut in 0..wire.len() {
            let (a, b) = wire.split_at(cut);
            let got = decode_all(Decoder::Chunked(Chunked::Size), &[a, b]).unwrap();
            assert_eq!(got, b"helloabcdefghijklmnopqrstuvwxyz", "cut at {cut}");
        }
    }

    #[test]
    fn chunked_bodies_that_lie_are_errors() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"1000000000000000\r\n",
        ] {
            assert!(
                decode_all(Decoder::Chunked(Chunked::Size), &[bad]).is_err(),
                "{bad:?}"
            );
        }
        // Cut off before the last chunk.
        let e = decode_all(Decoder::Chunked(Chunked::Size), &[b"5\r\nhel"]).unwrap_err();
        assert!(e.contains("mid-body"), "{e}");
    }

    #[test]
    fn length_and_close_framing() {
        assert_eq!(
            decode_all(Decoder::Length(5), &[b"he", b"llo"]).unwrap(),
            b"hello"
        );
        assert!(decode_all(Decoder::Length(5), &[b"hel"]).is_err());
        assert_eq!(decode_all(Decoder::Close, &[b"a", b"b"]).unwrap(), b"ab");
        // A body's end leaves what follows it in the buffer.
        let mut buf = BytesMut::from(&b"abcNEXT"[..]);
        let mut d = Decoder::Length(3);
        assert_eq!(
            d.step(&mut buf, false).unwrap(),
            Step::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(d.step(&mut buf, false).unwrap(), Step::End);
        assert_eq!(&buf[..], b"NEXT");
    }

    fn head(fields: &[(&str, &str)], status: u16) -> Result<(Decoder, bool), H1Error> {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        framing(&h, StatusCode::from_u16(status).unwrap(), false)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert!(matches!(
            head(&[("content-length", "12")], 200),
            Ok((Decoder::Length(12), true))
        ));
        assert!(matches!(
            head(&[("content-length", "12, 12")], 200),
            Ok((Decoder::Length(12), true))
        ));
        assert!(head(&[("content-length", "12"), ("content-length", "13")], 200).is_err());
        assert!(head(&[("content-length", "+12")], 200).is_err());
        assert!(matches!(
            head(&[("transfer-encoding", "gzip, chunked")], 200),
            Ok((Decoder::Chunked(_), true))
        ));
        // Chunked wins over a Content-Length, and the connection is not reused.
        assert!(matches!(
            head(
                &[("transfer-encoding", "chunked"), ("content-length", "3")],
                200
            ),
            Ok((Decoder::Chunked(_), false))
        ));
        assert!(matches!(
            head(&[("transfer-encoding", "gzip")], 200),
            Ok((Decoder::Close, false))
        ));
        assert!(matches!(head(&[], 200), Ok((Decoder::Close, false))));
        assert!(matches!(
            head(&[("content-length", "9")], 204),
            Ok((Decoder::Length(0), true))
        ));
        assert!(matches!(
            head(&[("content-length", "9")], 304),
            Ok((Decoder::Length(0), true))
        ));
    }

    /// Valid responses the fuzz tests below start from.
    const SEEDS: [&[u8]; 5] = [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-empty:\r\n\r\n5;a=b\r\nhello\r\n0\r\nt: 1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nx:  \t\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nconnection: close\r\n\r\nuntil the end",
        b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3, 3\r\n\r\nbad",
    ];

    /// Edits that matter to HTTP/1.1 framing.
    const MANGLER: dome_core::mangle::Mangler = dome_core::mangle::Mangler {
        spice: b"\r\n:; \t,0123456789abcdefABCDEF\x00\x7f\xff-",
        edits: 4,
        piece: 16,
        cut_one_in: 1,
    };

    #[test]
    fn mangled_chunked_bodies_are_decoded_or_refused_never_a_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9112);
        let wire: &[u8] =
            b"5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n";
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..5000 {
            let input = MANGLER.mangle(&mut rng, wire);
            let cut = rng.random_range(0..=input.len());
            let (a, b) = input.split_at(cut);
            match decode_all(Decoder::Chunked(Chunked::Size), &[a, b]) {
                Ok(body) => {
                    ok += 1;
                    assert!(body.len() <= input.len());
                }
                Err(e) => {
                    refused += 1;
                    assert!(!e.is_empty());
                }
            }
        }
        // The mutations reach both outcomes (the test exercises the errors).
        assert!(ok > 100 && refused > 100, "{ok} decoded, {refused} refused");
    }

    #[tokio::test]
    async fn mangled_response_heads_are_read_or_refused_never_a_panic() {
        use rand::SeedableRng;
        use tokio::io::AsyncWriteExt;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1945);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut ok, mut refused) = (0, 0);
        for i in 0..400 {
            let seed = SEEDS[i % SEEDS.len()];
            // Every fifth one unmangled: those must be read whole.
            let wire = if i % 5 == 4 {
                seed.to_vec()
            } else {
                MANGLER.mangle(&mut rng, seed)
            };
            let upstream = async {
                let (mut s, _) = listener.accept().await.unwrap();
                // Sent in two writes, so some heads arrive cut in two.
                let cut = wire.len() / 2;
                let _ = s.write_all(&wire[..cut]).await;
                let _ = s.write_all(&wire[cut..]).await;
                let _ = s.shutdown().await;
            };
            let client = async {
                let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
                let mut head = conn.read_head(false).await.map_err(|e| e.to_string())?;
                let mut body = Vec::new();
                let mut eof = false;
                loop {
                    match head
                        .body
                        .step(conn.buffered(), eof)
                        .map_err(|e| e.to_string())?
                    {
                        Step::Data(d) => body.extend_from_slice(&d),
                        Step::End => return Ok::<_, String>((head.status, body)),
                        Step::More => eof = conn.fill().await.map_err(|e| e.to_string())? == 0,
                    }
                }
            };
            let ((), got) = tokio::join!(upstream, client);
            match got {
                Ok((status, body)) => {
                    ok += 1;
                    assert!(body.len() <= wire.len());
                    if i % 5 == 4 {
                        assert!(!status.is_informational(), "{status}");
                        let expected: &[u8] = match i % SEEDS.len() {
                            0 => b"{\"ok\":true}",
                            1 => b"hello",
                            2 => b"",
                            3 => b"until the end",
                            _ => b"bad",
                        };
                        assert_eq!(body, expected, "seed {}", i % SEEDS.len());
                    }
                }
                Err(e) => {
                    refused += 1;
                    assert!(i % 5 != 4, "a valid response was refused: {e}");
                }
            }
        }
        assert!(ok > 50 && refused > 50, "{ok} read, {refused} refused");
    }
}
