//! Thread-per-core serving. Each worker thread runs its own single-threaded
//! runtime with its own listening socket on the MCP address (SO_REUSEPORT:
//! the kernel spreads connections over them) and its own upstream
//! connections (see [`lane`]), so a request is parsed, forwarded and
//! answered on one thread: no cross-thread wake-ups, no shared pool lock.
//! The control runtime (signals, reload, stats, background tasks) is lane 0.

use std::{cell::Cell, net::SocketAddr, sync::atomic::AtomicUsize};

use socket2::{Domain, Socket, Type};

thread_local! {
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// Lanes in use: the control runtime plus one per worker. Set once at
/// start, before upstream clients are built.
static LANES: AtomicUsize = AtomicUsize::new(1);

/// This thread's lane: 0 on the control runtime, 1..=workers on a worker.
pub fn lane() -> usize {
    LANE.with(Cell::get)
}

/// How many lanes per-lane resources (upstream pools) need.
pub fn lanes() -> usize {
    LANES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Resolves `configured` (0: one per CPU) and records the lane count.
pub fn configure(configured: usize) -> usize {
    let n = if configured == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        configured
    };
    LANES.store(n + 1, std::sync::atomic::Ordering::Relaxed);
    n
}

/// `n` listening sockets on `addr`, all bound with SO_REUSEPORT to the same
/// port (the first one picks it when `addr` asks for port 0).
pub fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        let l: std::net::TcpListener = s.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Starts one worker thread per listener; each runs `serve` on its own
/// current-thread runtime until the process ends.
pub fn spawn<F, Fut>(listeners: Vec<std::net::TcpListener>, serve: F) -> std::io::Result<()>
where
    F: Fn(tokio::net::TcpListener) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    for (i, listener) in listeners.into_iter().enumerate() {
        let serve = serve.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("dome-worker-{}", i + 1))
            .spawn(move || {
                LANE.with(|l| l.set(i + 1));
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => serve(l).await,
                        Err(e) => tracing::error!(error = %e, "worker cannot use its listener"),
                    }
                });
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_one_port() {
        let ls = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
    }
}
