//! The canonical form must equal Node's `JSON.stringify(sortObject(x))` byte
//! for byte. Random JSON texts (nested containers, integer-like keys, escapes,
//! control and non-ASCII characters, numbers across the whole f64 range) go
//! through both our implementation and a live `node` process.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use ipn_relay::canonical::{ArrayStyle, canonical, parse};
use proptest::prelude::*;

/// Reads one JSON-encoded text a line, answers `[keepArrays, sortObject]`.
const ORACLE: &str = r#"
const rl = require('readline').createInterface({ input: process.stdin });
function sortKeep(v) {
  if (Array.isArray(v)) return v.map(sortKeep);
  if (v && typeof v === 'object')
    return Object.keys(v).sort().reduce((r, k) => { r[k] = sortKeep(v[k]); return r; }, {});
  return v;
}
// NOWPayments' documented reference, verbatim.
function sortObject(obj) {
  return Object.keys(obj).sort().reduce((result, key) => {
    result[key] = (obj[key] && typeof obj[key] === 'object') ? sortObject(obj[key]) : obj[key];
    return result;
  }, {});
}
rl.on('line', (line) => {
  const x = JSON.parse(JSON.parse(line));
  process.stdout.write(JSON.stringify([JSON.stringify(sortKeep(x)), JSON.stringify(sortObject(x))]) + '\n');
});
"#;

struct Node {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Node {
    fn start() -> Node {
        let mut child = Command::new("node")
            .arg("-e")
            .arg(ORACLE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("`node` must be installed: scripts/test installs it (Debian package nodejs)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Node { _child: child, stdin, stdout }
    }

    fn forms(&mut self, text: &str) -> (String, String) {
        writeln!(self.stdin, "{}", serde_json::to_string(text).unwrap()).unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let [keep, sort]: [String; 2] =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("node answered {line:?}: {e}"));
        (keep, sort)
    }
}

static NODE: Mutex<Option<Node>> = Mutex::new(None);

fn node_forms(text: &str) -> (String, String) {
    let mut guard = NODE.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(Node::start).forms(text)
}

/// A JSON value described by how it will be written out.
#[derive(Debug, Clone)]
enum J {
    Lit(&'static str),
    Num(String),
    Str(Vec<(char, bool)>), // character, written as \u escape?
    Arr(Vec<J>),
    Obj(Vec<(Vec<(char, bool)>, J)>),
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|b| {
            let f = f64::from_bits(b);
            if f.is_finite() { format!("{f:e}") } else { "1e400".into() }
        }),
        any::<u64>().prop_map(|b| {
            let f = f64::from_bits(b);
            if f.is_finite() { format!("{f}") } else { "-1e999".into() }
        }),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (0u32..1_000_000, 0usize..9).prop_map(|(n, z)| format!("0.{}{n}", "0".repeat(z))),
        ("-?[1-9][0-9]{0,40}", "[0-9]{1,40}", -330i32..330).prop_map(|(i, f, e)| format!("{i}.{f}e{e}")),
        Just("1e-7".to_owned()),
        Just("5e-324".to_owned()),
        Just("1e21".to_owned()),
        Just("1E+21".to_owned()),
        Just("999999999999999999999".to_owned()),
        Just("-0".to_owned()),
        Just("-0.0".to_owned()),
        Just("0.000002".to_owned()),
        Just("2.2250738585072014e-308".to_owned()),
        Just("1.7976931348623157e308".to_owned()),
        Just("0.1000000000000000055511151231257827021181583404541015625".to_owned()),
    ]
}

fn chars() -> impl Strategy<Value = Vec<(char, bool)>> {
    let ch = prop_oneof![
        4 => proptest::char::range('a', 'z'),
        1 => proptest::char::range('\0', '\u{1f}'),
        1 => prop_oneof![Just('"'), Just('\\'), Just('/'), Just('\u{7f}'), Just('\u{2028}'), Just('\u{2029}')],
        1 => proptest::char::range('\u{a0}', '\u{fff}'),
        1 => proptest::char::range('\u{e000}', '\u{ffff}'),
        1 => proptest::char::range('\u{10000}', '\u{10ffff}'),
    ];
    prop::collection::vec((ch, any::<bool>()), 0..8)
}

fn key() -> impl Strategy<Value = Vec<(char, bool)>> {
    let plain = |s: &str| s.chars().map(|c| (c, false)).collect::<Vec<_>>();
    prop_oneof![
        3 => chars(),
        2 => (0u64..20).prop_map(move |n| plain(&n.to_string())),
        1 => prop_oneof![
            Just(plain("4294967294")), Just(plain("4294967295")), Just(plain("01")), Just(plain("-1")),
            Just(plain("1.5")), Just(plain("1e3")), Just(plain("")), Just(plain("A")), Just(plain("a")),
        ],
        // Assigning to `__proto__` sets the prototype: sortObject drops it.
        1 => Just(plain("__proto__")),
    ]
}

fn json() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Lit("null")),
        Just(J::Lit("true")),
        Just(J::Lit("false")),
        number().prop_map(J::Num),
        chars().prop_map(J::Str),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            prop::collection::vec((key(), inner), 0..6).prop_map(|members| {
                let mut seen = std::collections::HashSet::new();
                J::Obj(
                    members
                        .into_iter()
                        .filter(|(k, _)| seen.insert(k.iter().map(|c| c.0).collect::<String>()))
                        .collect(),
                )
            }),
        ]
    })
}

