//! `include/prefk.h` is the source of truth of the C ABI. This test parses its argument structs
//! (field types and names, in order), computes their C layout, and compares it field by field with
//! the Rust mirrors in `src/ffi/args.rs` (sizes and offsets are also asserted at compile time
//! there); it checks every `extern "C"` entry point of `src/ffi/` is declared with the same number
//! of parameters, and that the header compiles as C.
use std::collections::HashMap;
use std::mem::{offset_of, size_of};

use pref_kernels::ffi::*;

fn arity_map(src: &str, marker: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let mut rest = src;
    while let Some(pos) = rest.find(marker) {
        let after = &rest[pos + marker.len()..];
        let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let open = after.find('(').unwrap();
        let close = after.find(')').unwrap();
        let params = after[open + 1..close].trim();
        let n = if params == "void" { 0 } else { params.split(',').filter(|p| !p.trim().is_empty()).count() };
        out.insert(format!("prefk_{name}"), n);
        rest = &after[close..];
    }
    out
}

const FFI_SOURCES: [&str; 11] = [
    include_str!("../src/ffi/mod.rs"),
    include_str!("../src/ffi/runtime.rs"),
    include_str!("../src/ffi/token_logprobs.rs"),
    include_str!("../src/ffi/seq_reduce.rs"),
    include_str!("../src/ffi/preference_loss.rs"),
    include_str!("../src/ffi/grpo.rs"),
    include_str!("../src/ffi/group_loss.rs"),
    include_str!("../src/ffi/shared_prefix_attention.rs"),
    include_str!("../src/ffi/linear.rs"),
    include_str!("../src/ffi/vocab_parallel.rs"),
    include_str!("../src/ffi/plumbing.rs"),
];

#[test]
fn header_declares_every_entry_point() {
    let mut rust = HashMap::new();
    for src in FFI_SOURCES {
        rust.extend(arity_map(src, "extern \"C\" fn prefk_"));
    }
    let header = arity_map(include_str!("../include/prefk.h"), " prefk_");
    assert!(rust.len() >= 29, "{rust:?}");
    for (name, n) in &rust {
        assert_eq!(header.get(name), Some(n), "{name}: header arity differs or missing");
    }
}

#[path = "common/c_header.rs"]
mod c_header;
use c_header::parse_structs as parse_header;

macro_rules! fields {
    ($t:ty: $($f:ident),* $(,)?) => {
        (stringify!($t), size_of::<$t>(), vec![$((stringify!($f).to_string(), offset_of!($t, $f))),*])
    };
}

#[test]
fn argument_structs_match_the_header_field_by_field() {
    let header = parse_header(include_str!("../include/prefk.h"));
    let rust = include!("common/c_abi_fields.rs");
    let mut seen = 0;
    for (name, size, fields) in rust {
        let (hsize, hfields) = header.get(name).unwrap_or_else(|| panic!("{name} is not in the header"));
        assert_eq!(&fields, hfields, "{name}: fields (name, offset) differ from the header");
        assert_eq!(size, *hsize, "{name}: size differs from the header");
        seen += 1;
    }
    assert_eq!(seen, header.len(), "every struct of the header has a Rust mirror checked here");
    // Every argument struct leads with its size (the ABI's version field).
    for (name, (_, f)) in header.iter().filter(|(k, _)| k.ends_with("Args")) {
        assert_eq!(f[0], ("struct_size".to_string(), 0), "{name}");
    }
}

#[test]
fn header_compiles_as_c() {
    let dir = std::env::temp_dir().join(format!("prefk-h-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("t.c");
    // The docs' C example, inside a function that declares what it uses.
    let readme = include_str!("../docs/rust-and-c-api.md");
    let start = readme.find("```c\n").expect("docs/rust-and-c-api.md has a C example") + 5;
    let snippet = &readme[start..start + readme[start..].find("```").unwrap()];
    std::fs::write(
        &c,
        format!(
            "#include <stdio.h>\n#include \"prefk.h\"\nvoid example(void* stream, void* logits, void* targets, \
             void* logp, void* lse, void* stats, int64_t n, int64_t v) {{\n{snippet}}}\n\
             int main(void) {{ return (int)sizeof(PrefkLossTerm) - 24; }}\n"
        ),
    )
    .unwrap();
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    match std::process::Command::new("cc")
        .args(["-std=c99", "-Wall", "-Werror", "-fsyntax-only", "-I", include])
        .arg(&c)
        .output()
    {
        Ok(o) => assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => println!("no C compiler ({e}); syntax check skipped"),
    }
    assert_eq!(std::mem::size_of::<PrefkLossTerm>(), 24);
}
