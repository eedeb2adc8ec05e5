//! `${NAME}` and `${NAME:-default}` in the file's strings, resolved from
//! the environment the caller passes in, before the file is deserialised.
//!
//! Resolution works on the parsed TOML document, so an error names the
//! line of the value, and every string value (never a key) is resolved the
//! same way whatever type it later becomes.

use std::borrow::Cow;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Replaces `${NAME}` and `${NAME:-default}` from `lookup`. Returns the names
/// whose default was used.
pub fn interpolate(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<(String, Vec<String>), String> {
    let mut out = String::with_capacity(s.len());
    let mut defaulted = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("invalid variable name {name:?}"));
        }
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => {
                out.push_str(d);
                defaulted.push(name.to_owned());
            }
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (use ${{{name}:-default}} for a fallback)"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, defaulted))
}

/// What resolving a document did: which fallbacks it used, and what it put
/// where, so that an error about a value never quotes what a variable put
/// in it (it may be a secret).
#[derive(Debug, Default)]
pub(super) struct Resolution {
    /// Variables whose `${NAME:-default}` fallback is in use, sorted, once each.
    pub vars: Vec<String>,
    /// The spans of the string values a fallback went into: a development
    /// default must not guard a listener that others can reach.
    defaulted: Vec<Range<usize>>,
    /// Each resolved value: as written, and as resolved.
    values: Vec<(String, String)>,
}

impl Resolution {
    /// Whether a fallback went into the value at `span`.
    pub fn defaulted(&self, span: &Range<usize>) -> bool {
        self.defaulted.contains(span)
    }

    /// `message` with every resolved value put back as written.
    pub fn mask(&self, message: &str) -> String {
        let mut out = message.to_owned();
        for (written, resolved) in self.values.iter().filter(|(w, r)| !r.is_empty() && w != r) {
            out = out.replace(&format!("{resolved:?}"), &format!("{written:?}"));
            out = out.replace(&format!("`{resolved}`"), &format!("`{written}`"));
            if resolved.len() >= 8 {
                out = out.replace(resolved.as_str(), written);
            }
        }
        out
    }
}

/// A variable that could not be resolved, at the span of its value.
pub(super) struct Unresolved {
    pub span: Range<usize>,
    pub message: String,
}

/// Resolves every string value in `table`, in place.
pub(super) fn resolve(
    table: &mut DeTable<'_>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolution, Unresolved> {
    let mut resolution = Resolution::default();
    for (_, value) in table.iter_mut() {
        resolve_value(value, lookup, &mut resolution)?;
    }
    resolution.vars.sort();
    resolution.vars.dedup();
    Ok(resolution)
}

fn resolve_value(
    value: &mut Spanned<DeValue<'_>>,
    lookup: &dyn Fn(&str) -> Option<String>,
    resolution: &mut Resolution,
) -> Result<(), Unresolved> {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) if s.contains("${") => {
            let (text, defaulted) =
                interpolate(s, lookup).map_err(|message| Unresolved { span: span.clone(), message })?;
            if !defaulted.is_empty() {
                resolution.defaulted.push(span);
                resolution.vars.extend(defaulted);
            }
            resolution.values.push((s.to_string(), text.clone()));
            *s = Cow::Owned(text);
        }
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                resolve_value(item, lookup, resolution)?;
            }
        }
        DeValue::Table(table) => {
            for (_, v) in table.iter_mut() {
                resolve_value(v, lookup, resolution)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Where `span` is in `text`, drawn as the TOML parser draws its errors:
/// `at line L, column C`, the line, and a caret under the value.
pub(super) fn locate(text: &str, span: &Range<usize>) -> String {
    let before = text.get(..span.start).unwrap_or(text);
    let line_number = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let column = before[line_start..].chars().count() + 1;
    let width = text.get(span.clone()).map_or(1, |v| v.lines().next().unwrap_or("").chars().count().max(1));
    let gutter = " ".repeat(line_number.to_string().len());
    format!(
        "at line {line_number}, column {column}\n{gutter} |\n{line_number} | {line}\n{gutter} | {}{}\n",
        " ".repeat(column - 1),
        "^".repeat(width)
    )
}
