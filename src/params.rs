//! `#[repr(C)]` mirrors of the structs in `kernels/params.h`, passed by value to the kernels.
//!
//! The header is the source of truth. These structs are hand-kept in sync and checked at compile
//! time (size and every field offset) against the values the header's `static_assert`s pin; the
//! `regen-bindings` feature regenerates `src/params_bindings.rs` with bindgen for a diff.
#![allow(missing_docs)]
use std::mem::{offset_of, size_of};

/// Status bit: a target was outside `[0, vocab)` and not `ignore_index`.
pub const STATUS_BAD_TARGET: u32 = 1;

/// Mirror of `TokenLogprobsFwdParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenLogprobsFwdParams {
    pub logits: u64,
    pub targets: u64,
    pub logp: u64,
    pub lse: u64,
    pub entropy: u64,
    pub status: u64,
    pub n_rows: i64,
    pub row_stride: i64,
    pub vocab: i64,
    pub ignore_index: i64,
    pub inv_temperature: f32,
    pub reserved: u32,
}

/// Mirror of `TokenLogprobsBwdParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenLogprobsBwdParams {
    pub logits: u64,
    pub targets: u64,
    pub lse: u64,
    pub grad_logp: u64,
    pub grad_logits: u64,
    pub status: u64,
    pub n_rows: i64,
    pub logits_stride: i64,
    pub grad_stride: i64,
    pub vocab: i64,
    pub ignore_index: i64,
    pub inv_temperature: f32,
    pub reserved: u32,
}

const _: () = {
    assert!(size_of::<TokenLogprobsFwdParams>() == 88);
    assert!(offset_of!(TokenLogprobsFwdParams, status) == 40);
    assert!(offset_of!(TokenLogprobsFwdParams, n_rows) == 48);
    assert!(offset_of!(TokenLogprobsFwdParams, ignore_index) == 72);
    assert!(offset_of!(TokenLogprobsFwdParams, inv_temperature) == 80);
    assert!(size_of::<TokenLogprobsBwdParams>() == 96);
    assert!(offset_of!(TokenLogprobsBwdParams, status) == 40);
    assert!(offset_of!(TokenLogprobsBwdParams, n_rows) == 48);
    assert!(offset_of!(TokenLogprobsBwdParams, ignore_index) == 80);
    assert!(offset_of!(TokenLogprobsBwdParams, inv_temperature) == 88);
};

// SAFETY: plain-old-data #[repr(C)] structs of integers/floats, layout-checked above against the
// header the kernels are compiled with.
unsafe impl cudarc::driver::DeviceRepr for TokenLogprobsFwdParams {}
unsafe impl cudarc::driver::DeviceRepr for TokenLogprobsBwdParams {}
