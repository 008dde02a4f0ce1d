//! `dome audit`: query, verify, list checkpoints of and export the trail,
//! read from its folder (safe while Dome runs).

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::print_error;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct AuditFilter {
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub agent: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    /// Tool, prompt or resource; a trailing `*` matches a prefix.
    #[arg(long)]
    pub tool: Option<String>,
    /// tool, prompt, resource or completion.
    #[arg(long)]
    pub kind: Option<String>,
    /// allow, deny, over_budget or error.
    #[arg(long)]
    pub decision: Option<String>,
    #[arg(long)]
    pub call_id: Option<String>,
    /// From this time: RFC 3339 (UTC), Unix seconds, or an age (30m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Text the intent contains (case ignored).
    #[arg(long)]
    pub intent: Option<String>,
    /// The audit folder (default: the config's).
    #[arg(long)]
    pub dir: Option<PathBuf>,
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
pub enum AuditCmd {
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

/// `dome audit verify`: the report, then `ok` (exit 0) or the problem
/// (exit 1).
fn verify(
    config: &std::path::Path,
    dir: Option<PathBuf>,
    pubkeys: &[String],
    expect_heads: &[String],
) -> ExitCode {
    let fail = |e: String| {
        print_error(&e);
        ExitCode::from(2)
    };
    let dir = match audit_dir(config, dir) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let (expect, key_from) = match expectations(config, pubkeys, expect_heads) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let r = match crate::audit::query::verify_with(&dir, &expect) {
        Ok(r) => r,
        Err(e) => return fail(format!("{}: {e}", dir.display())),
    };
    print_report(&dir, &r, &key_from);
    match r.problem {
        None => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Some(p) => {
            eprintln!("BAD {}", crate::terminal::escape_lines(&p.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// What `verify` holds the trail to: the heads anchored elsewhere, the
/// keys pinned (with --pubkey, else the one the running Dome published),
/// and how many frames may go unsigned; and where the key came from.
fn expectations(
    config: &std::path::Path,
    pubkeys: &[String],
    expect_heads: &[String],
) -> Result<(crate::audit::query::Expect, String), String> {
    use crate::audit::checkpoint::{parse_public_key, public_path};
    use crate::audit::query::Expect;
    let mut expect = Expect::default();
    for h in expect_heads {
        match Expect::parse_head(h) {
            Ok(h) => expect.heads.push(h),
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut key_from = String::from("given with --pubkey");
    for k in pubkeys {
        match parse_public_key(k) {
            Ok(k) => expect.keys.push(k),
            Err(e) => return Err(crate::error_chain(&e)),
        }
    }
    // Without --pubkey: the public key the running Dome published beside
    // its key file, when the config names one that exists.
    if let Ok(cfg) = crate::config::load(config) {
        expect.max_unsigned = Some(cfg.audit.checkpoint_records.max(1));
        let published = public_path(&crate::runtime::audit_key_path(&cfg, config));
        if expect.keys.is_empty()
            && let Ok(k) = parse_public_key(&published.to_string_lossy())
        {
            expect.keys.push(k);
            key_from = format!("from {}", published.display());
        }
    }
    Ok((expect, key_from))
}

/// What `verify` found, for an operator: the trail's extent, retirements,
/// checkpoints and the key that signed them, anchored heads and notes.
fn print_report(dir: &std::path::Path, r: &crate::audit::query::Report, key_from: &str) {
    use crate::audit::checkpoint::fingerprint;
    let time = crate::audit::record::rfc3339_us;
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
            crate::terminal::escape(&note.reason)
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
            crate::audit::checkpoint::parse_public_key(k)
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
}

/// The audit folder: `--dir`, else the one the config names. It must
/// exist (a mistyped folder is not an empty, verified trail).
fn audit_dir(config: &std::path::Path, dir: Option<PathBuf>) -> Result<PathBuf, String> {
    let dir = match dir {
        Some(d) => d,
        None => {
            let cfg = crate::config::load(config).map_err(|e| e.to_string())?;
            crate::runtime::audit_dir(&cfg, config)
        }
    };
    if !dir.is_dir() {
        return Err(format!("{}: no audit trail there", dir.display()));
    }
    Ok(dir)
}

pub fn audit(config: &std::path::Path, cmd: AuditCmd) -> ExitCode {
    match cmd {
        AuditCmd::Verify {
            dir,
            pubkeys,
            expect_heads,
        } => verify(config, dir, &pubkeys, &expect_heads),
        AuditCmd::Checkpoints { dir, format, last } => checkpoints(config, dir, &format, last),
        AuditCmd::Query {
            filter,
            limit,
            newest_first,
            format,
        } => query(config, filter, limit, newest_first, &format),
        AuditCmd::Export { filter, out } => export(config, filter, out),
    }
}

/// `dome audit checkpoints`: the trail's checkpoints (or the last), as a
/// table or JSON Lines.
fn checkpoints(
    config: &std::path::Path,
    dir: Option<PathBuf>,
    format: &str,
    last: bool,
) -> ExitCode {
    let fail = |e: String| {
        print_error(&e);
        ExitCode::from(2)
    };
    let dir = match audit_dir(config, dir) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let table = match format {
        "table" => true,
        "jsonl" | "json" => false,
        other => return fail(format!("--format `{other}`: expected table or jsonl")),
    };
    let mut all = Vec::new();
    let found = crate::audit::query::checkpoints(&dir, |seq, cp| {
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
                crate::audit::record::rfc3339_us(cp.time_us),
                cp.reason.name(),
                crate::terminal::escape(&cp.head)
            );
        } else {
            let line = crate::audit::query::checkpoint_json(*seq, cp).to_string();
            println!("{}", crate::terminal::json(&line));
        }
    }
    eprintln!("{} checkpoint(s)", all.len());
    ExitCode::SUCCESS
}

/// `dome audit query`: records matching the filter, as a table or JSON
/// Lines.
fn query(
    config: &std::path::Path,
    filter: AuditFilter,
    limit: u64,
    newest_first: bool,
    format: &str,
) -> ExitCode {
    use crate::audit::output::{Format, Query, run};
    let fail = |e: String| {
        print_error(&e);
        ExitCode::from(2)
    };
    let now = crate::clock::unix_us();
    let format = match format {
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
        Err(e) => return fail(e.to_string()),
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

/// `dome audit export`: records matching the filter, as JSON Lines, to a
/// file or stdout.
fn export(config: &std::path::Path, filter: AuditFilter, out: Option<PathBuf>) -> ExitCode {
    use crate::audit::output::{Format, Query, run};
    let fail = |e: String| {
        print_error(&e);
        ExitCode::from(2)
    };
    let now = crate::clock::unix_us();
    let dir = match audit_dir(config, filter.dir.clone()) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let q = match Query::from_pairs(filter.pairs(), now) {
        Ok(q) => q,
        Err(e) => return fail(e.to_string()),
    };
    let mut sink: Box<dyn std::io::Write> = match &out {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => return fail(format!("{}: {e}", p.display())),
        },
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let result = run(&dir, &q, Format::Jsonl, &mut sink).and_then(|s| sink.flush().map(|()| s));
    match result {
        Ok(s) => {
            eprintln!("{} record(s) exported", s.matched);
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(format!("{}: {e}", dir.display())),
    }
}
