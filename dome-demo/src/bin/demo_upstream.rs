//! `dome-demo-upstream [ADDR] [--session-only] [--resources] [--whoami]`: the
//! bundled demo MCP server (default 127.0.0.1:8091), built on rmcp.
//! `--session-only` speaks only the session era; `--resources` adds a
//! subscribable resource; `--whoami` adds a tool that shows the identity
//! headers a call arrived with; `--deep` adds a tool whose result nests as
//! deep as asked; `--alias=NAME` (any number) publishes `echo` under NAME
//! too; `--misbehave` adds tools that stall, drip their answers or go silent
//! mid-stream (see `DemoOptions::misbehave`); `--lean` serves only what the
//! benchmark measures, without rmcp (see `DemoOptions::lean`).

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let options = dome_demo::DemoOptions {
        session_only: flag("--session-only"),
        resources: flag("--resources"),
        whoami: flag("--whoami"),
        deep: flag("--deep"),
        misbehave: flag("--misbehave"),
        lean: flag("--lean"),
        aliases: args
            .iter()
            .filter_map(|a| a.strip_prefix("--alias="))
            .map(str::to_string)
            .collect(),
    };
    let addr = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8091".into());
    let addr: std::net::SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("error: `{addr}` is not an address like 127.0.0.1:8091");
            return std::process::ExitCode::from(2);
        }
    };
    let lean = options.lean;
    match dome_demo::serve_with(addr, options).await {
        Ok((local, task)) => {
            if lean {
                eprintln!(
                    "demo upstream (lean, for the benchmark): MCP on http://{local}/mcp (tools: echo)"
                );
            } else {
                eprintln!("demo upstream: MCP on http://{local}/mcp (tools: echo, slow, records)");
            }
            let _ = task.await;
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
