//! The module graph, checked from the sources: no import circles between modules, and the
//! pure core imports nothing outside itself. `docs/architecture.md` draws the layers this
//! test keeps.
//!
//! Nodes are the library's module files (`src/engine/fetch.rs` is `engine::fetch`). An edge
//! is a path one module names in another (`use crate::store::ShareStore`, `super::shares::
//! ShareMap`, an inline `crate::core::text::parse_name`), resolved to the module that
//! defines it. A module naming its own ancestor is not an edge: a parent owns its children
//! (and often re-exports them), so `child -> parent` is structure, not a dependency. Unit
//! tests (`#[cfg(test)] mod tests` at the end of a file, or its `tests.rs`) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn module_of(file: &Path, src: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "cli" || p == "main") {
        return None; // the binary, not the library
    }
    if parts.last().is_some_and(|p| p == "tests") {
        return None; // unit tests in a file of their own
    }
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    Some(
        std::iter::once("crate".to_owned())
            .chain(parts)
            .collect::<Vec<_>>()
            .join("::"),
    )
}

fn source_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code without comments, string literals and trailing unit tests.
fn code_of(text: &str) -> String {
    let text = match text.find("\n#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut code = String::with_capacity(text.len());
    for line in text.lines() {
        let line = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        let mut in_string = false;
        let mut previous = ' ';
        for c in line.chars() {
            if c == '"' && previous != '\\' && previous != '\'' {
                in_string = !in_string;
            } else if !in_string {
                code.push(c);
            }
            previous = c;
        }
        code.push('\n');
    }
    code
}

/// `use a::{b, c::{d, e}};` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let (prefix, inner) = (&tree[..open], &tree[open + 1..tree.len() - 1]);
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|item| !item.is_empty())
        .flat_map(expand)
        .map(|item| format!("{prefix}{item}"))
        .collect()
}

/// Every path the code names that starts at `crate`, `super` or `self`.
fn paths_named(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let boundary = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        if boundary {
            paths.extend(expand(&after[..end]));
        }
        rest = &after[end.min(after.len())..];
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        for (at, _) in code.match_indices(start) {
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b':') {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            paths.push(code[at..end].trim_end_matches(':').to_owned());
        }
    }
    paths
}

/// `path` as an absolute path from `crate`, or `None` for a path outside the crate.
fn absolute<'a>(path: &'a str, from: &'a str, modules: &BTreeSet<String>) -> Option<Vec<String>> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let first = *segments.first()?;
    let mut absolute: Vec<&str> = match first {
        "crate" => {
            segments.remove(0);
            vec!["crate"]
        }
        "super" | "self" => from.split("::").collect(),
        // `use child::item` in a parent names its own child module.
        child if modules.contains(&format!("{from}::{child}")) => from.split("::").collect(),
        _ => return None,
    };
    while let Some(&first) = segments.first() {
        match first {
            // `super` from `a/b.rs` and from `a/b/mod.rs` (both module `a::b`) is `a`.
            "super" => {
                absolute.pop();
            }
            "self" => {}
            _ => break,
        }
        segments.remove(0);
    }
    absolute.extend(segments);
    Some(absolute.into_iter().map(str::to_owned).collect())
}

/// The longest prefix of `path` that is a module, and what follows it.
fn split_module(path: &[String], modules: &BTreeSet<String>) -> Option<(String, Vec<String>)> {
    (1..=path.len()).rev().find_map(|n| {
        let candidate = path[..n].join("::");
        modules
            .contains(&candidate)
            .then(|| (candidate, path[n..].to_vec()))
    })
}

