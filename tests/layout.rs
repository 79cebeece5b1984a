//! The server's shape, checked from its source (no broker runs here): the files under
//! `src/server/` import each other without a loop (ARCHITECTURE.md: "no two server
//! files import each other, directly or through others"), and exactly one of them, the
//! wire edge `conn/wire.rs`, uses protobuf types (`squall_proto::v1`).
//!
//! The import graph is read from the paths in the code: every `crate::…`, `super::…`
//! and `self::…` path (in `use` lines or inline), and in a `mod.rs` every path through
//! one of its own child modules, resolved to the file of the longest module prefix it
//! names. `mod x;` declarations are not imports. Inline `#[cfg(test)] mod tests` blocks
//! are left out (their `super` is their own file).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, e.g. `["server", "conn", "wire"]`.
type ModPath = Vec<String>;

fn server_files() -> BTreeMap<ModPath, PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.join("server")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/server") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).expect("under src");
            let mut module: ModPath = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            files.insert(module, path);
        }
    }
    files
}

/// The source without comments and without an inline test module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path starting with `crate`, `super`, `self` or one of `children`, as its
/// segments (a brace group contributes each of its first segments).
fn paths(code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) || (i > 0 && (is_ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let mut segments = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && is_ident(bytes[j]) {
                j += 1;
            }
            segments.push(code[start..j].to_owned());
            if code[j..].starts_with("::") {
                j += 2;
                if code[j..].starts_with('{') {
                    // `a::{b::C, d}`: each item's first segment.
                    let end = code[j..].find('}').map_or(code.len(), |e| j + e);
                    for item in code[j + 1..end].split(',') {
                        let first = item.trim().split("::").next().unwrap_or("").trim();
                        if !first.is_empty() && first != "self" {
                            let mut p = segments.clone();
                            p.push(first.to_owned());
                            out.push(p);
                        }
                    }
                    j = end;
                    segments.clear();
                    break;
                }
                continue;
            }
            break;
        }
        let head = segments.first().map(String::as_str);
        let rooted = matches!(head, Some("crate" | "super" | "self"))
            || head.is_some_and(|h| children.contains(h));
        if segments.len() > 1 && rooted {
            out.push(segments);
        }
        i = j.max(i + 1);
    }
    out
}

/// The file a path from module `from` leads to, if it is a server file.
fn resolve(from: &ModPath, path: &[String], files: &BTreeMap<ModPath, PathBuf>) -> Option<ModPath> {
    let mut base: ModPath = match path[0].as_str() {
        "crate" => Vec::new(),
        "self" => from.clone(),
        "super" => from[..from.len() - 1].to_vec(),
        _ => from.clone(),
    };
    let rest = match path[0].as_str() {
        "crate" | "self" | "super" => &path[1..],
        _ => path,
    };
    let mut found = files.contains_key(&base).then(|| base.clone());
    for segment in rest {
        if segment == "super" {
            base.pop();
        } else {
            base.push(segment.clone());
        }
        if files.contains_key(&base) {
            found = Some(base.clone());
        }
    }
    found.filter(|m| m.first().is_some_and(|s| s == "server"))
}

fn import_graph() -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let files = server_files();
    let mut graph = BTreeMap::new();
    for (module, path) in &files {
        let children: BTreeSet<String> = files
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            .map(|m| m[m.len() - 1].clone())
            .collect();
        let is_mod_rs = path.ends_with("mod.rs");
        let children = if is_mod_rs { children } else { BTreeSet::new() };
        let edges: BTreeSet<ModPath> = paths(&code(path), &children)
            .iter()
            .filter_map(|p| resolve(module, p, &files))
            .filter(|target| target != module)
            .collect();
        graph.insert(module.clone(), edges);
    }
    graph
}

/// The import loops of `graph`: its strongly connected components of more than one file.
fn loops(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    // Kosaraju: finish order on the graph, then components on the reversed graph.
    fn visit<'a>(
        n: &'a ModPath,
        g: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        seen: &mut BTreeSet<&'a ModPath>,
        order: &mut Vec<&'a ModPath>,
    ) {
        if !seen.insert(n) {
            return;
        }
        for m in g.get(n).into_iter().flatten() {
            visit(m, g, seen, order);
        }
        order.push(n);
    }
    let mut reversed: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (from, tos) in graph {
        reversed.entry(from.clone()).or_default();
        for to in tos {
            reversed.entry(to.clone()).or_default().insert(from.clone());
        }
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for n in graph.keys() {
        visit(n, graph, &mut seen, &mut order);
    }
    let mut assigned = BTreeSet::new();
    let mut components = Vec::new();
    for n in order.into_iter().rev() {
        let mut component = Vec::new();
        visit(n, &reversed, &mut assigned, &mut component);
        if component.len() > 1 {
            components.push(component.into_iter().cloned().collect());
        }
    }
    components
}

#[test]
fn no_two_server_files_import_each_other() {
    let graph = import_graph();
    assert!(graph.len() > 20, "found only {} server files", graph.len());
    let wire = vec!["server".to_owned(), "conn".to_owned(), "wire".to_owned()];
    assert!(
        graph.values().any(|edges| edges.contains(&wire)),
        "the reader does not see that conn/wire.rs is imported"
    );
    let found = loops(&graph);
    assert!(
        found.is_empty(),
        "import loops among server files: {:#?}",
        found
            .iter()
            .map(|c| c.iter().map(|m| m.join("/")).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
}

#[test]
fn only_the_wire_edge_uses_protobuf_types() {
    let users: Vec<String> = server_files()
        .into_iter()
        .filter(|(_, path)| {
            let text = std::fs::read_to_string(path).expect("read source");
            text.contains("v1::") || text.contains("squall_proto::v1")
        })
        .map(|(module, _)| module.join("/"))
        .collect();
    assert_eq!(users, ["server/conn/wire"]);
}

/// The reader itself: a loop is found where there is one.
#[test]
fn a_loop_is_found() {
    let m = |s: &str| s.split('/').map(str::to_owned).collect::<ModPath>();
    let mut graph = BTreeMap::new();
    graph.insert(m("server/a"), BTreeSet::from([m("server/b")]));
    graph.insert(m("server/b"), BTreeSet::from([m("server/c")]));
    graph.insert(m("server/c"), BTreeSet::from([m("server/a")]));
    graph.insert(m("server/d"), BTreeSet::from([m("server/a")]));
    assert_eq!(loops(&graph).len(), 1);
    assert_eq!(loops(&graph)[0].len(), 3);
    let files: BTreeMap<ModPath, PathBuf> = [m("server"), m("server/hub"), m("server/hub/state")]
        .into_iter()
        .map(|k| (k, PathBuf::new()))
        .collect();
    let found = paths(
        "use super::state::Hub;\nuse crate::server::{hub::X, y};\nlet h = hub::run();",
        &BTreeSet::from(["hub".to_owned()]),
    );
    let targets: Vec<_> = found
        .iter()
        .filter_map(|p| resolve(&m("server/hub/admin"), p, &files))
        .collect();
    // `y` is an item of server/mod.rs; `hub::run` is not a child of hub/admin.rs.
    assert_eq!(
        targets,
        [m("server/hub/state"), m("server/hub"), m("server")]
    );
}
