//! Finding the CUDA libraries that PyTorch's pip wheels install (`<site-packages>/nvidia/<pkg>/lib`:
//! `nvidia/cublas/lib`, `nvidia/nccl/lib`, or CUDA 13's single `nvidia/cu13/lib`), for a process
//! that did not put them on `LD_LIBRARY_PATH` (a Rust binary next to a Python environment; inside
//! Python, importing torch has already loaded them).
//!
//! cuBLAS is preloaded by absolute path before its first use: cudarc then opens it by its soname
//! (`libcublas.so.13`), which the dynamic loader matches against the library already loaded.
//! NCCL's soname (`libnccl.so.2`) is not one of the names cudarc asks for, so preloading cannot
//! help; [`nccl_hint`] says where the library is and what to set.
use std::path::{Path, PathBuf};

/// The directories searched, in order: `PREF_KERNELS_CUDA_LIB_DIRS` (`:`-separated, as given), then
/// `nvidia/*/lib` under every site-packages / dist-packages of the Python prefixes in
/// `VIRTUAL_ENV`, `CONDA_PREFIX`, `$HOME/.local`, `/usr/local` and `/usr`, and of the `PYTHONPATH`
/// entries. `env` reads a variable (`std::env::var` in use; a map in the tests).
pub fn wheel_library_dirs(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env("PREF_KERNELS_CUDA_LIB_DIRS")
        .map(|v| v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
        .unwrap_or_default();
    let mut site_packages: Vec<PathBuf> = Vec::new();
    let mut prefixes: Vec<PathBuf> =
        ["VIRTUAL_ENV", "CONDA_PREFIX"].iter().filter_map(|v| env(v)).map(PathBuf::from).collect();
    if let Some(home) = env("HOME") {
        prefixes.push(Path::new(&home).join(".local"));
    }
    prefixes.extend([PathBuf::from("/usr/local"), PathBuf::from("/usr")]);
    for prefix in prefixes {
        for lib in ["lib", "lib64"] {
            let Ok(entries) = std::fs::read_dir(prefix.join(lib)) else { continue };
            let mut pythons: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                .map(|e| e.path())
                .collect();
            pythons.sort();
            for py in pythons {
                site_packages.push(py.join("site-packages"));
                site_packages.push(py.join("dist-packages"));
            }
        }
    }
    if let Some(pp) = env("PYTHONPATH") {
        site_packages.extend(pp.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    for sp in site_packages {
        let Ok(entries) = std::fs::read_dir(sp.join("nvidia")) else { continue };
        let mut libs: Vec<PathBuf> =
            entries.flatten().map(|e| e.path().join("lib")).filter(|p| p.is_dir()).collect();
        libs.sort();
        dirs.extend(libs);
    }
    dirs
}

/// The first `dir/name` that exists, in `dirs` order.
pub fn find_library(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads `libcublas.so.13` from a wheel directory when the loader cannot find it by name, so that
/// cudarc's own open succeeds; returns the path loaded, if any.
pub(crate) fn preload_cublas() -> Option<PathBuf> {
    // SAFETY: only tries to dlopen the library by its names.
    if unsafe { cudarc::cublas::sys::is_culib_present() } {
        return None;
    }
    let dirs = wheel_library_dirs(&process_env);
    // cuBLAS needs cuBLASLt: its RUNPATH ($ORIGIN) finds it next to it, but load it first anyway.
    if let Some(lt) = find_library("libcublasLt.so.13", &dirs) {
        dlopen_global(&lt);
    }
    let path = find_library("libcublas.so.13", &dirs)?;
    dlopen_global(&path).then_some(path)
}

/// Why NCCL cannot be loaded and what to do, or `None` when cudarc finds it. Call it before
/// creating a `cudarc::nccl::Comm` (cudarc panics when NCCL is missing).
pub fn nccl_hint() -> Option<String> {
    #[cfg(feature = "nccl")]
    // SAFETY: only tries to dlopen the library by its names.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        return None;
    }
    let dirs = wheel_library_dirs(&process_env);
    Some(match find_library("libnccl.so.2", &dirs) {
        Some(p) => format!(
            "NCCL is at {} but under the name libnccl.so.2, which cudarc does not open: link it as \
             libnccl.so in a directory on LD_LIBRARY_PATH (e.g. `ln -s {} /some/dir/libnccl.so`)",
            p.display(),
            p.display()
        ),
        None => "NCCL (libnccl.so) not found on the library path or in a Python environment's \
                 nvidia/*/lib: `pip install nvidia-nccl-cu13` and link libnccl.so.2 as libnccl.so on \
                 LD_LIBRARY_PATH"
            .into(),
    })
}

fn dlopen_global(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    extern "C" {
        fn dlopen(filename: *const std::ffi::c_char, flags: i32) -> *mut std::ffi::c_void;
    }
    const RTLD_NOW: i32 = 2;
    const RTLD_GLOBAL: i32 = 0x100;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: a NUL-terminated path; loading a CUDA library runs only its initializers. The handle
    // is kept for the life of the process (the library stays loaded for cudarc).
    !unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) }.is_null()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn wheel_layouts_are_found_in_order() {
        let root = std::env::temp_dir().join(format!("prefk-libs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let venv = root.join("venv");
        let sp = venv.join("lib/python3.12/site-packages");
        // CUDA 12 wheels (one package per library) and CUDA 13's single nvidia/cu13.
        for (pkg, lib) in
            [("cublas", "libcublas.so.13"), ("nccl", "libnccl.so.2"), ("cu13", "libcublasLt.so.13")]
        {
            std::fs::create_dir_all(sp.join("nvidia").join(pkg).join("lib")).unwrap();
            std::fs::write(sp.join("nvidia").join(pkg).join("lib").join(lib), b"").unwrap();
        }
        let extra = root.join("extra");
        std::fs::create_dir_all(&extra).unwrap();
        std::fs::write(extra.join("libcublas.so.13"), b"").unwrap();
        let pythonpath = root.join("pp");
        std::fs::create_dir_all(pythonpath.join("nvidia/nvjitlink/lib")).unwrap();

        let vars: HashMap<&str, String> = HashMap::from([
            ("VIRTUAL_ENV", venv.display().to_string()),
            ("PYTHONPATH", pythonpath.display().to_string()),
        ]);
        let dirs = wheel_library_dirs(&|k| vars.get(k).cloned());
        for want in ["nvidia/cublas/lib", "nvidia/cu13/lib", "nvidia/nccl/lib"] {
            assert!(dirs.contains(&sp.join(want)), "{want} missing from {dirs:?}");
        }
        assert!(dirs.contains(&pythonpath.join("nvidia/nvjitlink/lib")));
        assert_eq!(find_library("libnccl.so.2", &dirs), Some(sp.join("nvidia/nccl/lib/libnccl.so.2")));
        assert_eq!(
            find_library("libcublasLt.so.13", &dirs),
            Some(sp.join("nvidia/cu13/lib/libcublasLt.so.13"))
        );
        assert_eq!(find_library("libcudart.so.13", &dirs), None);

        // An explicit directory comes first.
        let vars2: HashMap<&str, String> = HashMap::from([
            ("VIRTUAL_ENV", venv.display().to_string()),
            ("PREF_KERNELS_CUDA_LIB_DIRS", format!("{}:", extra.display())),
        ]);
        let dirs2 = wheel_library_dirs(&|k| vars2.get(k).cloned());
        assert_eq!(dirs2[0], extra);
        assert_eq!(find_library("libcublas.so.13", &dirs2), Some(extra.join("libcublas.so.13")));
        let _ = std::fs::remove_dir_all(&root);
    }
}
