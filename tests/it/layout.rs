//! The source layout stays walkable: no two top-level modules import each
//! other, directly or around a loop, and no source file grows past the size
//! one can read in a sitting. Both are read from the files in `src/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest source file, in lines, tests included.
const MAX_LINES: usize = 600;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            (rel, text)
        })
        .collect()
}

/// The top-level modules each module's non-test code names, by `crate::`
/// paths (grouped `crate::{a, b::c}` included) or by enough `super::`s to
/// reach the crate root.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    imports_of(&sources())
}

fn imports_of(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let top = |rel: &str| rel.split('/').next().unwrap().trim_end_matches(".rs").to_owned();
    let modules: BTreeSet<String> =
        files.iter().map(|(rel, _)| top(rel)).filter(|m| m != "lib" && m != "main").collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for (rel, text) in files {
        let from = top(rel);
        if !modules.contains(&from) || rel.ends_with("tests.rs") {
            continue;
        }
        // How many `super::` reach the crate root from this file.
        let parts: Vec<&str> = rel.split('/').collect();
        let depth = parts.len() - usize::from(parts.last() == Some(&"mod.rs"));
        for name in roots_named(&code_of(text), depth) {
            if name != from && modules.contains(&name) {
                graph.get_mut(&from).unwrap().insert(name);
            }
        }
    }
    graph
}

/// The file without its `mod tests` and comments, on one line.
fn code_of(text: &str) -> String {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    code.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join(" ")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first path segments after each path from the crate root in `code`:
/// `crate::x`, `crate::{x, y::z}`, and `super::` repeated `depth` times.
fn roots_named(code: &str, depth: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(['c', 's']) {
        let before = code.len() - rest.len() + at;
        let tail = &rest[at..];
        rest = &rest[at + 1..];
        let preceded = code[..before].chars().last().is_some_and(|c| is_ident(c) || c == ':');
        if preceded {
            continue;
        }
        let after = if let Some(t) = tail.strip_prefix("crate::") {
            t
        } else if tail.starts_with("super::") {
            let mut t = tail;
            let mut supers = 0;
            while let Some(next) = t.strip_prefix("super::") {
                t = next;
                supers += 1;
            }
            if supers != depth {
                continue;
            }
            t
        } else {
            continue;
        };
        match after.strip_prefix('{') {
            Some(group) => names.extend(group_items(group)),
            None => names.push(after.chars().take_while(|c| is_ident(*c)).collect()),
        }
    }
    names
}

/// The first segment of each top-level item of a `{…}` group (the text
/// after its `{`).
fn group_items(group: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut level = 0;
    let mut current = String::new();
    let mut taking = true;
    for c in group.chars() {
        match c {
            '{' => {
                level += 1;
                taking = false;
            }
            '}' if level == 0 => break,
            '}' => level -= 1,
            ',' if level == 0 => {
                items.push(std::mem::take(&mut current));
                taking = true;
            }
            c if c.is_whitespace() && current.is_empty() => {}
            c if level == 0 && taking && is_ident(c) => current.push(c),
            _ if level == 0 => taking = false,
            _ => {}
        }
    }
    items.push(current);
    items.into_iter().filter(|i| !i.is_empty()).collect()
}

/// A loop of imports starting and ending at `start`, if there is one.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![start.to_owned()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        for next in &graph[path.last().unwrap()] {
            if next == start {
                return Some([path.clone(), vec![next.clone()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push([path.clone(), vec![next.clone()]].concat());
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = imports();
    assert!(graph.len() > 10, "found the modules: {graph:?}");
    assert!(graph["server"].contains("ingress"), "reads imports: {graph:?}");
    for module in graph.keys() {
        if let Some(cycle) = cycle_through(&graph, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.insert("a".into(), ["b".to_owned()].into());
    graph.insert("b".into(), ["c".to_owned()].into());
    graph.insert("c".into(), ["a".to_owned()].into());
    assert_eq!(cycle_through(&graph, "a").unwrap(), ["a", "b", "c", "a"]);
    graph.get_mut("c").unwrap().clear();
    assert_eq!(cycle_through(&graph, "a"), None);
}

#[test]
fn no_source_file_is_longer_than_a_sitting() {
    let long: Vec<String> = sources()
        .into_iter()
        .map(|(rel, text)| (rel, text.lines().count()))
        .filter(|(_, lines)| *lines > MAX_LINES)
        .map(|(rel, lines)| format!("src/{rel}: {lines} lines"))
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines; split by concern: {long:?}");
}

#[test]
fn imports_are_read_however_they_are_written() {
    let files: Vec<(String, String)> = [
        ("a.rs", "use crate::{\n    b::Thing,\n    c,\n};\n// use crate::z;\n"),
        ("b.rs", "use super::d as _;\n#[cfg(test)]\nconst T: () = ();\nuse crate::e::{X, Y};\n"),
        ("c/mod.rs", "mod inner;\n"),
        ("c/inner.rs", "use super::super::f::G;\nuse super::sibling;\n"),
        ("d.rs", "#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n"),
        ("e.rs", "fn x() { crate::f::g(); my_crate::a::b(); }\n"),
        ("f.rs", ""),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_owned(), t.to_owned()))
    .collect();
    let graph = imports_of(&files);
    let names = |m: &str| graph[m].iter().cloned().collect::<Vec<_>>();
    assert_eq!(names("a"), ["b", "c"]);
    assert_eq!(names("b"), ["d", "e"]);
    assert_eq!(names("c"), ["f"]);
    assert!(names("d").is_empty(), "test modules do not count");
    assert_eq!(names("e"), ["f"]);
}
