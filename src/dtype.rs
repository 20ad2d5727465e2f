//! Element types accepted by the kernels: logits dtypes and target index types.
use half::{bf16, f16};

/// Logits dtype. The codes are stable (also used by the raw API).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE f32.
    F32 = 0,
    /// IEEE f16.
    F16 = 1,
    /// bfloat16.
    BF16 = 2,
}

impl DType {
    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    /// Name used in kernel entry points (`f32`, `f16`, `bf16`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

/// Target (label) index type.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexType {
    /// i32 targets.
    I32 = 0,
    /// i64 targets (PyTorch's default).
    I64 = 1,
}

impl IndexType {
    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            IndexType::I32 => 4,
            IndexType::I64 => 8,
        }
    }
    /// Name used in kernel entry points (`i32`, `i64`).
    pub const fn name(self) -> &'static str {
        match self {
            IndexType::I32 => "i32",
            IndexType::I64 => "i64",
        }
    }
}

/// A logits element type: f32, [`half::f16`] or [`half::bf16`].
pub trait LogitElement:
    Copy + Send + Sync + Default + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + 'static
{
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Exact widening to f64.
    fn to_f64(self) -> f64;
    /// Rounding (to nearest even) from f32.
    fn from_f32(x: f32) -> Self;
}

impl LogitElement for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}
impl LogitElement for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}
impl LogitElement for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// A target index type: i32 or i64.
pub trait TargetIndex:
    Copy + Send + Sync + Default + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + 'static
{
    /// The matching [`IndexType`].
    const INDEX_TYPE: IndexType;
    /// Widening to i64.
    fn to_i64(self) -> i64;
}
impl TargetIndex for i32 {
    const INDEX_TYPE: IndexType = IndexType::I32;
    fn to_i64(self) -> i64 {
        self as i64
    }
}
impl TargetIndex for i64 {
    const INDEX_TYPE: IndexType = IndexType::I64;
    fn to_i64(self) -> i64 {
        self
    }
}
