//! Compiles every `kernels/*.cu` into one fatbin (SASS for each arch in `PREF_KERNELS_CUDA_ARCHS`,
//! default `80;90a;100`, plus PTX for the newest: another 8.x / 10.x part runs its major's SASS,
//! sm_90a's is for compute capability 9.0 (H100, H200, GH200: every 9.x part; `a` adds wgmma), a newer one (sm_120, and later) JIT-compiles the compute_100 PTX on its first load,
//! seconds once per process) and generates `$OUT_DIR/kernels.rs`, which embeds them.
//!
//! nvcc discovery: `NVCC`, then `CUDA_HOME`/`CUDA_PATH`, then `PATH`, then `/usr/local/cuda`.
//! Without nvcc the crate still builds (the embedded modules are `None` and creating a GPU handle
//! returns `Error::KernelsNotBuilt`), unless `PREF_KERNELS_REQUIRE_NVCC=1` or the `require-nvcc`
//! feature asks for a hard failure. A kernel that fails to compile, or compiles with a warning
//! (`--Werror all-warnings`), always fails the build.
//! ptxas's resource report (registers, spills) is kept in `$OUT_DIR/ptxas.txt`, copied next to the
//! build's artifacts as `target/<profile>/pref-kernels-ptxas.txt`, and exposed as
//! `pref_kernels::kernels::PTXAS_REPORT`.
//!
//! The emulator backend: the same `kernels/*.cu` sources are compiled by the system C++ compiler
//! for the host (`PREFK_EMULATOR`, `kernels/emulator/cuda_emu.h`), with `-fsanitize=thread`
//! instrumentation whose hooks are the emulator's own checkers (`kernels/emulator/runtime.cpp`, not
//! instrumented), into one static library. It needs CUDA's `cuda_fp16.h` / `cuda_bf16.h` (exact
//! half/bf16 conversions): found next to nvcc, or in `CUDA_HOME`/`CUDA_PATH`/`/usr/local/cuda`.
//! Without them the crate builds without the emulator (`pref_kernels::kernels::EMULATOR_BUILT`
//! is false), unless `PREF_KERNELS_REQUIRE_NVCC=1` asks for both.
use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn find_nvcc() -> Option<PathBuf> {
    let works =
        |p: &Path| Command::new(p).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if works(&p) {
            return Some(p);
        }
        println!("cargo:warning=NVCC={} does not run; trying other locations", p.display());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var) {
            let p = PathBuf::from(root).join("bin").join("nvcc");
            if works(&p) {
                return Some(p);
            }
        }
    }
    if works(Path::new("nvcc")) {
        return Some(PathBuf::from("nvcc"));
    }
    let p = PathBuf::from("/usr/local/cuda/bin/nvcc");
    works(&p).then_some(p)
}

/// CUDA's include directory (for cuda_fp16.h / cuda_bf16.h): next to nvcc, then the usual roots.
fn cuda_include_dir(nvcc: Option<&Path>) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(n) = nvcc {
        let n = if n.is_absolute() { n.to_path_buf() } else { which(n).unwrap_or_else(|| n.to_path_buf()) };
        if let Some(bin) = n.parent() {
            candidates.push(bin.join("../include"));
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var) {
            candidates.push(PathBuf::from(root).join("include"));
        }
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    candidates.into_iter().find(|d| d.join("cuda_fp16.h").is_file() && d.join("cuda_bf16.h").is_file())
}

