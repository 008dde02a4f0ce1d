//! The `dome` binary: a thin command line over the `dome` library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

// mimalloc v2: see dome::allocator for why not v3.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "dome", version, about = "Dome: the agent-facing MCP gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (for `run`, the default command).
    #[arg(long, short, global = true, default_value = "configs/dome.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run Dome (the default).
    Run,
    /// Validate the configuration file and exit.
    CheckConfig,
    /// Print the SHA-256 (hex) of an API key or admin token, as the config
    /// file stores it.
    HashKey { key: String },
    /// Manage agents through the admin API (`[admin]` of the config; the
    /// token comes from the DOME_ADMIN_TOKEN environment variable).
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// List or lift kernel blocks made by escalation (admin API).
    #[command(subcommand)]
    Blocks(BlocksCmd),
    /// Check the policy files or run their test cases.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Query, verify or export the audit trail (read from its folder; safe
    /// while Dome runs).
    #[command(subcommand)]
    Audit(Box<AuditCmd>),
}

#[derive(clap::Args, Clone, Debug, Default)]
struct AuditFilter {
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    agent: Option<String>,
    #[arg(long)]
    user: Option<String>,
    /// Tool, prompt or resource; a trailing `*` matches a prefix.
    #[arg(long)]
    tool: Option<String>,
    /// tool, prompt, resource or completion.
    #[arg(long)]
    kind: Option<String>,
    /// allow, deny, over_budget or error.
    #[arg(long)]
    decision: Option<String>,
    #[arg(long)]
    call_id: Option<String>,
    /// From this time: RFC 3339 (UTC), Unix seconds, or an age (30m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Text the intent contains (case ignored).
    #[arg(long)]
    intent: Option<String>,
    /// The audit folder (default: the config's).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl AuditFilter {
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("tenant", &self.tenant),
            ("agent", &self.agent),
            ("user", &self.user),
            ("tool", &self.tool),
            ("kind", &self.kind),
            ("decision", &self.decision),
            ("call_id", &self.call_id),
            ("since", &self.since),
            ("until", &self.until),
            ("intent", &self.intent),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Records matching every filter given, oldest first.
    Query {
        #[command(flatten)]
        filter: AuditFilter,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// Newest first.
        #[arg(long)]
        newest_first: bool,
        /// table or jsonl.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Check every CRC, sequence number and link of the hash chain and
    /// every checkpoint's signature; report what retention retired and
    /// what no checkpoint covers yet; name the first bad record. Exit 1
    /// when something is wrong.
    Verify {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The checkpoint key's public half: 64 hex digits or a file holding
        /// them (repeatable, for rotated keys). Default: the `.pub` file
        /// beside the config's `[audit] key`; without one, the key the
        /// trail names (reported as not pinned).
        #[arg(long = "pubkey")]
        pubkeys: Vec<String>,
        /// A head anchored outside this host, as SEQ:HASH (an exported
        /// checkpoint's `covers_seq:head`, or `/stats` `last_seq:head`):
        /// the trail must hold record SEQ with that hash (repeatable).
        #[arg(long = "expect-head")]
        expect_heads: Vec<String>,
    },
    /// The signed checkpoints, to anchor outside this host (a SIEM, a
    /// ticket, another machine): `verify --expect-head SEQ:HASH` later
    /// proves the trail still holds them.
    Checkpoints {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// jsonl or table.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Only the newest.
        #[arg(long)]
        last: bool,
    },
    /// Every matching record as JSON Lines (for a SIEM), to stdout or --out.
    Export {
        #[command(flatten)]
        filter: AuditFilter,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// An error for the operator's terminal: messages can quote config,
/// policy or caller text, so control characters are escaped.
fn print_error(e: &dyn std::fmt::Display) {
    eprintln!("error: {}", dome::terminal::escape_lines(&e.to_string()));
}

/// `dome audit verify`: the report, then `ok` (exit 0) or the problem
/// (exit 1).
fn verify(
    config: &std::path::Path,
    dir: Option<PathBuf>,
    pubkeys: &[String],
    expect_heads: &[String],
) -> ExitCode {
    use dome::audit::checkpoint::{fingerprint, parse_public_key, public_path};
    use dome::audit::query::Expect;
    let fail = |e: String| {
        print_error(&e);
        ExitCode::from(2)
    };
    let dir = match audit_dir(config, dir) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let mut expect = Expect::default();
    for h in expect_heads {
        match Expect::parse_head(h) {
            Ok(h) => expect.heads.push(h),
            Err(e) => return fail(e),
        }
    }
    let mut key_from = String::from("given with --pubkey");
    for k in pubkeys {
        match parse_public_key(k) {
            Ok(k) => expect.keys.push(k),
            Err(e) => return fail(e),
        }
    }
    // Without --pubkey: the public key the running Dome published beside
    // its key file, when the config names one that exists.
    if let Ok(cfg) = dome::config::load(config) {
        expect.max_unsigned = Some(cfg.audit.checkpoint_records.max(1));
        let published = public_path(&dome::runtime::audit_key_path(&cfg, config));
        if expect.keys.is_empty()
            && let Ok(k) = parse_public_key(&published.to_string_lossy())
        {
            expect.keys.push(k);
            key_from = format!("from {}", published.display());
        }
    }
    let r = match dome::audit::query::verify_with(&dir, &expect) {
        Ok(r) => r,
        Err(e) => return fail(format!("{}: {e}", dir.display())),
    };
    let time = dome::audit::record::rfc3339_us;
    println!(
        "{}: {} segment(s), {} record(s){}",
        dir.display(),
        r.segments,
        r.records,
        match (r.first_seq, r.last_seq) {
            (Some(a), Some(b)) => format!(", sequence {a}..={b}"),
            _ => String::new(),
        }
    );
    if let Some(h) = &r.head {
        println!("head {h}");
    }
    for note in &r.retired {
        let (a, b) = note.range();
        println!(
            "retired by retention at {}: records {a}..={b} ({} segment(s), {} bytes; {})",
            time(note.time_us),
            note.segments.len(),
            note.bytes,
            dome::terminal::escape(&note.reason)
        );
    }
    if r.anchored_after_retirement {
        match r.retired_before() {
            Some(k) => println!(
                "the trail starts at {}: records before {k} were retired by retention (the chain is checked from the oldest kept)",
                r.first_seq.unwrap_or(0)
            ),
            None => println!("older records are missing; no retirement note accounts for them"),
        }
    }
    match (&r.key, r.key_pinned) {
        (Some(k), true) => println!(
            "{} checkpoint(s), signatures checked against key {} ({key_from})",
            r.checkpoints,
            dome::audit::checkpoint::parse_public_key(k)
                .map_or_else(|_| k.clone(), |k| fingerprint(&k))
        ),
        (Some(k), false) => println!(
            "{} checkpoint(s), signed by key {k}: NOT PINNED (taken from the trail itself; pin it with --pubkey)",
            r.checkpoints
        ),
        (None, _) => println!("no checkpoints: nothing in this trail is signed"),
    }
    match &r.last_checkpoint {
        Some(c) if r.unsigned_tail == 0 => println!(
            "the trail ends with checkpoint {} ({}, {}) over record {}",
            c.seq,
            c.checkpoint.reason.name(),
            time(c.checkpoint.time_us),
            c.checkpoint.seq
        ),
        Some(c) => println!(
            "last checkpoint {} ({}, {}) over record {}; {} frame(s) after it are not signed yet: a cut among them shows only against --expect-head",
            c.seq,
            c.checkpoint.reason.name(),
            time(c.checkpoint.time_us),
            c.checkpoint.seq,
            r.unsigned_tail
        ),
        None => {}
    }
    for seq in &r.heads_matched {
        println!("anchored head {seq} matches");
    }
    for n in &r.notes {
        println!("{n}");
    }
    if r.incomplete_tail {
        println!(
            "the newest segment ends in a partial record (being written, or torn by a crash: Dome cuts it at start)"
        );
    }
    match r.problem {
        None => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Some(p) => {
            eprintln!("BAD {}", dome::terminal::escape_lines(&p.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// The audit folder: `--dir`, else the one the config names. It must
/// exist (a mistyped folder is not an empty, verified trail).
fn audit_dir(config: &std::path::Path, dir: Option<PathBuf>) -> Result<PathBuf, String> {
    let dir = match dir {
        Some(d) => d,
        None => {
            let cfg = dome::config::load(config).map_err(|e| e.to_string())?;
            dome::runtime::audit_dir(&cfg, config)
        }
    };
    if !dir.is_dir() {
        return Err(format!("{}: no audit trail there", dir.display()));
    }
    Ok(dir)
}

fn audit(config: &std::path::Path, cmd: AuditCmd) -> ExitCode {
    use dome::audit::output::{Format, Query, run};
    let fail = |e: String| {
        print_error(&e);
        ExitCode::from(2)
    };
    let now = dome::clock::unix_us();
    match cmd {
        AuditCmd::Verify {
            dir,
            pubkeys,
            expect_heads,
        } => verify(config, dir, &pubkeys, &expect_heads),
        AuditCmd::Checkpoints { dir, format, last } => {
            let dir = match audit_dir(config, dir) {
                Ok(d) => d,
                Err(e) => return fail(e),
            };
            let table = match format.as_str() {
                "table" => true,
                "jsonl" | "json" => false,
                other => return fail(format!("--format `{other}`: expected table or jsonl")),
            };
            let mut all = Vec::new();
            let found = dome::audit::query::checkpoints(&dir, |seq, cp| {
                if last {
                    all.clear();
                }
                all.push((seq, cp));
                std::ops::ControlFlow::Continue(())
            });
            if let Err(e) = found {
                return fail(format!("{}: {e}", dir.display()));
            }
            if table {
                println!("SEQ        COVERS     TIME                        REASON      HEAD");
            }
            for (seq, cp) in &all {
                if table {
                    println!(
                        "{seq:<10} {:<10} {:<27} {:<11} {}",
                        cp.seq,
                        dome::audit::record::rfc3339_us(cp.time_us),
                        cp.reason.name(),
                        dome::terminal::escape(&cp.head)
                    );
                } else {
                    let line = dome::audit::query::checkpoint_json(*seq, cp).to_string();
                    println!("{}", dome::terminal::json(&line));
                }
            }
            eprintln!("{} checkpoint(s)", all.len());
            ExitCode::SUCCESS
        }
        AuditCmd::Query {
            filter,
            limit,
            newest_first,
            format,
        } => {
            let format = match format.as_str() {
                "table" => Format::Table,
                "jsonl" | "json" => Format::Jsonl,
                other => return fail(format!("--format `{other}`: expected table or jsonl")),
            };
            let dir = match audit_dir(config, filter.dir.clone()) {
                Ok(d) => d,
                Err(e) => return fail(e),
            };
            let mut q = match Query::from_pairs(filter.pairs(), now) {
                Ok(q) => q,
                Err(e) => return fail(e),
            };
            q.limit = Some(limit);
            q.newest_first = newest_first;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match run(&dir, &q, format, &mut out) {
                Ok(s) => {
                    drop(out);
                    eprintln!(
                        "{} record(s); {} segment(s) read, {} skipped by their index",
                        s.matched.min(limit),
                        s.segments_read,
                        s.segments_skipped
                    );
                    ExitCode::SUCCESS
                }
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => fail(format!("{}: {e}", dir.display())),
            }
        }
        AuditCmd::Export { filter, out } => {
            let dir = match audit_dir(config, filter.dir.clone()) {
                Ok(d) => d,
                Err(e) => return fail(e),
            };
            let q = match Query::from_pairs(filter.pairs(), now) {
                Ok(q) => q,
                Err(e) => return fail(e),
            };
            let mut sink: Box<dyn std::io::Write> = match &out {
                Some(p) => match std::fs::File::create(p) {
                    Ok(f) => Box::new(std::io::BufWriter::new(f)),
                    Err(e) => return fail(format!("{}: {e}", p.display())),
                },
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let result =
                run(&dir, &q, Format::Jsonl, &mut sink).and_then(|s| sink.flush().map(|()| s));
            match result {
                Ok(s) => {
                    eprintln!("{} record(s) exported", s.matched);
                    ExitCode::SUCCESS
                }
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => fail(format!("{}: {e}", dir.display())),
            }
        }
    }
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Compile the policy (and run its tests); print its version.
    Check {
        /// The policy folder (default: `[policy] dir` of the config).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the policy's test cases; exit non-zero on any failure.
    Test {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Which decisions change from the policy in OLD to the one in NEW,
    /// over both policies' test requests and any in `--requests` (a JSON
    /// array of test requests).
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(long)]
        requests: Option<PathBuf>,
    },
    /// List the activated versions (admin API).
    Versions,
    /// Restore an activated version exactly (default: the one before the
    /// active one) through the admin API; the live reload activates it.
    Rollback { version: Option<String> },
}

fn policy_diff(
    old: &std::path::Path,
    new: &std::path::Path,
    requests: Option<&std::path::Path>,
) -> ExitCode {
    let compile = |d: &std::path::Path| {
        dome::policy::read_dir(d)
            .and_then(|s| dome::policy::compile::compile(&s).map_err(|e| e.to_string()))
    };
    let (a, b) = match (compile(old), compile(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            print_error(&e);
            return ExitCode::from(2);
        }
    };
    let mut reqs: Vec<dome::policy::lang::TestRequest> = a
        .tests
        .iter()
        .chain(&b.tests)
        .map(|t| t.request.clone())
        .collect();
    if let Some(f) = requests {
        match std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                serde_json::from_str::<Vec<dome::policy::lang::TestRequest>>(&t)
                    .map_err(|e| e.to_string())
            }) {
            Ok(more) => reqs.extend(more),
            Err(e) => {
                print_error(&format!("{}: {e}", f.display()));
                return ExitCode::from(2);
            }
        }
    }
    let mut changed = 0;
    for r in &reqs {
        let req = r.as_request();
        let (x, y) = (a.decide(&req), b.decide(&req));
        if x.effect() != y.effect() {
            changed += 1;
            println!(
                "{:?} -> {:?}: {}",
                x.effect(),
                y.effect(),
                dome::terminal::json(&serde_json::to_string(r).unwrap_or_default())
            );
        }
    }
    println!(
        "{changed} of {} decisions change ({} -> {})",
        reqs.len(),
        a.version,
        b.version
    );
    ExitCode::SUCCESS
}

fn policy_dir(config: &std::path::Path, dir: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(d) = dir {
        return Ok(d);
    }
    let cfg = dome::config::load(config).map_err(|e| e.to_string())?;
    Ok(if cfg.policy.dir.is_absolute() {
        cfg.policy.dir
    } else {
        config
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(cfg.policy.dir)
    })
}

#[derive(Subcommand)]
enum AgentsCmd {
    List,
    Show {
        id: String,
    },
    /// Register an agent; prints its API key once.
    Register {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// customer_agent or partner.
        #[arg(long, default_value = "customer_agent")]
        kind: String,
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    /// A new key; the old ones stay valid for the overlap.
    Rotate {
        id: String,
        #[arg(long, default_value_t = 3600)]
        overlap_s: u64,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
enum BlocksCmd {
    List,
    /// Lift a block by the key `list` shows (`identity/7`, `prefix/10.0.0.9/32`).
    Lift {
        key: String,
    },
}

/// Sends one admin API request and prints the answer.
fn admin(
    config: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> ExitCode {
    let cfg = match dome::config::load(config) {
        Ok(c) => c,
        Err(e) => {
            print_error(&e);
            return ExitCode::from(2);
        }
    };
    let Some(a) = cfg.admin else {
        eprintln!(
            "error: {}: no [admin] section, so no admin API to talk to",
            config.display()
        );
        return ExitCode::from(2);
    };
    let Ok(token) = std::env::var("DOME_ADMIN_TOKEN") else {
        eprintln!("error: set DOME_ADMIN_TOKEN to the admin token");
        return ExitCode::from(2);
    };
    match dome::admin::call(a.listen, &token, method, path, body.as_ref()) {
        Ok((status, text)) => {
            // Agent names, labels and reasons come from callers and admins:
            // JSON keeps its meaning with what a terminal would act on
            // escaped; anything else is escaped as text.
            let pretty = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .map(|p| dome::terminal::json(&p).into_owned())
                .unwrap_or_else(|| dome::terminal::escape_lines(&text).into_owned());
            println!("{pretty}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: HTTP {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            print_error(&format!("admin API at {}: {e}", a.listen));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DOME_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // One event, one line: caller text in a field cannot forge another.
        .with_writer(|| dome::terminal::LogWriter(std::io::stderr()))
        .init();
    match cli.command.unwrap_or(Command::Run) {
        Command::Audit(cmd) => audit(&cli.config, *cmd),
        Command::Agents(cmd) => {
            let c = &cli.config;
            match cmd {
                AgentsCmd::List => admin(c, "GET", "/agents", None),
                AgentsCmd::Show { id } => admin(c, "GET", &format!("/agents/{id}"), None),
                AgentsCmd::Register {
                    tenant,
                    name,
                    kind,
                    labels,
                } => admin(
                    c,
                    "POST",
                    "/agents",
                    Some(
                        serde_json::json!({"tenant": tenant, "name": name, "kind": kind, "labels": labels}),
                    ),
                ),
                AgentsCmd::Disable { id } => {
                    admin(c, "POST", &format!("/agents/{id}/disable"), None)
                }
                AgentsCmd::Enable { id } => admin(c, "POST", &format!("/agents/{id}/enable"), None),
                AgentsCmd::Rotate { id, overlap_s } => admin(
                    c,
                    "POST",
                    &format!("/agents/{id}/rotate"),
                    Some(serde_json::json!({"overlap_s": overlap_s})),
                ),
                AgentsCmd::Delete { id } => admin(c, "DELETE", &format!("/agents/{id}"), None),
            }
        }
        Command::Blocks(cmd) => match cmd {
            BlocksCmd::List => admin(&cli.config, "GET", "/blocks", None),
            BlocksCmd::Lift { key } => {
                admin(&cli.config, "DELETE", &format!("/blocks/{key}"), None)
            }
        },
        Command::Policy(cmd) => {
            let (dir, test_only) = match cmd {
                PolicyCmd::Check { dir } => (dir, false),
                PolicyCmd::Test { dir } => (dir, true),
                PolicyCmd::Versions => return admin(&cli.config, "GET", "/policy/versions", None),
                PolicyCmd::Diff { old, new, requests } => {
                    return policy_diff(&old, &new, requests.as_deref());
                }
                PolicyCmd::Rollback { version } => {
                    return admin(
                        &cli.config,
                        "POST",
                        "/policy/rollback",
                        Some(serde_json::json!({"version": version})),
                    );
                }
            };
            let dir = match policy_dir(&cli.config, dir) {
                Ok(d) => d,
                Err(e) => {
                    print_error(&e);
                    return ExitCode::from(2);
                }
            };
            let sources = match dome::policy::read_dir(&dir) {
                Ok(s) => s,
                Err(e) => {
                    print_error(&e);
                    return ExitCode::from(2);
                }
            };
            let policy = match dome::policy::compile::compile(&sources) {
                Ok(p) => p,
                Err(e) => {
                    print_error(&e);
                    return ExitCode::from(2);
                }
            };
            let failures = dome::policy::run_tests(&policy);
            if test_only {
                println!("{} test(s), {} failed", policy.tests.len(), failures.len());
            } else {
                println!(
                    "{}: {} rule(s), version {}, {} test(s), {} failed",
                    dir.display(),
                    policy.rule_count(),
                    policy.version,
                    policy.tests.len(),
                    failures.len()
                );
            }
            for f in &failures {
                eprintln!("FAIL {}", dome::terminal::escape_lines(&f.to_string()));
            }
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::HashKey { key } => {
            println!(
                "{}",
                dome::identity::apikey::to_hex(&dome::identity::apikey::hash(&key))
            );
            ExitCode::SUCCESS
        }
        Command::CheckConfig => match dome::config::load(&cli.config) {
            Ok(_) => {
                // The policy is part of the configuration.
                let dir = match policy_dir(&cli.config, None) {
                    Ok(d) => d,
                    Err(e) => {
                        print_error(&e);
                        return ExitCode::from(2);
                    }
                };
                if let Err(e) = dome::policy::load(&dir) {
                    print_error(&e);
                    return ExitCode::from(2);
                }
                println!("{}: ok", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                print_error(&e);
                ExitCode::from(2)
            }
        },
        Command::Run => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(dome::runtime::run(&cli.config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    print_error(&format!("{e:#}"));
                    // A bad config is the operator's to fix: exit 2, like `check-config`.
                    if e.downcast_ref::<dome::config::ConfigError>().is_some() {
                        ExitCode::from(2)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}
