//! `dome-demo-upstream [ADDR]`: the bundled demo MCP server (default 127.0.0.1:8091).

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8091".into());
    let addr: std::net::SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("error: `{addr}` is not an address like 127.0.0.1:8091");
            return std::process::ExitCode::from(2);
        }
    };
    match dome::demo::serve(addr).await {
        Ok((local, task)) => {
            eprintln!("demo upstream: MCP on http://{local}/mcp (tools: echo, slow, records)");
            let _ = task.await;
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
