//! The module graphs of the engine, the cluster and the server have no cycle, and the
//! engine's modules keep the layer order ARCHITECTURE.md states: dependencies point down.
//! Read from the sources: every `crate::…` and `super::…` path outside comments and test
//! modules is an edge to the module it names; a `mod.rs` declaring or re-exporting its
//! children is not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every module of the crate rooted at `src` (`a/b.rs` and `a/b/mod.rs` are `[a, b]`),
/// with its source and whether it is a `mod.rs` (or the crate root).
fn modules(src: &Path) -> BTreeMap<Module, (String, bool)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Module = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            let is_mod = matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main"));
            if is_mod {
                parts.pop();
            }
            if parts.is_empty() && p.file_name().is_some_and(|f| f == "main.rs") {
                continue; // the binary: a thin caller of the library
            }
            out.insert(parts, (std::fs::read_to_string(&p).unwrap(), is_mod));
        }
    }
    out
}

/// The code of a file without its comments and its `#[cfg(test)] mod tests`.
fn code(src: &str) -> String {
    let body = src.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    body.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The lowercase path segments after `at` in `s` (`a::b::C` → `[a, b]`); with a brace
/// group, every path in it (one level deep is all the sources use).
fn paths_after(s: &str) -> Vec<Vec<String>> {
    let ident = |t: &str| t.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let mut prefix = Vec::new();
    let mut rest = s;
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            return inner
                .split(',')
                .map(|item| {
                    let mut p = prefix.clone();
                    p.extend(
                        item.split(" as ")
                            .next()
                            .unwrap_or("")
                            .split("::")
                            .map(|x| ident(x.trim()))
                            .filter(|x| x.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && x != "self"),
                    );
                    p
                })
                .collect();
        }
        let id = ident(rest);
        if id.is_empty() || !id.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
            return vec![prefix];
        }
        rest = &rest[id.len()..];
        prefix.push(id);
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => return vec![prefix],
        }
    }
}

/// The module a path names: its longest prefix that is a module.
fn resolve(mods: &BTreeMap<Module, (String, bool)>, path: &[String]) -> Module {
    (0..=path.len()).rev().map(|k| path[..k].to_vec()).find(|p| mods.contains_key(p)).unwrap_or_default()
}

fn edges(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mods = modules(src);
    let mut out = BTreeMap::new();
    for (m, (text, is_mod)) in &mods {
        let text = code(text);
        let mut deps = BTreeSet::new();
        for (key, base) in [("crate::", Vec::new()), ("super::", m[..m.len().saturating_sub(1)].to_vec())] {
            let base = if *is_mod && key == "super::" { m[..m.len().saturating_sub(1)].to_vec() } else { base };
            for (i, _) in text.match_indices(key) {
                if text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                for p in paths_after(&text[i + key.len()..]) {
                    let mut full = base.clone();
                    full.extend(p);
                    deps.insert(resolve(&mods, &full));
                }
            }
        }
        deps.remove(m);
        // A parent declaring and re-exporting its children is structure, not a use.
        if *is_mod {
            deps.retain(|d| !(d.len() > m.len() && d[..m.len()] == m[..]));
        }
        out.insert(m.clone(), deps);
    }
    out
}

