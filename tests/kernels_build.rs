//! Checks on the build itself: every kernel compiled (when nvcc is required), every entry point the
//! launch code looks up exists in the compiled modules, no kernel spills registers, and creating a
//! GPU handle on a machine without one is an error, never a panic.
use pref_kernels::kernels;

#[test]
fn kernels_are_built_when_nvcc_is_required() {
    let required = std::env::var("PREF_KERNELS_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    if required {
        assert!(kernels::built(), "PREF_KERNELS_REQUIRE_NVCC=1 but {}", kernels::BUILD_NOTE);
    }
    if !kernels::built() {
        assert!(kernels::PTXAS_REPORT.is_empty());
        println!("kernels not built: {}", kernels::BUILD_NOTE);
    }
}

#[test]
fn every_entry_point_is_compiled_for_every_arch() {
    if !kernels::built() {
        return;
    }
    for (module, fatbin) in kernels::MODULES {
        assert!(fatbin.is_some_and(|b| b.len() > 1024), "module {module} is empty");
        for spec in pref_kernels::runtime::registry::module_kernels(module) {
            let name = &spec.name;
            for arch in kernels::ARCHS.split(';').map(|a| format!("sm_{a}")) {
                let line = format!("Compiling entry function '{name}' for '{arch}'");
                assert!(kernels::PTXAS_REPORT.contains(&line), "{name} not compiled for {arch}");
            }
        }
    }
}

#[test]
fn default_archs_are_ampere_hopper_and_blackwell() {
    // Newer parts (sm_120 on) JIT the embedded compute_100 PTX, see build.rs; Hopper's SASS is
    // sm_90a (its wgmma kernels need the arch-specific feature set).
    if kernels::built() && std::env::var("PREF_KERNELS_CUDA_ARCHS").is_err() {
        assert_eq!(kernels::ARCHS, "80;90a;100");
    }
}

#[test]
fn no_kernel_spills_registers() {
    for line in kernels::PTXAS_REPORT.lines().filter(|l| l.contains("spill")) {
        assert!(line.contains(" 0 bytes spill stores, 0 bytes spill loads"), "register spills: {line}");
    }
}

/// ptxas's wgmma advisories (C75xx: a wgmma pipeline serialized, or a `warpgroup.arrive` it had
/// to inject because registers were written after the kernel's `wgmma.fence`) are info lines,
/// which `--Werror` does not catch: each one means a kernel whose wgmma code is not as written.
#[test]
fn no_wgmma_pipeline_is_serialized_or_patched_by_ptxas() {
    for line in kernels::PTXAS_REPORT.lines() {
        let advisory = ["C7510", "C7515", "C7519", "C7520"].iter().any(|c| line.contains(c))
            || line.contains("wgmma.mma_async instructions are serialized")
            || line.contains("warpgroup.arrive is injected");
        assert!(!advisory, "ptxas wgmma advisory: {line}");
    }
}

#[test]
fn gpu_handle_is_an_error_not_a_panic_without_a_gpu() {
    let r = std::panic::catch_unwind(|| pref_kernels::Gpu::new(0).map(|_| ()));
    let r = r.expect("Gpu::new panicked");
    if let Err(e) = r {
        let msg = e.to_string();
        assert!(!msg.is_empty());
        println!("no GPU here: {msg}");
    }
    let r = std::panic::catch_unwind(|| pref_kernels::Gpu::new(4096).map(|_| ()));
    assert!(r.expect("Gpu::new panicked").is_err(), "ordinal 4096 cannot exist");
}
