//! The host's layering, checked on its sources (issue 17, SPEC "Shape"):
//! every `crate::…` path in a module of `host/src` names a module on a lower
//! layer (or one in its own module tree), and no modules import each other
//! in a circle. `docs/architecture.md` draws the same picture; a new module
//! gets a line in `LAYERS` below.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules from the highest layer down. A module may use the
/// modules of any later line (and its own tree), never an earlier line or
/// another module of its own line.
const LAYERS: &[&[&str]] = &[
    &["main"],
    &["cli"],
    &["server"],
    &["control", "gateway", "sip"],
    &["admin", "scheduler", "harness", "bundle"],
    &["runtime"],
    &["registry"],
    &["kernel"],
    &["capability"],
    &["telephony"],
    &["call"],
    &["identity"],
    &["audit", "backup", "events", "media", "outbound"],
    &["store"],
    &["error", "metrics", "tenant", "trust", "world"],
    &["support"],
];

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap_or("");
    LAYERS.iter().position(|line| line.contains(&top))
}

/// Every `.rs` file under `src`, by module path (`runtime::state`).
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "lib" || p == "mod") {
                    parts.pop();
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // Unit tests may reach anywhere.
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                };
                let name = if parts.is_empty() {
                    "lib".to_string()
                } else {
                    parts.join("::")
                };
                out.insert(name, code);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// Strips `//` comments (doc comments name modules in prose).
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &[u8], mut i: usize) -> (String, usize) {
    let start = i;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
        i += 1;
    }
    (String::from_utf8_lossy(&s[start..i]).into_owned(), i)
}

/// The paths `crate::a::b`, `crate::{a, b::c}` and `super::x` written in
/// `code`, as segment lists from the crate root.
fn paths(module: &str, code: &str) -> Vec<Vec<String>> {
    fn tree(s: &[u8], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
        let mut path = prefix;
        loop {
            while i < s.len() && s[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < s.len() && s[i] == b'{' {
                i += 1;
                loop {
                    i = tree(s, i, path.clone(), out);
                    while i < s.len() && s[i].is_ascii_whitespace() {
                        i += 1;
                    }
                    match s.get(i) {
                        Some(b',') => i += 1,
                        _ => break,
                    }
                    while i < s.len() && s[i].is_ascii_whitespace() {
                        i += 1;
                    }
                    if s.get(i) == Some(&b'}') {
                        break;
                    }
                }
                if s.get(i) == Some(&b'}') {
                    i += 1;
                }
                return i;
            }
            let (seg, next) = ident(s, i);
            if seg.is_empty() {
                out.push(path);
                return next;
            }
            i = next;
            if seg != "self" {
                path.push(seg);
            }
            if s.get(i) == Some(&b':') && s.get(i + 1) == Some(&b':') {
                i += 2;
            } else {
                out.push(path);
                return i;
            }
        }
    }
    let code = code_only(code);
    let s = code.as_bytes();
    let parent: Vec<String> = module
        .split("::")
        .map(str::to_string)
        .collect::<Vec<_>>()
        .split_last()
        .map(|(_, p)| p.to_vec())
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let boundary = i == 0 || !(s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_');
        if boundary && s[i..].starts_with(b"crate::") {
            i = tree(s, i + 7, Vec::new(), &mut out);
        } else if boundary && s[i..].starts_with(b"super::") {
            i = tree(s, i + 7, parent.clone(), &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// The longest module path that `path` starts with.
fn resolve(path: &[String], known: &BTreeSet<String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| known.contains(m))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (m, code) in &mods {
        let deps: BTreeSet<String> = paths(m, code)
            .iter()
            .filter_map(|p| resolve(p, &known))
            // A module may use itself and its own children (it is their door).
            .filter(|d| d != m && !d.starts_with(&format!("{m}::")))
            .collect();
        edges.insert(m.clone(), deps);
    }
    edges
}

#[test]
fn every_import_runs_down_a_layer() {
    let edges = graph();
    let mut wrong = Vec::new();
    for (from, deps) in &edges {
        if from == "lib" {
            continue;
        }
        let Some(lf) = layer_of(from) else {
            wrong.push(format!("{from}: not in LAYERS (give it a line)"));
            continue;
        };
        let top = from.split("::").next().unwrap_or("");
        for to in deps {
            let same_tree = to.split("::").next() == Some(top);
            let Some(lt) = layer_of(to) else { continue };
            if !same_tree && lt <= lf {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not run down a layer:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn no_module_imports_in_a_circle() {
    let edges = graph();
    // Tarjan's strongly connected components.
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        circles: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(st: &mut State<'a>, v: &'a str) {
        let n = st.index.len();
        st.index.insert(v, n);
        st.low.insert(v, n);
        st.stack.push(v);
        st.on_stack.insert(v);
        for w in st.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !st.index.contains_key(w) {
                visit(st, w);
                let lw = st.low[w];
                let lv = st.low[v];
                st.low.insert(v, lv.min(lw));
            } else if st.on_stack.contains(w) {
                let iw = st.index[w];
                let lv = st.low[v];
                st.low.insert(v, lv.min(iw));
            }
        }
        if st.low[v] == st.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on_stack.remove(w);
                comp.push(w);
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                st.circles.push(comp);
            }
        }
    }
    let mut st = State {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        circles: Vec::new(),
    };
    for v in edges.keys() {
        if !st.index.contains_key(v.as_str()) {
            visit(&mut st, v);
        }
    }
    assert!(
        st.circles.is_empty(),
        "modules that import each other in a circle: {:?}",
        st.circles
    );
}

#[test]
fn the_checker_sees_imports() {
    // The checker itself: grouped, nested, `super` and inline paths.
    let found = paths(
        "gateway::api",
        "use crate::{audit, identity::{oidc, sso}};\nuse super::reply::X;\nlet x = crate::store::keys::usage(t); // crate::cli\n",
    );
    let flat: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    for want in [
        "audit",
        "identity::oidc",
        "identity::sso",
        "gateway::reply::X",
        "store::keys::usage",
    ] {
        assert!(flat.iter().any(|f| f == want), "{want} not in {flat:?}");
    }
    assert!(!flat.iter().any(|f| f.starts_with("cli")));
}
