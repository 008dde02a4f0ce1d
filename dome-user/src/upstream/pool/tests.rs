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
    let piece = |s: &'static str| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(s)));
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
