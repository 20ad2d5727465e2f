//! `include/prefk.h` declares every `extern "C"` entry point of `src/ffi/` with the same number
//! of parameters, and the header compiles as C.
use std::collections::HashMap;

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

#[test]
fn header_declares_every_entry_point() {
    let mut rust = arity_map(include_str!("../src/ffi/mod.rs"), "extern \"C\" fn prefk_");
    rust.extend(arity_map(include_str!("../src/ffi/linear.rs"), "extern \"C\" fn prefk_"));
    rust.extend(arity_map(include_str!("../src/ffi/vocab_parallel.rs"), "extern \"C\" fn prefk_"));
    let header = arity_map(include_str!("../include/prefk.h"), " prefk_");
    assert!(rust.len() >= 8, "{rust:?}");
    for (name, n) in &rust {
        assert_eq!(header.get(name), Some(n), "{name}: header arity differs or missing");
    }
}

#[test]
fn header_compiles_as_c() {
    let dir = std::env::temp_dir().join(format!("prefk-h-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("t.c");
    std::fs::write(&c, "#include \"prefk.h\"\nint main(void) { return (int)sizeof(PrefkLossTerm) - 24; }\n")
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
    assert_eq!(std::mem::size_of::<pref_kernels::ffi::PrefkLossTerm>(), 24);
}
