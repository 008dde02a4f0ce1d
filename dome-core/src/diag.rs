//! Diagnostics for TOML the operator wrote: where a byte offset is (line
//! and column), every key's span, the field a span falls in, and where a
//! field is written. Shared by the config loader and the policy compiler,
//! so both name the file, line and field the same way.

use std::ops::Range;

/// The line and column (from 1) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// Every key in the document with the byte range from its key to the end of its value.
pub fn field_spans<S>(doc: &toml_edit::ImDocument<S>) -> Vec<(String, Range<usize>)> {
    let mut out = Vec::new();
    walk_table(doc.as_table(), "", &mut out);
    out
}

fn walk_table(t: &toml_edit::Table, prefix: &str, out: &mut Vec<(String, Range<usize>)>) {
    for (k, _) in t.iter() {
        let Some((key, item)) = t.get_key_value(k) else {
            continue;
        };
        let path = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        walk_item(key.span(), item, &path, out);
    }
}

fn walk_item(
    key_span: Option<Range<usize>>,
    item: &toml_edit::Item,
    path: &str,
    out: &mut Vec<(String, Range<usize>)>,
) {
    let val = item.span();
    let range = match (key_span, val) {
        (Some(k), Some(v)) => k.start.min(v.start)..k.end.max(v.end),
        (Some(k), None) => k,
        (None, Some(v)) => v,
        (None, None) => 0..0,
    };
    out.push((path.to_string(), range));
    match item {
        toml_edit::Item::Table(t) => walk_table(t, path, out),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                walk_table(t, &format!("{path}[{i}]"), out);
            }
        }
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
            for (k, _) in t.iter() {
                if let Some((key, v)) = t.get_key_value(k) {
                    walk_item(key.span(), v, &format!("{path}.{k}"), out);
                }
            }
        }
        toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                walk_item(
                    None,
                    &toml_edit::Item::Value(v.clone()),
                    &format!("{path}[{i}]"),
                    out,
                );
            }
        }
        _ => {}
    }
}

/// The narrowest field whose range holds `span`.
pub fn innermost(fields: &[(String, Range<usize>)], span: &Range<usize>) -> Option<String> {
    fields
        .iter()
        .filter(|(_, r)| r.start <= span.start && span.start <= r.end && r.end > r.start)
        .min_by_key(|(_, r)| r.end - r.start)
        .map(|(p, _)| p.clone())
}

/// Where `field` is written, or its nearest written parent (a missing field
/// is reported at its table).
pub fn locate(fields: &[(String, Range<usize>)], field: &str) -> usize {
    let mut path = field;
    loop {
        if let Some((_, r)) = fields.iter().find(|(p, _)| p == path) {
            return r.start;
        }
        match path.rfind('.') {
            Some(i) => path = &path[..i],
            None => return 0,
        }
    }
}
