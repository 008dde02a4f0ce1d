//! `bench-tcp-relay LISTEN UPSTREAM_ADDR`: the floor under any user-space
//! gateway. Each client connection gets one upstream connection of its own
//! and bytes are copied both ways as they come: no HTTP, no parsing, no
//! pooling. It runs on Dome's serving skeleton (one current-thread runtime
//! per CPU on SO_REUSEPORT listeners, mimalloc).
//!
//! No gateway that reads an HTTP request and makes one of its own does less
//! work per call than this (the same four socket operations, nothing else),
//! so `bench e2e` runs it beside Dome: the ratio it reaches bounds what any
//! gateway relaying in user space gets on the machine.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Each direction's copy buffer: larger than any benchmark message, so one
/// read takes a whole request or response.
const BUF: usize = 16 * 1024;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bench-tcp-relay LISTEN UPSTREAM_ADDR");
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    let workers = dome::net::workers::configure(0);
    let listeners = dome::net::workers::bind(listen, workers)?;
    dome::net::workers::spawn(listeners, move |listener| async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let _ =
                    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut up, BUF, BUF).await;
            });
        }
    })?;
    // The workers serve until the benchmark kills this process.
    loop {
        std::thread::park();
    }
}
