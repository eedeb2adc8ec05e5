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
use std::collections::HashSet;
use std::fmt::Write as _;

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

/// Objects with more members than this check duplicates with a hash set, so
/// a large hostile object costs linear time, not quadratic.
const LINEAR_DUPLICATE_CHECK: usize = 16;

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

    /// A scalar as text: strings as they are, numbers as written, booleans
    /// as `true`/`false`. `None` for null, arrays and objects.
    pub fn scalar_text(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n),
            Value::Bool(true) => Some("true"),
            Value::Bool(false) => Some("false"),
            _ => None,
        }
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

/// Parses one JSON text strictly: RFC 8259 grammar, UTF-8 only, no duplicate
/// keys, at most [`MAX_DEPTH`] levels, nothing but whitespace after it.
pub fn parse(bytes: &[u8]) -> Result<Value<'_>, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError::Syntax(e.valid_up_to(), "invalid UTF-8"))?;
    let mut p = Parser { s: text.as_bytes(), src: text, pos: 0 };
    p.skip_ws();
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(ParseError::Syntax(p.pos, "trailing characters after JSON value"));
    }
    Ok(value)
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

struct Parser<'a> {
    s: &'a [u8],
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err<T>(&self, what: &'static str) -> Result<T, ParseError> {
        Err(ParseError::Syntax(self.pos, what))
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.pos) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, ParseError> {
        match self.s.get(self.pos) {
            None => self.err("unexpected end of input"),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.err("expected a JSON value"),
        }
    }

    fn literal(&mut self, word: &'static str, v: Value<'a>) -> Result<Value<'a>, ParseError> {
        if self.s[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(v)
        } else {
            self.err("invalid literal")
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value<'a>, ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::TooDeep);
        }
        self.pos += 1; // '{'
        let mut members: Vec<(Cow<'a, str>, Value<'a>)> = Vec::new();
        let mut seen: HashSet<Cow<'a, str>> = HashSet::new();
        self.skip_ws();
        if self.s.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            if self.s.get(self.pos) != Some(&b'"') {
                return self.err("expected a string key");
            }
            let key = self.string()?;
            // Refuse duplicates: the verifier and the merchant's parser could
            // otherwise each pick a different one of the two values.
            let duplicate = if members.len() < LINEAR_DUPLICATE_CHECK {
                members.iter().any(|(k, _)| *k == key)
            } else {
                if seen.is_empty() {
                    seen.extend(members.iter().map(|(k, _)| k.clone()));
                }
                !seen.insert(key.clone())
            };
            if duplicate {
                return Err(ParseError::DuplicateKey(key.into_owned()));
            }
            self.skip_ws();
            if self.s.get(self.pos) != Some(&b':') {
                return self.err("expected ':' after key");
            }
            self.pos += 1;
            self.skip_ws();
            let v = self.value(depth)?;
            members.push((key, v));
            self.skip_ws();
            match self.s.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                _ => return self.err("expected ',' or '}' in object"),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value<'a>, ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::TooDeep);
        }
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.s.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.s.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return self.err("expected ',' or ']' in array"),
            }
        }
    }

    fn number(&mut self) -> Result<Value<'a>, ParseError> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let from = p.pos;
            while let Some(b'0'..=b'9') = p.s.get(p.pos) {
                p.pos += 1;
            }
            p.pos - from
        };
        if self.s.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.s.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return self.err("invalid number"),
        }
        if self.s.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return self.err("invalid number: no digits after '.'");
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.s.get(self.pos) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return self.err("invalid number: no digits in exponent");
            }
        }
        Ok(Value::Number(&self.src[start..self.pos]))
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let Some(h) = self.s.get(self.pos..self.pos + 4) else {
            return self.err("truncated \\u escape");
        };
        let Some(v) = std::str::from_utf8(h).ok().and_then(|h| u32::from_str_radix(h, 16).ok()) else {
            return self.err("invalid \\u escape");
        };
        if h.iter().any(|b| !b.is_ascii_hexdigit()) {
            return self.err("invalid \\u escape");
        }
        self.pos += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<Cow<'a, str>, ParseError> {
        self.pos += 1; // opening quote
        // Most strings have no escapes: borrow them from the input.
        let start = self.pos;
        while let Some(&b) = self.s.get(self.pos) {
            if b == b'"' {
                self.pos += 1;
                return Ok(Cow::Borrowed(&self.src[start..self.pos - 1]));
            }
            if b == b'\\' || b < 0x20 {
                break;
            }
            self.pos += 1;
        }
        let mut out = String::from(&self.src[start..self.pos]);
        loop {
            // Copy the run of plain characters in one go.
            let run_start = self.pos;
            while let Some(&b) = self.s.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.src[run_start..self.pos]);
            match self.s.get(self.pos) {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let Some(&e) = self.s.get(self.pos) else {
                        return self.err("unterminated escape");
                    };
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                // A surrogate pair must follow as a second escape.
                                if self.s.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return self.err("lone surrogate in \\u escape");
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.err("lone surrogate in \\u escape");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return self.err("lone surrogate in \\u escape");
                            } else {
                                hi
                            };
                            match char::from_u32(c) {
                                Some(c) => out.push(c),
                                None => return self.err("invalid \\u escape"),
                            }
                        }
                        _ => return self.err("invalid escape"),
                    }
                }
                Some(_) => return self.err("control character in string"),
            }
        }
    }
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
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        canonical(&parse(s.as_bytes()).unwrap(), ArrayStyle::Array)
    }

    #[test]
    fn finds_the_members_the_canonical_form_leaves_out() {
        let path = |s: &str| dropped_member(&parse(s.as_bytes()).unwrap());
        assert_eq!(path(r#"{"a":1,"b":{"c":[1,{"d":2}]}}"#), None);
        assert_eq!(path(r#"{"__proto__":{"isAdmin":true}}"#).as_deref(), Some("__proto__"));
        assert_eq!(path(r#"{"a":1,"fee":{"x":1,"__proto__":null}}"#).as_deref(), Some("fee.__proto__"));
        assert_eq!(path(r#"{"items":[{"a":1},{"__proto__":5}]}"#).as_deref(), Some("items[1].__proto__"));
        assert_eq!(path(r#"[[{"__proto__":{}}]]"#).as_deref(), Some("[0][0].__proto__"));
        // A string value or an escaped spelling that decodes to the key counts too.
        assert_eq!(path(r#"{"s":"__proto__"}"#), None);
        assert_eq!(path(r#"{"\u005f_proto__":1}"#).as_deref(), Some("__proto__"));
    }

    #[test]
    fn numbers_print_like_ecmascript() {
        for (lit, js) in [
            ("0.000002", "0.000002"),
            ("1e-7", "1e-7"),
            ("20", "20"),
            ("20.0", "20"),
            ("1.5e21", "1.5e+21"),
            ("1e21", "1e+21"),
            ("100000000000000000000", "100000000000000000000"),
            ("-0", "0"),
            ("-0.0e5", "0"),
            ("5e-324", "5e-324"),
            ("1e400", "null"),
            ("0.1000000000000000055511151231257827021181583404541015625", "0.1"),
            ("12345678901234567890", "12345678901234567000"),
            ("0.09853637216235617", "0.09853637216235617"),
        ] {
            assert_eq!(ecmascript_number(lit), js, "literal {lit}");
        }
    }

    #[test]
    fn keys_sort_with_array_indices_first() {
        assert_eq!(
            canon(r#"{"b":1,"a":2,"10":3,"2":4,"01":5,"4294967295":6,"A":7}"#),
            r#"{"2":4,"10":3,"01":5,"4294967295":6,"A":7,"a":2,"b":1}"#
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units_not_code_points() {
        // U+1F600 is encoded 0xD83D 0xDE00, so it sorts before U+FF61 in
        // UTF-16 although its code point is larger.
        assert_eq!(canon("{\"\u{FF61}\":2,\"\u{1F600}\":1}"), "{\"\u{1F600}\":1,\"\u{FF61}\":2}");
    }

    #[test]
    fn strings_escape_only_what_json_stringify_escapes() {
        assert_eq!(
            canon(r#"["\/", "é\u00e9", "\u0001\u001f\b\t", "\u2028", "\"\\"]"#),
            "[\"/\",\"éé\",\"\\u0001\\u001f\\b\\t\",\"\u{2028}\",\"\\\"\\\\\"]"
        );
    }

    #[test]
    fn indexed_object_style_turns_arrays_into_objects() {
        let v = parse(br#"{"a":[3,{"z":1,"y":[]}]}"#).unwrap();
        assert_eq!(canonical(&v, ArrayStyle::IndexedObject), r#"{"a":{"0":3,"1":{"y":{},"z":1}}}"#);
        assert_eq!(canonical(&v, ArrayStyle::Array), r#"{"a":[3,{"y":[],"z":1}]}"#);
    }

    #[test]
    fn compact_keeps_order_and_numbers_as_written() {
        let v = parse(b" { \"b\" : 1.50 , \"a\" : [ 1e2 , null ] } ").unwrap();
        assert_eq!(v.to_compact(), r#"{"b":1.50,"a":[1e2,null]}"#);
    }

    #[test]
    fn refuses_duplicate_keys_even_when_escaped_differently() {
        assert_eq!(parse(br#"{"a":1,"a":2}"#), Err(ParseError::DuplicateKey("a".into())));
        assert_eq!(parse(br#"{"a":1,"\u0061":2}"#), Err(ParseError::DuplicateKey("a".into())));
        assert!(parse(br#"{"x":{"a":1},"y":{"a":1}}"#).is_ok());
    }

    #[test]
    fn refuses_nesting_deeper_than_the_limit() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(parse(deep.as_bytes()), Err(ParseError::TooDeep));
        // A million brackets must fail fast, not overflow the stack.
        let huge = "[".repeat(1_000_000);
        assert_eq!(parse(huge.as_bytes()), Err(ParseError::TooDeep));
    }

    #[test]
    fn refuses_malformed_json() {
        for bad in [
            "",
            "{",
            r#"{"a":1"#,
            r#"{"a":1,}"#,
            "[1,]",
            "01",
            "1.",
            "1e",
            "-",
            "+1",
            ".5",
            "NaN",
            "tru",
            "\"\u{1}\"",
            r#""\x""#,
            r#""\ud800""#,
            r#""\udc00x""#,
            "{} {}",
            "\u{feff}{}",
            r#"{'a':1}"#,
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "accepted {bad:?}");
        }
        assert!(parse(b"\xff").is_err());
    }

    #[test]
    fn detects_compact_texts() {
        assert!(is_compact(br#"{"a":"x y\" \\","b":[1,2]}"#));
        assert!(!is_compact(br#"{"a": 1}"#));
        assert!(!is_compact(b"{}\n"));
    }

    #[test]
    fn large_objects_still_refuse_duplicates() {
        let mut text = String::from("{");
        for i in 0..5000 {
            text.push_str(&format!("\"k{i}\":{i},"));
        }
        text.push_str("\"k4999\":0}");
        assert_eq!(parse(text.as_bytes()), Err(ParseError::DuplicateKey("k4999".into())));
        assert!(parse(text.replace(",\"k4999\":0}", "}").as_bytes()).is_ok());
    }

    #[test]
    fn decodes_surrogate_pairs() {
        assert_eq!(parse(br#""\ud83d\ude00""#).unwrap(), Value::String("\u{1F600}".into()));
    }
}