fn which(name: &Path) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Compiles the emulator library (every kernel for the host, plus the runtime and self-test
/// kernels) into one static library and links it.
fn build_emulator(kernels_dir: &Path, sources: &[PathBuf], include: &Path) {
    println!("cargo:rerun-if-changed={}", include.display());
    println!("cargo:rerun-if-changed={}", kernels_dir.join("emulator").display());
    let kernel_build = |anchor: &str| {
        let mut b = cc::Build::new();
        b.cpp(true)
            .cargo_metadata(false)
            .flag("-x")
            .flag("c++")
            .flag("-std=c++17")
            .opt_level(2)
            .define("PREFK_EMULATOR", None)
            .define("PREFK_EMU_ANCHOR", anchor)
            .include(kernels_dir)
            .include(include)
            // Every load and store of kernel code calls the emulator's checkers.
            .flag("-fsanitize=thread")
            // Keep each access the size the source says: no vectorization or store merging.
            .flag("-fno-tree-vectorize")
            .flag("-fno-tree-slp-vectorize")
            .flag("-fno-store-merging")
            .flag("-fno-tree-sra")
            .flag("-fno-ipa-sra")
            // Same rounding on every host CPU (no contraction into FMA unless the source asks).
            .flag("-ffp-contract=off")
            .flag("-fno-exceptions")
            // Kernels reinterpret device memory (16-bit pairs as u32, rows as uint4) as CUDA allows.
            .flag("-fno-strict-aliasing")
            .flag("-Wno-unknown-pragmas")
            .warnings_into_errors(true);
        b
    };
    // Each module defines an anchor symbol that a generated table references, so the linker keeps
    // every module (their kernels register themselves at static initialization).
    let mut objects = Vec::new();
    let mut anchors = Vec::new();
    let mut all: Vec<PathBuf> = sources.to_vec();
    all.push(kernels_dir.join("emulator/selftest.cu"));
    for src in &all {
        let anchor = format!("prefk_emu_anchor_{}", src.file_stem().unwrap().to_str().unwrap());
        objects.extend(kernel_build(&anchor).file(src).compile_intermediates());
        anchors.push(anchor);
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let mut table = String::from("// Generated by build.rs: one anchor per emulated module.\n");
    for a in &anchors {
        writeln!(table, "extern \"C\" const char {a};").unwrap();
    }
    table.push_str("extern \"C\" const char* const prefk_emu_module_anchors[] = {");
    for a in &anchors {
        write!(table, "&{a}, ").unwrap();
    }
    table.push_str("nullptr};\n");
    let table_path = out.join("emu_modules.cpp");
    std::fs::write(&table_path, table).unwrap();
    let mut runtime = cc::Build::new();
    runtime
        .cpp(true)
        .flag("-std=c++17")
        .opt_level(2)
        .include(kernels_dir.join("emulator"))
        .include(include)
        .warnings_into_errors(true)
        .file(kernels_dir.join("emulator/runtime.cpp"))
        .file(&table_path)
        .objects(objects.clone());
    runtime.compile("prefk_emu");
    build_standin_driver(kernels_dir, include, &table_path, &objects, &out);
}

/// The test-only stand-in for libcuda.so.1 and libcublas.so.13 (`kernels/emulator/standin.cpp`):
/// the same kernel objects and emulator runtime in one shared library, linked with -Bsymbolic and
/// only the driver / cuBLAS entry points exported, so its emulator is its own. Written to
/// `target/<profile>/pref-kernels-standin/` under the names cudarc loads (`libcuda.so`,
/// `libcuda.so.1`, `libcublas.so`, `libcublas.so.13`: links to one file, so the driver and cuBLAS
/// share one allocation table). Never part of the package; a failure here is a warning.
fn build_standin_driver(kernels_dir: &Path, include: &Path, table: &Path, kernels: &[PathBuf], out: &Path) {
    println!("cargo:rerun-if-changed={}", kernels_dir.join("emulator/standin.cpp").display());
    let objects = cc::Build::new()
        .cpp(true)
        .cargo_metadata(false)
        .flag("-std=c++17")
        .opt_level(2)
        .pic(true)
        .flag("-fvisibility=hidden")
        .include(kernels_dir.join("emulator"))
        .include(include)
        .warnings_into_errors(true)
        .file(kernels_dir.join("emulator/runtime.cpp"))
        .file(kernels_dir.join("emulator/standin.cpp"))
        .file(table)
        .compile_intermediates();
    let dir = out.join("standin");
    let _ = std::fs::create_dir_all(&dir);
    let lib = dir.join("libcuda.so.1");
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let status = Command::new(compiler.path())
        .arg("-shared")
        .arg("-Wl,-Bsymbolic")
        .arg("-Wl,-soname,libcuda.so.1")
        .arg("-o")
        .arg(&lib)
        .args(&objects)
        .args(kernels)
        .arg("-lpthread")
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        println!("cargo:warning=the stand-in CUDA driver did not link ({status:?}); the CUDA host path tests will skip");
        return;
    }
    for name in ["libcuda.so", "libcublas.so", "libcublas.so.13"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        let _ = std::os::unix::fs::symlink("libcuda.so.1", &link);
    }
    // target/<profile>/build/<pkg>/out -> target/<profile>/pref-kernels-standin
    if let Some(profile_dir) = out.ancestors().nth(3) {
        let dest = profile_dir.join("pref-kernels-standin");
        let _ = std::fs::remove_dir_all(&dest);
        let _ = std::fs::create_dir_all(&dest);
        let _ = std::fs::copy(&lib, dest.join("libcuda.so.1"));
        for name in ["libcuda.so", "libcublas.so", "libcublas.so.13"] {
            let _ = std::os::unix::fs::symlink("libcuda.so.1", dest.join(name));
        }
    }
}

fn gencode_flags(archs: &str) -> Vec<String> {
    // An arch is a number with an optional arch-specific suffix (`90a`: sm_90's wgmma/setmaxnreg
    // feature set, whose SASS runs only on compute capability 9.0).
    let mut list: Vec<(u32, String)> = archs
        .split([';', ',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let num = s.strip_suffix('a').unwrap_or(s);
            let n: u32 = num.parse().unwrap_or_else(|_| panic!("bad arch `{s}` in PREF_KERNELS_CUDA_ARCHS"));
            (n, s.to_owned())
        })
        .collect();
    list.sort_unstable();
    list.dedup();
    // sm_90 and sm_90a SASS in one fatbin would leave the driver's pick between them open, and
    // the wgmma kernels are empty in the plain one.
    assert!(
        !(list.iter().any(|(_, a)| a == "90") && list.iter().any(|(_, a)| a == "90a")),
        "PREF_KERNELS_CUDA_ARCHS lists both 90 and 90a: keep one (90a runs on every 9.0 part)"
    );
    let newest = list.last().expect("PREF_KERNELS_CUDA_ARCHS is empty").1.clone();
    let mut flags: Vec<String> =
        list.iter().map(|(_, a)| format!("-gencode=arch=compute_{a},code=sm_{a}")).collect();
    flags.push(format!("-gencode=arch=compute_{newest},code=compute_{newest}"));
    flags
}

fn main() {
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "NVCC_CCBIN",
        "PREF_KERNELS_CUDA_ARCHS",
        "PREF_KERNELS_REQUIRE_NVCC",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernels_dir = manifest.join("kernels");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels_dir)
        .expect("kernels/ directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for entry in std::fs::read_dir(&kernels_dir).unwrap() {
        println!("cargo:rerun-if-changed={}", entry.unwrap().path().display());
    }

    #[cfg(feature = "regen-bindings")]
    regen_bindings(&manifest, &out);

    let require = env::var("PREF_KERNELS_REQUIRE_NVCC").is_ok_and(|v| v == "1")
        || env::var_os("CARGO_FEATURE_REQUIRE_NVCC").is_some();
    let nvcc = find_nvcc();
    let mut gen = String::new();
    println!("cargo::rustc-check-cfg=cfg(prefk_emulator)");
    match cuda_include_dir(nvcc.as_deref()) {
        Some(include) => {
            build_emulator(&kernels_dir, &sources, &include);
            println!("cargo:rustc-cfg=prefk_emulator");
            writeln!(gen, "/// True when the emulator backend (kernels compiled for the host) is built in.")
                .unwrap();
            writeln!(gen, "pub const EMULATOR_BUILT: bool = true;").unwrap();
        }
        None => {
            if require {
                panic!("PREF_KERNELS_REQUIRE_NVCC=1 but CUDA's cuda_fp16.h was not found next to nvcc or in CUDA_HOME");
            }
            println!(
                "cargo:warning=pref-kernels: CUDA headers not found; building without the emulator backend"
            );
            writeln!(gen, "/// True when the emulator backend (kernels compiled for the host) is built in.")
                .unwrap();
            writeln!(gen, "pub const EMULATOR_BUILT: bool = false;").unwrap();
        }
    }
    let mut report = String::new();
    match &nvcc {
        None => {
            if require {
                panic!(
                    "PREF_KERNELS_REQUIRE_NVCC=1 but no nvcc was found (NVCC, CUDA_HOME, CUDA_PATH, PATH, \
                     /usr/local/cuda). Run scripts/fetch-nvcc.sh and export the NVCC it prints."
                );
            }
            println!(
                "cargo:warning=pref-kernels: nvcc not found; building without CUDA kernels (GPU handles will \
                 return KernelsNotBuilt). Run scripts/fetch-nvcc.sh and set NVCC to build them."
            );
            writeln!(gen, "/// How the kernels were built.").unwrap();
            writeln!(
                gen,
                "pub const BUILD_NOTE: &str = \"built without nvcc: no CUDA kernels are embedded (run scripts/fetch-nvcc.sh, set NVCC, rebuild)\";"
            )
            .unwrap();
            writeln!(gen, "/// The SASS architectures embedded: none.").unwrap();
            writeln!(gen, "pub const ARCHS: &str = \"\";").unwrap();
        }
        Some(nvcc) => {
            let archs = env::var("PREF_KERNELS_CUDA_ARCHS").unwrap_or_else(|_| "80;90a;100".into());
            let gencode = gencode_flags(&archs);
            // `;`-separated, as the crate reads it back (kernels::ARCHS).
            let archs = archs
                .split([';', ',', ' '])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(";");
            let results: Vec<(PathBuf, PathBuf, String)> = std::thread::scope(|s| {
                let handles: Vec<_> = sources
                    .iter()
                    .map(|src| {
                        let gencode = &gencode;
                        let out = &out;
                        let kernels_dir = &kernels_dir;
                        s.spawn(move || {
                            let stem = src.file_stem().unwrap().to_str().unwrap().to_owned();
                            let fatbin = out.join(format!("{stem}.fatbin"));
                            let mut cmd = Command::new(nvcc);
                            // Warnings are errors; compressed fatbins (the driver inflates them at
                            // load) keep the binaries ~10x smaller.
                            cmd.args([
                                "-fatbin",
                                "-O3",
                                "-std=c++17",
                                "-lineinfo",
                                "--Werror",
                                "all-warnings",
                                "-Xptxas",
                                "-v",
                                "-Xfatbin=-compress-all",
                            ])
                            .arg(format!("-I{}", kernels_dir.display()))
                            .args(gencode)
                            .arg(src)
                            .arg("-o")
                            .arg(&fatbin);
                            if let Some(ccbin) = env::var_os("NVCC_CCBIN") {
                                cmd.arg("-ccbin").arg(ccbin);
                            }
                            let o = cmd.output().expect("failed to run nvcc");
                            let log = String::from_utf8_lossy(&o.stderr).into_owned();
                            if !o.status.success() {
                                panic!(
                                    "nvcc failed on {}:\n{}{}",
                                    src.display(),
                                    String::from_utf8_lossy(&o.stdout),
                                    log
                                );
                            }
                            (src.clone(), fatbin, log)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let version = Command::new(nvcc)
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_owned())
                .unwrap_or_default();
            writeln!(gen, "/// How the kernels were built.").unwrap();
            writeln!(
                gen,
                "pub const BUILD_NOTE: &str = {:?};",
                format!("built with {} ({version}), archs {archs}", nvcc.display())
            )
            .unwrap();
            writeln!(gen, "/// The SASS architectures embedded (`;`-separated, e.g. `80;90`).").unwrap();
            writeln!(gen, "pub const ARCHS: &str = {archs:?};").unwrap();
            for (src, fatbin, log) in &results {
                let stem = src.file_stem().unwrap().to_str().unwrap();
                writeln!(
                    gen,
                    "/// Fatbin of `kernels/{stem}.cu`.\npub const {}: Option<&[u8]> = Some(include_bytes!({:?}));",
                    stem.to_uppercase(),
                    fatbin.display().to_string()
                )
                .unwrap();
                writeln!(report, "==== kernels/{stem}.cu ====\n{log}").unwrap();
            }
        }
    }
    if nvcc.is_none() {
        for src in &sources {
            let stem = src.file_stem().unwrap().to_str().unwrap();
            writeln!(
                gen,
                "/// Fatbin of `kernels/{stem}.cu` (not built).\npub const {}: Option<&[u8]> = None;",
                stem.to_uppercase()
            )
            .unwrap();
        }
    }
    std::fs::write(out.join("ptxas.txt"), &report).unwrap();
    writeln!(
        gen,
        "/// ptxas resource report (`-Xptxas -v`) of every kernel; empty without nvcc.\npub const PTXAS_REPORT: &str = include_str!({:?});",
        out.join("ptxas.txt").display().to_string()
    )
    .unwrap();
    std::fs::write(out.join("kernels.rs"), gen).unwrap();
    // target/<profile>/build/<pkg>/out -> target/<profile>/pref-kernels-ptxas.txt
    if let Some(profile_dir) = out.ancestors().nth(3) {
        let _ = std::fs::write(profile_dir.join("pref-kernels-ptxas.txt"), &report);
    }
}

/// Regenerates the Rust mirror of `kernels/params.h` with bindgen into `$OUT_DIR/params_bindings.rs`
/// (exposed as `pref_kernels::params::generated` and compared field by field with the committed
/// structs by `tests/params_header.rs`). Needs libclang (`LIBCLANG_PATH`).
#[cfg(feature = "regen-bindings")]
fn regen_bindings(manifest: &Path, out: &Path) {
    println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");
    let bindings = bindgen::Builder::default()
        .header(manifest.join("kernels/params.h").display().to_string())
        .allowlist_type(".*Params|LossTerm")
        .allowlist_var("PREFK_.*")
        .derive_default(true)
        .layout_tests(false)
        .generate()
        .expect("bindgen failed on kernels/params.h (is LIBCLANG_PATH set?)");
    bindings.write_to_file(out.join("params_bindings.rs")).expect("writing params_bindings.rs");
}
