//! Strict JSON parsing and the JavaScript canonical form NOWPayments signs.
//!
//! NOWPayments computes `JSON.stringify(sortObject(params))` and signs that, so
//! a verifier must reproduce Node's output byte for byte from whatever bytes
//! arrived. Two decisions shape this module:
//!
//! * **Our own parser.** We need three things at once that `serde_json` does
//!   not give together: numbers kept exactly as written (the event's `amount`
//!   and `payload` must not be rounded), duplicate keys refused (a verifier and
//!   a downstream parser must never read different values), and a hard nesting
//!   limit enforced before recursion can hurt us. Numbers are parsed to `f64`
//!   with Rust's correctly rounded `str::parse`, exactly as `JSON.parse` does.
//! * **ECMAScript output rules.** Keys sort the way a JavaScript object
//!   enumerates them (array-index keys first, numerically; the rest by UTF-16
//!   code units), numbers print like `Number.prototype.toString` (via
//!   `ryu-js`), strings escape only what `JSON.stringify` escapes.
//!
//! Everything here is pure and is tested against `node` itself in
//! `tests/it/canonical_node.rs`.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write as _;

mod parse;

pub use parse::parse;

/// Deepest nesting of arrays and objects we accept. Real IPNs nest two or
/// three levels; anything deeper is an attack on the recursion.
pub const MAX_DEPTH: usize = 64;

/// A parsed JSON value that remembers how numbers were written and the order
/// keys arrived in. It borrows from the input wherever it can: only strings
/// with escapes are copied.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// The number's literal text, already checked against the JSON grammar.
    Number(&'a str),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Members in received order; keys are unique.
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

/// Why a body is not acceptable JSON. Positions are byte offsets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid JSON at byte {0}: {1}")]
    Syntax(usize, &'static str),
    #[error("duplicate key {0:?} in object")]
    DuplicateKey(String),
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

impl<'a> Value<'a> {
    /// The member `key` of an object, if this is one and has it.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Whether any array occurs in this value.
    pub fn has_array(&self) -> bool {
        match self {
            Value::Array(_) => true,
            Value::Object(members) => members.iter().any(|(_, v)| v.has_array()),
            _ => false,
        }
    }

    /// Compact JSON in received order with numbers as written. This is what
    /// a sender that serialises without sorting produces.
    pub fn to_compact(&self) -> String {
        let mut out = String::new();
        write_value(&mut out, self, NumberStyle::AsWritten, ArrayStyle::Array, false);
        out
    }
}

/// The key JavaScript's `sortObject` leaves out of the signed text: it
/// rebuilds objects by assignment, and assigning to `__proto__` sets the
/// prototype instead of making a property.
pub const DROPPED_KEY: &str = "__proto__";

/// The path (`fee.__proto__`, `items[0].__proto__`) of the first member that
/// [`canonical`] leaves out, if any: a body verified only through that form
/// carries those members unsigned.
pub fn dropped_member(value: &Value) -> Option<String> {
    fn walk(v: &Value, path: &mut String) -> bool {
        match v {
            Value::Object(members) => members.iter().any(|(k, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                if k == DROPPED_KEY || walk(item, path) {
                    return true;
                }
                path.truncate(len);
                false
            }),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                if walk(item, path) {
                    return true;
                }
                path.truncate(len);
                false
            }),
            _ => false,
        }
    }
    let mut path = String::new();
    walk(value, &mut path).then_some(path)
}

/// How arrays appear in the canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayStyle {
    /// Arrays stay arrays (what a sort that recurses only into objects gives).
    Array,
    /// Arrays become objects keyed `"0"`, `"1"`, … — what NOWPayments'
    /// documented `sortObject` does, since it rebuilds every object-typed
    /// value with `{}`.
    IndexedObject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberStyle {
    AsWritten,
    Ecmascript,
}

/// `JSON.stringify(value)`: received key order, ECMAScript numbers.
pub fn stringify(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, NumberStyle::Ecmascript, ArrayStyle::Array, false);
    out
}

/// `JSON.stringify(sortObject(value))`, with arrays per `arrays`.
pub fn canonical(value: &Value, arrays: ArrayStyle) -> String {
    let mut out = String::new();
    write_value(&mut out, value, NumberStyle::Ecmascript, arrays, true);
    out
}

/// Whether a JSON text has no whitespace outside its strings: then it is
/// already its own compact form and can be passed on byte for byte.
pub fn is_compact(raw: &[u8]) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b' ' | b'\t' | b'\n' | b'\r' => return false,
                _ => {}
            }
        }
    }
    true
}

/// Formats an `f64` the way ECMAScript's `Number.prototype.toString` does,
/// except that non-finite values become `null` as in `JSON.stringify`.
pub fn format_number(n: f64) -> String {
    if !n.is_finite() {
        return "null".to_owned();
    }
    if n == 0.0 {
        // Both zeros print as "0" in JavaScript.
        return "0".to_owned();
    }
    ryu_js::Buffer::new().format_finite(n).to_owned()
}

/// The canonical ECMAScript text of a JSON number literal, e.g. `"1.50"` →
/// `"1.5"`, `"1e21"` → `"1e+21"`.
pub fn ecmascript_number(literal: &str) -> String {
    // The grammar was checked at parse time, so parse cannot fail; a literal
    // too large for f64 becomes infinity, as in JavaScript.
    format_number(literal.parse::<f64>().unwrap_or(f64::NAN))
}

/// An array index as JavaScript defines it: the canonical decimal form of an
/// integer in 0 ..= 2^32 − 2.
fn array_index(key: &str) -> Option<u32> {
    if key.is_empty() || key.len() > 10 || (key.len() > 1 && key.starts_with('0')) {
        return None;
    }
    if !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = key.parse().ok()?;
    (n <= 4_294_967_294).then_some(n as u32)
}

/// The order in which a JavaScript object enumerates its keys after
/// `Object.keys(o).sort()` rebuilt it: array indices ascending, then the
/// rest by UTF-16 code units.
fn js_key_order(a: &str, b: &str) -> Ordering {
    match (array_index(a), array_index(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.encode_utf16().cmp(b.encode_utf16()),
    }
}

fn write_value(out: &mut String, v: &Value, numbers: NumberStyle, arrays: ArrayStyle, sort: bool) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match numbers {
            NumberStyle::AsWritten => out.push_str(n),
            NumberStyle::Ecmascript => out.push_str(&ecmascript_number(n)),
        },
        Value::String(s) => write_string(out, s),
        Value::Array(items) if arrays == ArrayStyle::IndexedObject => {
            // Indices enumerate in numeric order, so the object keeps the
            // array's order.
            out.push('{');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "\"{i}\":");
                write_value(out, item, numbers, arrays, sort);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, numbers, arrays, sort);
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut order: Vec<&(Cow<str>, Value)> = members.iter().collect();
            if sort {
                // `sortObject` rebuilds objects by assignment, and assigning
                // to `__proto__` sets the prototype instead of a property:
                // the key never reaches the signed text.
                order.retain(|(k, _)| k != DROPPED_KEY);
                order.sort_by(|a, b| js_key_order(&a.0, &b.0));
            }
            out.push('{');
            for (i, (k, item)) in order.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_value(out, item, numbers, arrays, sort);
            }
            out.push('}');
        }
    }
}

/// Escapes like `JSON.stringify`: `"`, `\` and control characters only.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut run = 0;
    for (i, c) in s.char_indices() {
        let esc = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(esc);
        }
        run = i + c.len_utf8();
    }
    out.push_str(&s[run..]);
    out.push('"');
}

#[cfg(test)]
mod tests;
