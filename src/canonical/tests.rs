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