fn write_str(out: &mut String, s: &[(char, bool)]) {
    out.push('"');
    for &(c, escape) in s {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if escape || (c as u32) < 0x20 => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write(out: &mut String, j: &J, ws: &mut impl Iterator<Item = &'static str>) {
    fn space(out: &mut String, ws: &mut impl Iterator<Item = &'static str>) {
        out.push_str(ws.next().unwrap_or(""));
    }
    match j {
        J::Lit(l) => out.push_str(l),
        J::Num(n) => out.push_str(n),
        J::Str(s) => write_str(out, s),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(out, ws);
                write(out, item, ws);
            }
            out.push(']');
        }
        J::Obj(members) => {
            out.push('{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(out, ws);
                write_str(out, k);
                out.push(':');
                space(out, ws);
                write(out, v, ws);
            }
            out.push('}');
        }
    }
}

fn text_of(root: &J, ws_seed: u8) -> String {
    const WS: [&str; 5] = ["", " ", "\n  ", "\t", "\r\n"];
    let mut ws = (0..).map(move |i: usize| WS[(i * 7 + ws_seed as usize) % WS.len()]);
    let mut out = String::new();
    write(&mut out, root, &mut ws);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn canonical_form_matches_node(members in prop::collection::vec((key(), json()), 0..8), ws in any::<u8>()) {
        // IPN bodies are objects at the top level.
        let mut seen = std::collections::HashSet::new();
        let root = J::Obj(members.into_iter().filter(|(k, _)| seen.insert(k.iter().map(|c| c.0).collect::<String>())).collect());
        let text = text_of(&root, ws);
        let value = parse(text.as_bytes()).unwrap_or_else(|e| panic!("our parser refused {text:?}: {e}"));
        let (keep, sort) = node_forms(&text);
        prop_assert_eq!(canonical(&value, ArrayStyle::Array), keep);
        prop_assert_eq!(canonical(&value, ArrayStyle::IndexedObject), sort);
    }
}

#[test]
fn documented_examples_match_node() {
    for text in [
        r#"{"a":[1e21,1e-7,5e-324,-0,0.000002,1.5e21,123e-20]}"#,
        r#"{"b":{"2":1,"10":2,"a":3,"01":4},"a":[]}"#,
        r#"{"fee":{"currency":"btc","depositFee":0.09853637216235617,"withdrawalFee":0,"serviceFee":0}}"#,
    ] {
        let (keep, sort) = node_forms(text);
        let value = parse(text.as_bytes()).unwrap();
        assert_eq!(canonical(&value, ArrayStyle::Array), keep);
        assert_eq!(canonical(&value, ArrayStyle::IndexedObject), sort);
    }
}