/// A cycle of `g`, if it has one.
fn cycle(g: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit<'a>(
        g: &'a BTreeMap<Module, BTreeSet<Module>>,
        v: &'a Module,
        state: &mut BTreeMap<&'a Module, u8>,
        path: &mut Vec<&'a Module>,
    ) -> Option<Vec<Module>> {
        state.insert(v, 1);
        path.push(v);
        for w in g.get(v).into_iter().flatten() {
            match state.get(w) {
                Some(1) => {
                    let at = path.iter().position(|p| *p == w).unwrap_or(0);
                    return Some(path[at..].iter().map(|m| (*m).clone()).collect());
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(g, w, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(v, 2);
        None
    }
    let mut state = BTreeMap::new();
    g.keys().find_map(|v| if state.contains_key(v) { None } else { visit(g, v, &mut state, &mut Vec::new()) })
}

#[test]
fn the_checker_sees_a_cycle_and_the_edges_it_should() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::write(dir.path().join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(dir.path().join("a/mod.rs"), "pub mod x;\npub use x::X;\n").unwrap();
    std::fs::write(dir.path().join("a/x.rs"), "use crate::{b, c};\n// crate::a in a comment\n").unwrap();
    std::fs::write(dir.path().join("b.rs"), "fn f() { crate::a::X::new(); }\n").unwrap();
    let g = edges(dir.path());
    let name = |s: &str| s.split("::").map(String::from).filter(|x| !x.is_empty()).collect::<Module>();
    assert_eq!(g[&name("a::x")], [name("b"), name("")].into_iter().collect());
    assert_eq!(g[&name("b")], [name("a")].into_iter().collect());
    assert!(g[&name("a")].is_empty(), "mod.rs re-exporting its child is no edge");
    assert!(cycle(&g).is_none());
    std::fs::write(dir.path().join("a/mod.rs"), "pub mod x;\nuse crate::b;\n").unwrap();
    assert!(cycle(&edges(dir.path())).is_some(), "a → b → a");
}

#[test]
fn engine_cli_cluster_and_server_modules_have_no_import_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (krate, least) in [("app/src", 40), ("cli/src", 8), ("cluster/src", 4), ("server/src", 15)] {
        let g = edges(&root.join(krate));
        assert!(g.len() >= least, "{krate}: read {} modules", g.len());
        if let Some(c) = cycle(&g) {
            let names: Vec<String> = c.iter().map(|m| m.join("::")).collect();
            panic!("{krate}: import cycle {}", names.join(" → "));
        }
    }
}

/// The engine's layers, lowest first (ARCHITECTURE.md's order): a module may use its own
/// top-level module and those of lower layers, never one of its own layer or above. The
/// foundation (the crate root's re-exports, errors, atomic files, memory figures, seeded
/// streams) may use itself.
const ENGINE_LAYERS: &[&[&str]] = &[
    &["", "error", "persist", "memory", "rng"],
    &["kernels"],
    &["ops"],
    &["model"],
    &["data"],
    &["train", "eval"],
    &["adapter"],
    &["strategy", "bench"],
    &["cuda_tests"],
];

/// Every edge of `g` that does not point down `layers` (by top-level module), and the
/// top-level modules `layers` does not place.
fn layer_violations(g: &BTreeMap<Module, BTreeSet<Module>>, layers: &[&[&str]]) -> (Vec<String>, BTreeSet<String>) {
    let top = |m: &Module| m.first().cloned().unwrap_or_default();
    let layer = |t: &str| layers.iter().position(|l| l.contains(&t));
    let mut unplaced = BTreeSet::new();
    let mut wrong = Vec::new();
    for (from, deps) in g {
        let (a, la) = (top(from), layer(&top(from)));
        if la.is_none() {
            unplaced.insert(a.clone());
        }
        for to in deps {
            let b = top(to);
            let (Some(la), Some(lb)) = (la, layer(&b)) else { continue };
            if a != b && !(lb < la || (la == 0 && lb == 0)) {
                wrong.push(format!("{} → {}", from.join("::"), to.join("::")));
            }
        }
    }
    (wrong, unplaced)
}

#[test]
fn the_layer_check_sees_an_upward_edge() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("model")).unwrap();
    std::fs::write(dir.path().join("lib.rs"), "pub mod model;\npub mod data;\npub mod kernels;\n").unwrap();
    std::fs::write(dir.path().join("model/mod.rs"), "pub mod llama;\n").unwrap();
    std::fs::write(dir.path().join("model/llama.rs"), "use crate::kernels::pack::Pack;\n").unwrap();
    std::fs::write(dir.path().join("kernels.rs"), "").unwrap();
    std::fs::write(dir.path().join("data.rs"), "use crate::model::llama;\n").unwrap();
    let layers: &[&[&str]] = &[&[""], &["kernels"], &["model"], &["data"]];
    assert_eq!(layer_violations(&edges(dir.path()), layers), (vec![], BTreeSet::new()), "every edge points down");
    std::fs::write(dir.path().join("model/llama.rs"), "use crate::data::Batch;\n").unwrap();
    let (wrong, _) = layer_violations(&edges(dir.path()), layers);
    assert_eq!(wrong, ["model::llama → data"]);
    let (_, unplaced) = layer_violations(&edges(dir.path()), &[&[""], &["kernels"], &["model"]]);
    assert_eq!(unplaced, ["data".to_string()].into_iter().collect());
}

#[test]
fn engine_modules_only_point_down_the_layers() {
    let g = edges(&Path::new(env!("CARGO_MANIFEST_DIR")).join("app/src"));
    let (wrong, unplaced) = layer_violations(&g, ENGINE_LAYERS);
    assert!(unplaced.is_empty(), "top-level modules with no layer in ENGINE_LAYERS: {unplaced:?}");
    assert!(wrong.is_empty(), "imports that point up or across the engine's layers:\n{}", wrong.join("\n"));
}
