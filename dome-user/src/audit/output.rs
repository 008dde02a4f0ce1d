//! Query results as an operator reads them: JSON Lines (for tools and a
//! SIEM) or a table (for a terminal). Shared by `dome audit` and the admin
//! API.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use super::query::{self, Filter, QueryError, Scanned};
use super::record::{ArchivedRecord, rfc3339_us};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Table,
}

/// A query: filter, order and how many.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub filter: Filter,
    /// At most this many records (`None`: all).
    pub limit: Option<u64>,
    pub newest_first: bool,
}

impl Query {
    /// From `key=value` pairs: the filters of [`Filter::set`], plus
    /// `limit` and `order` (`oldest` or `newest`).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        now_us: u64,
    ) -> Result<Query, QueryError> {
        let mut q = Query::default();
        for (k, v) in pairs {
            match k {
                "limit" => q.limit = Some(v.parse().map_err(|_| QueryError::Limit(v.to_string()))?),
                "order" => {
                    q.newest_first = match v {
                        "newest" => true,
                        "oldest" => false,
                        _ => return Err(QueryError::Order(v.to_string())),
                    }
                }
                "format" => {}
                _ => q.filter.set(k, v, now_us)?,
            }
        }
        Ok(q)
    }
}

/// `s` escaped for a terminal (see [`crate::terminal`]), then cut to `n`
/// characters: escaping first, so a cut never splits an escape into
/// something a terminal would act on.
fn cell(s: &str, n: usize) -> String {
    let s = crate::terminal::escape(s);
    if s.chars().count() <= n {
        return s.into_owned();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// One table row. Every field a caller or an admin chose is escaped: a
/// newline or an ANSI sequence in an intent would otherwise forge or erase
/// rows on the operator's screen.
fn table_row(r: &ArchivedRecord<'_>) -> String {
    let status = match r.status.to_native() {
        0 => r.outcome().name().to_string(),
        c => format!("{} {c}", r.outcome().name()),
    };
    let who = if r.agent.is_empty() {
        "-".to_string()
    } else {
        format!("{}/{}", r.tenant, r.agent)
    };
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    format!(
        "{:<27} {:<11} {:<16} {:<24} {:<14} {:<24} {:<16} {}",
        rfc3339_us(r.time_us()),
        r.decision().name(),
        cell(&status, 16),
        cell(&who, 24),
        cell(&dash(&r.user), 14),
        cell(&r.name, 24),
        crate::terminal::escape(&dash(&r.call_id)),
        cell(&r.intent, 60),
    )
}

pub const TABLE_HEADER: &str = "TIME                        DECISION    OUTCOME          TENANT/AGENT             USER           TOOL                     CALL ID          INTENT";

/// Runs `q` over the trail in `dir`, writing each record to `out`.
pub fn run(dir: &Path, q: &Query, format: Format, out: &mut dyn Write) -> std::io::Result<Scanned> {
    if format == Format::Table {
        writeln!(out, "{TABLE_HEADER}")?;
    }
    let mut n = 0u64;
    let mut failed: Option<std::io::Error> = None;
    let scanned = query::scan(dir, &q.filter, q.newest_first, |seq, r| {
        if q.limit.is_some_and(|l| n >= l) {
            return ControlFlow::Break(());
        }
        let line = match format {
            // Faithful JSON, with what a terminal would act on escaped.
            Format::Jsonl => {
                let text = r.to_json(seq).to_string();
                match crate::terminal::json(&text) {
                    std::borrow::Cow::Borrowed(_) => text,
                    std::borrow::Cow::Owned(safe) => safe,
                }
            }
            Format::Table => table_row(r),
        };
        if let Err(e) = writeln!(out, "{line}") {
            failed = Some(e);
            return ControlFlow::Break(());
        }
        n += 1;
        ControlFlow::Continue(())
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(scanned)
}
