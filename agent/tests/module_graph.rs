//! The agent's files import one another without a cycle (a module never names one that names it
//! back, directly or through others), so each can be read and changed from the bottom up. Read
//! from the sources: `crate::` paths (in `use` lines and in code) and `super::` paths, test
//! modules left out.
#![allow(non_snake_case)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`attach::got`; `lib` for the root) → source text, test modules left out.
fn sources(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let name = if prefix.is_empty() {
            stem.clone()
        } else {
            format!("{prefix}::{stem}")
        };
        if path.is_dir() {
            sources(&path, &name, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: String = code
                .lines()
                .map(|l| l.split("//").next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(name, code);
        }
    }
}

/// The longest module of `modules` that `path` (`a::b::item`) starts with; `lib` if none.
fn module_of(path: &str, modules: &BTreeSet<String>) -> String {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains(m))
        .unwrap_or_else(|| "lib".to_owned())
}

/// The identifier path that starts `text`.
fn path_at(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect::<String>()
        .trim_end_matches(':')
        .to_owned()
}

fn imports(name: &str, code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            for item in list.split('}').next().unwrap_or_default().split(',') {
                let item = path_at(item.trim());
                if !item.is_empty() {
                    deps.insert(module_of(&item, modules));
                }
            }
        } else {
            deps.insert(module_of(&path_at(rest), modules));
        }
    }
    let parent = name.rsplit_once("::").map_or("", |(p, _)| p);
    for (at, _) in code.match_indices("super::") {
        let item = path_at(&code[at + "super::".len()..]);
        let full = if parent.is_empty() {
            item
        } else {
            format!("{parent}::{item}")
        };
        deps.insert(module_of(&full, modules));
    }
    deps.remove(name);
    deps
}

/// A cycle of `graph` (its modules in order, the first repeated at the end), if it has one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut found = stack[i..].to_vec();
            found.push(m.to_owned());
            return Some(found);
        }
        if !done.insert(m.to_owned()) {
            return None;
        }
        stack.push(m.to_owned());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn module_graph__agent_sources__then_no_import_cycle() {
    let mut files = BTreeMap::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut files,
    );
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    assert!(modules.contains("hook") && modules.contains("attach::got"));
    let graph: BTreeMap<String, BTreeSet<String>> = files
        .iter()
        .map(|(m, code)| (m.clone(), imports(m, code, &modules)))
        .collect();
    assert!(graph["hook"].contains("live"), "the reader sees imports");
    assert_eq!(cycle(&graph), None, "imports: {graph:#?}");
}

#[test]
fn cycle__two_modules_naming_each_other__then_found() {
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(
        cycle(&graph),
        Some(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()])
    );
}
