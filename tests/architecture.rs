//! The layering of `src/`, checked: one room per op, shared machinery below the rooms.
//!
//! - An op room (`src/<op>/`) uses another op only through its public API: paths into another
//!   room's private submodules (`crate::<op>::launch::…`) are refused; its root and its `pub mod`s
//!   (the CPU references, weight helpers) are the API.
//! - The shared layers below the rooms never reach up: `runtime/` uses no op at all, `lm_head/`
//!   (the chunk machinery of the fused head) only token_logprobs' public API.
//! - The op graph (who uses whom) has no cycle.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const SHARED: [&str; 2] = ["runtime", "lm_head"];
/// The boundary layer above every room (it may enter any room's public API).
const BOUNDARY: &str = "ffi";

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// Directories of `src/` (rooms and shared layers) and, per directory, its public submodules.
fn modules(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut m = BTreeMap::new();
    for e in fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if !p.is_dir() {
            continue;
        }
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let root = fs::read_to_string(p.join("mod.rs")).unwrap();
        let public = root
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub mod "))
            .map(|l| l.trim_end_matches(';').trim().to_string())
            .collect();
        m.insert(name, public);
    }
    m
}

/// Every `crate::<a>::<b>` path in `text` (comments included: a doc link into a private module is
/// as much a reach-in as a `use`), as (a, Some(b) when b is a lowercase module name).
fn crate_paths(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let ident =
            |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
        let a = ident(rest);
        let after = &rest[a.len()..];
        let b = after.strip_prefix("::").map(ident).filter(|b| {
            // A module is followed by `::`; a lowercase item at the end is a function.
            b.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && after[2 + b.len()..].starts_with("::")
        });
        out.push((a, b));
    }
    out
}

#[test]
fn rooms_use_each_other_only_through_public_api_and_shared_layers_never_reach_up() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    assert!(mods.contains_key("token_logprobs") && mods.contains_key("runtime"), "{mods:?}");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (room, _) in mods.iter().filter(|(r, _)| r.as_str() != BOUNDARY) {
        for file in rust_files(&src.join(room)) {
            let text = fs::read_to_string(&file).unwrap();
            let shown = file.strip_prefix(&src).unwrap().display().to_string();
            for (other, sub) in crate_paths(&text) {
                let Some(public) = mods.get(&other) else { continue };
                if &other == room || other == BOUNDARY {
                    continue;
                }
                if room == "runtime" || (room == "lm_head" && other != "token_logprobs" && other != "runtime")
                {
                    problems.push(format!("{shown}: the shared layer {room} reaches up into {other}"));
                }
                if let Some(sub) = sub {
                    if !public.contains(&sub) && !SHARED.contains(&other.as_str()) {
                        problems
                            .push(format!("{shown}: crate::{other}::{sub} is private to the {other} room"));
                    }
                }
                if !SHARED.contains(&other.as_str()) {
                    edges.entry(room.clone()).or_default().insert(other);
                }
            }
        }
    }
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
    // No cycle: repeatedly remove rooms that use no remaining room.
    let mut left = edges.clone();
    loop {
        let leaves: Vec<String> = mods
            .keys()
            .filter(|r| left.contains_key(*r) && left[*r].iter().all(|d| !left.contains_key(d)))
            .cloned()
            .collect();
        if leaves.is_empty() {
            break;
        }
        for l in leaves {
            left.remove(&l);
        }
    }
    assert!(left.is_empty(), "the op graph has a cycle among {:?}", left.keys().collect::<Vec<_>>());
}

#[test]
fn the_path_scanner_sees_reach_ins() {
    let p = crate_paths("use crate::seq_reduce::launch::check_tokens; crate::grpo::GrpoConfig crate::x::f()");
    assert_eq!(p[0], ("seq_reduce".to_string(), Some("launch".to_string())));
    assert_eq!(p[1], ("grpo".to_string(), None));
    assert_eq!(p[2], ("x".to_string(), None));
}