/// Items each module re-exports (`pub use a::b::Item;`), by name: where they really live.
type Reexports = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn reexports_of(
    code: &str,
    module: &str,
    modules: &BTreeSet<String>,
) -> BTreeMap<String, Vec<String>> {
    let mut found = BTreeMap::new();
    for visibility in ["pub use ", "pub(crate) use ", "pub(super) use "] {
        for (at, _) in code.match_indices(visibility) {
            let after = &code[at + visibility.len()..];
            let end = after.find(';').unwrap_or(after.len());
            for item in expand(&after[..end]) {
                let (path, name) = match item.split_once(" as ") {
                    Some((path, alias)) => (path.to_owned(), alias.to_owned()),
                    None => (
                        item.clone(),
                        item.rsplit("::").next().unwrap_or("").to_owned(),
                    ),
                };
                if let Some(path) = absolute(&path, module, modules) {
                    found.insert(name, path);
                }
            }
        }
    }
    found
}

/// The module `path` (named in module `from`) really depends on: an item reached through an
/// ancestor's re-export is followed to where it lives.
fn resolve(
    path: &str,
    from: &str,
    modules: &BTreeSet<String>,
    reexports: &Reexports,
) -> Option<String> {
    let mut path = absolute(path, from, modules)?;
    for _ in 0..8 {
        let (module, rest) = split_module(&path, modules)?;
        let through = rest
            .first()
            .and_then(|item| reexports.get(&module)?.get(item))
            .filter(|_| from == module || from.starts_with(&format!("{module}::")));
        match through {
            Some(real) if *real != path[..real.len().min(path.len())] => {
                path = real.iter().chain(&rest[1..]).cloned().collect();
            }
            _ => return Some(module),
        }
    }
    None
}

fn graph() -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let named: Vec<(String, String)> = files
        .into_iter()
        .filter_map(|f| {
            let code = code_of(&std::fs::read_to_string(&f).unwrap());
            Some((module_of(&f, &src)?, code))
        })
        .collect();
    let modules: BTreeSet<String> = named.iter().map(|(m, _)| m.clone()).collect();
    let reexports: Reexports = named
        .iter()
        .map(|(module, code)| (module.clone(), reexports_of(code, module, &modules)))
        .collect();
    let mut graph = Graph::new();
    for (module, code) in &named {
        let edges = graph.entry(module.clone()).or_default();
        for path in paths_named(code) {
            let Some(target) = resolve(&path, module, &modules, &reexports) else {
                continue;
            };
            // A module naming its own ancestor's items is structure: the parent owns it.
            let is_ancestor = module == &target || module.starts_with(&format!("{target}::"));
            if !is_ancestor {
                edges.insert(target);
            }
        }
    }
    graph
}

fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str()) {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, graph, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_in_a_circle() {
    let graph = graph();
    assert!(
        graph.len() > 40,
        "the source walk found only {} modules",
        graph.len()
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import circle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_top_level_layers_import_only_downward() {
    // Collapse to top-level modules (`crate::engine::fetch` → `engine`).
    let top = |m: &str| m.split("::").nth(1).unwrap_or("crate").to_owned();
    let mut layers = Graph::new();
    for (from, targets) in graph() {
        for target in targets {
            if top(&from) != top(&target) {
                layers.entry(top(&from)).or_default().insert(top(&target));
            }
        }
    }
    // The crate root and the fuzz harnesses name everything by design.
    layers.remove("crate");
    layers.remove("fuzzing");
    if let Some(cycle) = find_cycle(&layers) {
        panic!("layer circle: {}", cycle.join(" -> "));
    }
    let core = layers.get("core").cloned().unwrap_or_default();
    assert!(core.is_empty(), "the pure core imports {core:?}");
    for (layer, imports) in &layers {
        println!(
            "{layer} -> {}",
            imports.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
}

#[test]
fn the_circle_finder_finds_circles() {
    let mut graph = Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&graph), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&graph).map(|c| c.len()), Some(4));
    assert_eq!(
        expand("super::{node::FileNode, error::{ReadError, ShareReport}}"),
        [
            "super::node::FileNode",
            "super::error::ReadError",
            "super::error::ShareReport"
        ]
    );
}
