//! The agent's layering, checked: imports between its top-level modules point down only.
//!
//! The rule is written once, in ARCHITECTURE.md ("Layers of the agent"): a table of layers and
//! their modules, and a table of the crossings still allowed to point up until they are removed.
//! This test reads both, reads every `crate::` import under `agent/src/` (test modules aside),
//! and fails on an import that points up without being listed, on a listed crossing that no
//! longer exists (so the list only shrinks), on a cycle inside one layer, and on a module that
//! belongs to no layer. In the spirit of rust-analyzer's tidy tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module name to layer number.
type Layers = BTreeMap<String, usize>;
/// Importing module to the modules it imports.
type Edges = BTreeMap<String, BTreeSet<String>>;

fn agent_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The rows of the Markdown table that follows `marker` in `text`, as trimmed cells.
fn table_after(text: &str, marker: &str) -> Vec<Vec<String>> {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no {marker}"));
    text[start + marker.len()..]
        .lines()
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect()
}

fn read_rules() -> (Layers, BTreeSet<(String, String)>) {
    let path = agent_dir().join("../ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut layers = Layers::new();
    for row in table_after(&text, "<!-- agent layers -->") {
        let number: usize = row[0]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("layer row {row:?} does not start with a number"));
        for module in row[1].split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let module = module.trim_matches('`').to_owned();
            assert!(
                layers.insert(module.clone(), number).is_none(),
                "{module} is in two layers"
            );
        }
    }
    let crossings = table_after(&text, "<!-- agent crossings -->")
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    (layers, crossings)
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            rust_files(&entry, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

/// The top-level module names: `agent/src/<name>.rs` and `agent/src/<name>/`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("agent/src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == "lib" || name == "main" {
            continue;
        }
        if path.is_dir() || path.extension().is_some_and(|e| e == "rs") {
            found.insert(name, path);
        }
    }
    found
}

/// The first path segment of every `crate::` path in `code`, grouped imports included.
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut end = group.len();
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain(std::iter::once(',')) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let head: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !head.is_empty() {
                            out.insert(head);
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            let head: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !head.is_empty() {
                out.insert(head);
            }
        }
    }
    out
}

/// The code of a file without comments and without its test module.
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn read_edges() -> Edges {
    let src = agent_dir().join("src");
    let all = modules(&src);
    let mut edges = Edges::new();
    for (name, path) in &all {
        let mut files = Vec::new();
        rust_files(path, &mut files);
        let targets = edges.entry(name.clone()).or_default();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("source");
            for import in crate_imports(&production_code(&text)) {
                if import != *name && all.contains_key(&import) {
                    targets.insert(import);
                }
            }
        }
    }
    edges
}

/// Every broken rule, in words.
fn violations(
    layers: &Layers,
    crossings: &BTreeSet<(String, String)>,
    edges: &Edges,
) -> Vec<String> {
    let mut found = Vec::new();
    for module in edges.keys() {
        if !layers.contains_key(module) {
            found.push(format!("module {module} is in no layer of ARCHITECTURE.md"));
        }
    }
    let mut used = BTreeSet::new();
    for (from, targets) in edges {
        for to in targets {
            let (Some(a), Some(b)) = (layers.get(from), layers.get(to)) else {
                continue;
            };
            if b > a {
                let key = (from.clone(), to.clone());
                if crossings.contains(&key) {
                    used.insert(key);
                } else {
                    found.push(format!(
                        "{from} (layer {a}) imports {to} (layer {b}): imports point down; move the type down or pass it in"
                    ));
                }
            }
        }
    }
    for (from, to) in crossings.difference(&used) {
        found.push(format!(
            "the crossing {from} -> {to} listed in ARCHITECTURE.md no longer exists: remove it from the table"
        ));
    }
    // A cycle inside one layer: depth-first search over same-layer edges.
    fn visit(
        node: &str,
        edges: &Edges,
        layers: &Layers,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            found.push(format!(
                "cycle inside layer {}: {} -> {node}",
                layers.get(node).copied().unwrap_or(0),
                stack[at..].join(" -> ")
            ));
            return;
        }
        if !done.insert(node.to_owned()) {
            return;
        }
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if layers.get(next) == layers.get(node) {
                visit(next, edges, layers, stack, done, found);
            }
        }
        stack.pop();
    }
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        visit(
            module,
            edges,
            layers,
            &mut Vec::new(),
            &mut done,
            &mut found,
        );
    }
    found
}

#[test]
fn imports_between_the_agents_modules_point_down() {
    let (layers, crossings) = read_rules();
    let edges = read_edges();
    let found = violations(&layers, &crossings, &edges);
    assert!(
        found.is_empty(),
        "the agent's layering (ARCHITECTURE.md, \"Layers of the agent\") is broken:\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn one_upward_import_or_one_cycle_fails_the_check() {
    let (layers, crossings) = read_rules();
    let mut edges = read_edges();
    // outcome is the bottom layer: an import of the daemon from it points up.
    edges
        .entry("outcome".into())
        .or_default()
        .insert("daemon".into());
    let found = violations(&layers, &crossings, &edges);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("outcome (layer 0) imports daemon"),
        "{found:?}"
    );

    let mut edges = read_edges();
    let (a, b) = ("health".to_owned(), "result_log".to_owned());
    assert_eq!(layers.get(&a), layers.get(&b));
    edges.entry(a.clone()).or_default().insert(b.clone());
    edges.entry(b).or_default().insert(a);
    let found = violations(&layers, &crossings, &edges);
    assert!(
        found.iter().any(|f| f.starts_with("cycle inside layer")),
        "{found:?}"
    );
}

#[test]
fn grouped_and_nested_imports_are_read() {
    let code = "use crate::{config::{A, B}, mqtt, outcome::Outcome};\nlet x = crate::metrics::M;";
    let found: Vec<String> = crate_imports(code).into_iter().collect();
    assert_eq!(found, ["config", "metrics", "mqtt", "outcome"]);
    let with_tests = "use crate::a;\n// crate::b\n#[cfg(test)]\nmod tests {\n use crate::c;\n}\n";
    let found: Vec<String> = crate_imports(&production_code(with_tests))
        .into_iter()
        .collect();
    assert_eq!(found, ["a"]);
}
