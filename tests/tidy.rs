//! Code-shape rules, checked without the stack: no import cycles between the files of a crate, and the
//! runtime's functions short enough to read in one screen.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Source roots of the workspace's crates.
const CRATES: &[&str] = &[
    "schemas/src",
    "runtime/src",
    "ingest/src",
    "ingest/core/src",
    "processors/src",
    "sinks/src",
    "api/src",
    "src",
];

/// The longest function (lines, signature to closing brace) allowed in the runtime.
const RUNTIME_FN_LINES_MAX: usize = 80;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Source with comments, string and char literals blanked (so braces and `crate::` in them don't count).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if b.get(i) == Some(&b'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\''
            && i + 2 < b.len()
            && (b[i + 2] == b'\'' || (b[i + 1] == b'\\' && b.get(i + 3) == Some(&b'\'')))
        {
            // A char literal ('{', '\n'); lifetimes ('a) are left alone.
            i += if b[i + 1] == b'\\' { 4 } else { 3 };
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The module a `crate::x` path names, as a file of the crate (`x.rs` or `x/mod.rs`), if it is one.
fn module_file(src_root: &Path, name: &str) -> Option<PathBuf> {
    [src_root.join(format!("{name}.rs")), src_root.join(name).join("mod.rs")].into_iter().find(|p| p.exists())
}

/// File → files of the same crate it refers to through `crate::…`.
fn imports(src_root: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut graph = BTreeMap::new();
    for f in rust_files(src_root) {
        let text = code_only(&std::fs::read_to_string(&f).unwrap_or_default());
        let mut deps = BTreeSet::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            // `crate::{a, b}`
            let names: Vec<String> = if name.is_empty() && rest.starts_with('{') {
                let inner = &rest[1..rest.find('}').unwrap_or(1)];
                inner.split(',').map(|p| p.trim().split("::").next().unwrap_or_default().to_owned()).collect()
            } else {
                vec![name]
            };
            for n in names {
                if let Some(dep) = module_file(src_root, &n) {
                    if dep != f {
                        deps.insert(dep);
                    }
                }
            }
        }
        graph.insert(f, deps);
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn cycle(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Option<Vec<PathBuf>> {
    fn visit(
        n: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        path: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut c = path[at..].to_vec();
            c.push(n.clone());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.clone());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let mut problems = Vec::new();
    for c in CRATES {
        let src = root().join(c);
        if let Some(cycle) = cycle(&imports(&src)) {
            let names: Vec<String> =
                cycle.iter().map(|p| p.strip_prefix(root()).unwrap_or(p).display().to_string()).collect();
            problems.push(names.join(" → "));
        }
    }
    assert!(
        problems.is_empty(),
        "import cycles (move the shared part into a leaf module):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let (a, b, c) = (PathBuf::from("a.rs"), PathBuf::from("b.rs"), PathBuf::from("c.rs"));
    let mut g = BTreeMap::new();
    g.insert(a.clone(), BTreeSet::from([b.clone()]));
    g.insert(b.clone(), BTreeSet::from([c.clone()]));
    g.insert(c.clone(), BTreeSet::new());
    assert_eq!(cycle(&g), None);
    g.insert(c.clone(), BTreeSet::from([a.clone()]));
    assert_eq!(cycle(&g), Some(vec![a.clone(), b, c, a]));
}

/// (name, first line, lines) of every function with a body in `src`.
fn functions(src: &str) -> Vec<(String, usize, usize)> {
    let code = code_only(src);
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_start();
        let at = l.find("fn ").filter(|&p| p == 0 || l[..p].ends_with(' '));
        let is_fn = at.is_some_and(|p| {
            l[..p]
                .split_whitespace()
                .all(|w| ["pub", "pub(crate)", "async", "const", "unsafe", "extern"].contains(&w))
        });
        if !is_fn {
            i += 1;
            continue;
        }
        let name: String =
            l[at.unwrap_or(0) + 3..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let (mut depth, mut opened, mut j) = (0i32, false, i);
        while j < lines.len() {
            for ch in lines[j].chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth == 0) || (!opened && lines[j].trim_end().ends_with(';')) {
                break;
            }
            j += 1;
        }
        if opened {
            out.push((name, i + 1, j - i + 1));
        }
        i = j + 1;
    }
    out
}

#[test]
fn runtime_functions_fit_one_screen() {
    let mut long = Vec::new();
    for f in rust_files(&root().join("runtime/src")) {
        let src = std::fs::read_to_string(&f).unwrap_or_default();
        // Tests are tables of cases; the rule is for the code they test.
        let code = src.split("#[cfg(test)]").next().unwrap_or_default();
        for (name, line, n) in functions(code) {
            if n > RUNTIME_FN_LINES_MAX {
                long.push(format!(
                    "{}:{line} {name}: {n} lines",
                    f.strip_prefix(root()).unwrap_or(&f).display()
                ));
            }
        }
    }
    assert!(
        long.is_empty(),
        "runtime functions over {RUNTIME_FN_LINES_MAX} lines (split them):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_length_check_measures_functions() {
    let src = "fn a() {\n    let c = '{';\n    let s = \"}}\";\n}\n\npub async fn b(x: u8) -> u8 {\n    x\n}\nfn decl();\n";
    assert_eq!(functions(src), vec![("a".to_owned(), 1, 4), ("b".to_owned(), 6, 3)]);
}
