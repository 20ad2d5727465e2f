//! Streams and device buffers of either backend, for the safe API.
//!
//! On CUDA a [`Stream`] wraps a cudarc stream and a [`DeviceBuffer`] a `CudaSlice`; on the
//! emulator both are the emulator's (allocations are tracked host memory, work runs synchronously
//! when launched). Views ([`View`], [`ViewMut`]) are (pointer, length, backend) borrows of a buffer;
//! the safe API takes views and refuses one of the other backend. Ordering across streams is the
//! caller's, as in the raw API (the crate's own work runs in the order of the stream it is given).
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr as _, DeviceRepr, ValidAsZeroBits};

use super::emulator::{self, CopyKind};
use crate::error::{invalid, Error, Result};

/// Which backend a stream or buffer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// A CUDA device.
    Cuda,
    /// The CPU emulator.
    Emulator,
}

impl BackendKind {
    /// `"cuda"` or `"emulator"`.
    pub const fn name(self) -> &'static str {
        match self {
            BackendKind::Cuda => "cuda",
            BackendKind::Emulator => "emulator",
        }
    }
}

/// Element types the buffers hold (plain data valid as all-zero bytes).
pub trait Element: DeviceRepr + ValidAsZeroBits + Copy + Default + 'static {}
impl<T: DeviceRepr + ValidAsZeroBits + Copy + Default + 'static> Element for T {}

/// A stream of work on one backend.
#[derive(Clone)]
pub struct Stream(StreamInner);

#[derive(Clone)]
enum StreamInner {
    Cuda(Arc<CudaStream>),
    Emulator,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stream({}, {:#x})", self.backend().name(), self.raw())
    }
}

impl Stream {
    /// Wraps a cudarc stream.
    pub fn from_cuda(stream: Arc<CudaStream>) -> Self {
        Stream(StreamInner::Cuda(stream))
    }

    /// The emulator's stream (work runs synchronously on the calling thread).
    pub fn emulator() -> Self {
        Stream(StreamInner::Emulator)
    }

    /// The backend of this stream.
    pub fn backend(&self) -> BackendKind {
        match self.0 {
            StreamInner::Cuda(_) => BackendKind::Cuda,
            StreamInner::Emulator => BackendKind::Emulator,
        }
    }

    /// The raw stream for the raw API: the CUstream on CUDA, 0 on the emulator.
    pub fn raw(&self) -> u64 {
        match &self.0 {
            StreamInner::Cuda(s) => s.cu_stream() as u64,
            StreamInner::Emulator => 0,
        }
    }

    /// The cudarc stream, on CUDA.
    pub fn cuda(&self) -> Option<&Arc<CudaStream>> {
        match &self.0 {
            StreamInner::Cuda(s) => Some(s),
            StreamInner::Emulator => None,
        }
    }

    /// Waits for the stream's work (a no-op on the emulator, whose work is synchronous).
    pub fn synchronize(&self) -> Result<()> {
        if let StreamInner::Cuda(s) = &self.0 {
            s.synchronize()?;
        }
        Ok(())
    }

    /// `n` zeroed elements.
    pub fn alloc_zeros<T: Element>(&self, n: usize) -> Result<DeviceBuffer<T>> {
        match &self.0 {
            // The driver refuses zero-byte allocations (cuMemAlloc: CUDA_ERROR_INVALID_VALUE), and
            // cudarc passes the size through: an empty buffer holds one element it never exposes.
            StreamInner::Cuda(s) => {
                let mut b = DeviceBuffer::from_cuda(s.alloc_zeros::<T>(n.max(1))?, s);
                b.len = n;
                Ok(b)
            }
            StreamInner::Emulator => {
                let b = DeviceBuffer::emulator_uninitialized(n)?;
                emulator::memset(b.ptr, 0, b.bytes())?;
                Ok(b)
            }
        }
    }

    /// Sets every element of `dst` to zero (asynchronous on CUDA, ordered on this stream).
    pub fn memset_zeros<T: Element>(&self, dst: &mut impl DevicePtrMut<T>) -> Result<()> {
        self.memset_bytes(dst, 0)
    }

    /// Sets every byte of `dst` to `byte` (0xFF: -1 in every signed integer element).
    pub fn memset_bytes<T: Element>(&self, dst: &mut impl DevicePtrMut<T>, byte: u8) -> Result<()> {
        let bytes = dst.len() * std::mem::size_of::<T>();
        if bytes == 0 {
            return Ok(());
        }
        let (p, _g) = dst.device_ptr_mut(self)?;
        match &self.0 {
            // SAFETY: `p` is a live device range of `bytes`, ordered on `s`.
            StreamInner::Cuda(s) => {
                unsafe { cudarc::driver::result::memset_d8_async(p, byte, bytes, s.cu_stream()) }?
            }
            StreamInner::Emulator => emulator::memset(p, byte, bytes)?,
        }
        Ok(())
    }

    /// A new buffer holding a copy of `host`.
    pub fn clone_htod<T: Element>(&self, host: &[T]) -> Result<DeviceBuffer<T>> {
        if host.is_empty() {
            return self.alloc_zeros(0);
        }
        match &self.0 {
            StreamInner::Cuda(s) => Ok(DeviceBuffer::from_cuda(s.clone_htod(host)?, s)),
            StreamInner::Emulator => {
                let b = DeviceBuffer::emulator_uninitialized(host.len())?;
                // SAFETY: `host` is valid for its bytes; the destination is the new allocation.
                unsafe { emulator::copy(b.ptr, host.as_ptr() as u64, b.bytes(), CopyKind::HostToDevice) }?;
                Ok(b)
            }
        }
    }

    /// Copies `host` into `dst` (same length).
    pub fn memcpy_htod<T: Element>(&self, host: &[T], dst: &mut impl DevicePtrMut<T>) -> Result<()> {
        if host.len() != dst.len() {
            return Err(invalid(
                "dst",
                format!("holds {} elements, the host slice {}", dst.len(), host.len()),
            ));
        }
        let (p, _g) = dst.device_ptr_mut(self)?;
        let bytes = std::mem::size_of_val(host);
        match &self.0 {
            StreamInner::Cuda(s) => {
                // SAFETY: `p` is a live device range of `bytes` (length checked); synchronous copy.
                unsafe { cudarc::driver::result::memcpy_htod_async(p, host, s.cu_stream()) }?;
                s.synchronize()?;
            }
            // SAFETY: `host` is valid for `bytes`; the emulator checks the destination range.
            StreamInner::Emulator => {
                unsafe { emulator::copy(p, host.as_ptr() as u64, bytes, CopyKind::HostToDevice) }?
            }
        }
        Ok(())
    }

    /// Copies `src` into `dst` on the device (same length; asynchronous on CUDA).
    pub fn memcpy_dtod<T: Element>(
        &self,
        src: &impl DevicePtr<T>,
        dst: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        if src.len() != dst.len() {
            return Err(invalid("dst", format!("holds {} elements, the source {}", dst.len(), src.len())));
        }
        let bytes = src.len() * std::mem::size_of::<T>();
        let (sp, _g0) = src.device_ptr(self)?;
        let (dp, _g1) = dst.device_ptr_mut(self)?;
        match &self.0 {
            // SAFETY: both are live device ranges of `bytes` (lengths checked), ordered on `s`.
            StreamInner::Cuda(s) => {
                unsafe { cudarc::driver::result::memcpy_dtod_async(dp, sp, bytes, s.cu_stream()) }?
            }
            // SAFETY: the emulator checks both ranges lie inside its allocations.
            StreamInner::Emulator => unsafe { emulator::copy(dp, sp, bytes, CopyKind::DeviceToDevice) }?,
        }
        Ok(())
    }

    /// A new buffer holding a copy of device memory `src`.
    pub fn clone_dtod<T: Element>(&self, src: &impl DevicePtr<T>) -> Result<DeviceBuffer<T>> {
        if src.len() == 0 {
            return self.alloc_zeros(0);
        }
        let mut dst = match &self.0 {
            StreamInner::Cuda(s) => DeviceBuffer::from_cuda(
                // SAFETY: every byte is overwritten by the copy below before any read.
                unsafe { s.alloc::<T>(src.len()) }?,
                s,
            ),
            StreamInner::Emulator => DeviceBuffer::emulator_uninitialized(src.len())?,
        };
        self.memcpy_dtod(src, &mut dst)?;
        Ok(dst)
    }

    /// Copies a device buffer or view back to the host (synchronizes the stream).
    pub fn clone_dtoh<T: Element>(&self, src: &impl DevicePtr<T>) -> Result<Vec<T>> {
        let (p, _g) = src.device_ptr(self)?;
        let mut out = vec![T::default(); src.len()];
        let bytes = std::mem::size_of_val(out.as_slice());
        match &self.0 {
            StreamInner::Cuda(s) => {
                // SAFETY: `p` is a live device range of `bytes`; the copy completes before return.
                unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut out, p, s.cu_stream()) }?;
                s.synchronize()?;
            }
            StreamInner::Emulator => {
                // SAFETY: `out` is valid for `bytes`; the emulator checks the source range.
                unsafe { emulator::copy(out.as_mut_ptr() as u64, p, bytes, CopyKind::DeviceToHost) }?
            }
        }
        Ok(out)
    }
}

/// Device memory of one backend, owned.
pub struct DeviceBuffer<T> {
    ptr: u64,
    len: usize,
    owner: Owner<T>,
}

enum Owner<T> {
    Cuda(#[allow(dead_code)] CudaSlice<T>),
    Emulator,
}

impl<T> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({}, {:#x}, len {})", self.backend().name(), self.ptr, self.len)
    }
}

impl<T> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        if let Owner::Emulator = self.owner {
            emulator::free(self.ptr);
        }
    }
}

impl<T: Element> DeviceBuffer<T> {
    fn from_cuda(slice: CudaSlice<T>, stream: &Arc<CudaStream>) -> Self {
        let ptr = {
            let (p, _g) = slice.device_ptr(stream);
            p
        };
        let len = slice.len();
        DeviceBuffer { ptr, len, owner: Owner::Cuda(slice) }
    }

    /// Allocates `n` elements on the emulator without initializing them (their bytes are tracked
    /// as never written, so the emulator's initcheck reports a kernel reading them).
    pub fn emulator_uninitialized(n: usize) -> Result<Self> {
        let bytes = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| invalid("n", format!("{n} elements overflow the address space")))?;
        Ok(DeviceBuffer { ptr: emulator::alloc(bytes)?, len: n, owner: Owner::Emulator })
    }
}

impl<T> DeviceBuffer<T> {
    fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The backend the memory lives on.
    pub fn backend(&self) -> BackendKind {
        match self.owner {
            Owner::Cuda(_) => BackendKind::Cuda,
            Owner::Emulator => BackendKind::Emulator,
        }
    }

    /// Raw address (CUdeviceptr, or the emulator's host address).
    pub fn raw_ptr(&self) -> u64 {
        self.ptr
    }

    /// The whole buffer, read-only.
    pub fn as_view(&self) -> View<'_, T> {
        View { ptr: self.ptr, len: self.len, backend: self.backend(), _m: PhantomData }
    }

    /// The whole buffer, writable.
    pub fn as_view_mut(&mut self) -> ViewMut<'_, T> {
        ViewMut { ptr: self.ptr, len: self.len, backend: self.backend(), _m: PhantomData }
    }

    /// Elements `range`, read-only. Panics if the range is out of bounds (as slice indexing).
    pub fn slice(&self, range: impl RangeBounds<usize>) -> View<'_, T> {
        self.as_view().into_slice(range)
    }

    /// Elements `range`, writable. Panics if the range is out of bounds (as slice indexing).
    pub fn slice_mut(&mut self, range: impl RangeBounds<usize>) -> ViewMut<'_, T> {
        self.as_view_mut().into_slice_mut(range)
    }
}

fn bounds(range: impl RangeBounds<usize>, len: usize) -> (usize, usize) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    assert!(start <= end && end <= len, "range {start}..{end} out of bounds for a device buffer of {len}");
    (start, end)
}

/// A read-only borrow of device memory.
pub struct View<'a, T> {
    ptr: u64,
    len: usize,
    backend: BackendKind,
    _m: PhantomData<&'a T>,
}

impl<T> Clone for View<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for View<'_, T> {}

impl<'a, T> View<'a, T> {
    /// Views a cudarc buffer (or view) of `stream`'s context.
    pub fn from_cuda(buf: &'a impl cudarc::driver::DevicePtr<T>, stream: &Arc<CudaStream>) -> Self {
        let (ptr, _g) = buf.device_ptr(stream);
        View { ptr, len: buf.len(), backend: BackendKind::Cuda, _m: PhantomData }
    }

    /// Views `len` elements at raw device address `ptr` of `backend` (a C-ABI or PyTorch caller's
    /// memory).
    ///
    /// # Safety
    /// `ptr` is 0 with `len == 0`, or device memory of `backend` (on the emulator: inside one
    /// emulator allocation or registered host memory) valid for `len` elements of `T`, readable
    /// for the lifetime `'a` and not written by anyone else while kernels read it.
    pub unsafe fn from_raw(ptr: u64, len: usize, backend: BackendKind) -> Self {
        View { ptr, len, backend, _m: PhantomData }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements `range` of this view. Panics if out of bounds.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> View<'a, T> {
        self.into_slice(range)
    }

    fn into_slice(self, range: impl RangeBounds<usize>) -> View<'a, T> {
        let (s, e) = bounds(range, self.len);
        View { ptr: self.ptr + (s * std::mem::size_of::<T>()) as u64, len: e - s, ..self }
    }
}

/// A writable borrow of device memory.
pub struct ViewMut<'a, T> {
    ptr: u64,
    len: usize,
    backend: BackendKind,
    _m: PhantomData<&'a mut T>,
}

impl<'a, T> ViewMut<'a, T> {
    /// Views a cudarc buffer of `stream`'s context, writable.
    pub fn from_cuda(buf: &'a mut impl cudarc::driver::DevicePtrMut<T>, stream: &Arc<CudaStream>) -> Self {
        let len = buf.len();
        let (ptr, _g) = buf.device_ptr_mut(stream);
        ViewMut { ptr, len, backend: BackendKind::Cuda, _m: PhantomData }
    }

    /// Views `len` writable elements at raw device address `ptr` of `backend`.
    ///
    /// # Safety
    /// As [`View::from_raw`], and writable, with no other reader or writer during `'a`.
    pub unsafe fn from_raw(ptr: u64, len: usize, backend: BackendKind) -> Self {
        ViewMut { ptr, len, backend, _m: PhantomData }
    }

    /// A shorter writable reborrow of the same memory (to pass it on and use it again after).
    pub fn reborrow(&mut self) -> ViewMut<'_, T> {
        ViewMut { ptr: self.ptr, len: self.len, backend: self.backend, _m: PhantomData }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Read-only reborrow.
    pub fn as_view(&self) -> View<'_, T> {
        View { ptr: self.ptr, len: self.len, backend: self.backend, _m: PhantomData }
    }

    /// Writable reborrow.
    pub fn as_view_mut(&mut self) -> ViewMut<'_, T> {
        ViewMut { ptr: self.ptr, len: self.len, backend: self.backend, _m: PhantomData }
    }

    /// Elements `range`, writable. Panics if out of bounds.
    pub fn slice_mut(&mut self, range: impl RangeBounds<usize>) -> ViewMut<'_, T> {
        self.as_view_mut().into_slice_mut(range)
    }

    fn into_slice_mut(self, range: impl RangeBounds<usize>) -> ViewMut<'a, T> {
        let (s, e) = bounds(range, self.len);
        ViewMut { ptr: self.ptr + (s * std::mem::size_of::<T>()) as u64, len: e - s, ..self }
    }
}

/// Keeps the borrow a raw pointer was taken from alive while a launch uses it.
pub struct Guard<'a>(PhantomData<&'a ()>);

fn checked(backend: BackendKind, ptr: u64, stream: &Stream) -> Result<(u64, Guard<'static>)> {
    if backend != stream.backend() {
        return Err(Error::BackendMismatch {
            arg: "buffer",
            buffer: backend.name(),
            stream: stream.backend().name(),
        });
    }
    Ok((ptr, Guard(PhantomData)))
}

/// Device memory readable by the kernels.
pub trait DevicePtr<T> {
    /// Number of elements.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The raw pointer for a launch on `stream`; an error if the memory is on another backend.
    fn device_ptr(&self, stream: &Stream) -> Result<(u64, Guard<'_>)>;
}

/// Device memory writable by the kernels.
pub trait DevicePtrMut<T>: DevicePtr<T> {
    /// As [`DevicePtr::device_ptr`], for writing.
    fn device_ptr_mut(&mut self, stream: &Stream) -> Result<(u64, Guard<'_>)>;
}

impl<T> DevicePtr<T> for DeviceBuffer<T> {
    fn len(&self) -> usize {
        self.len
    }
    fn device_ptr(&self, stream: &Stream) -> Result<(u64, Guard<'_>)> {
        checked(self.backend(), self.ptr, stream)
    }
}
impl<T> DevicePtrMut<T> for DeviceBuffer<T> {
    fn device_ptr_mut(&mut self, stream: &Stream) -> Result<(u64, Guard<'_>)> {
        checked(self.backend(), self.ptr, stream)
    }
}
impl<T> DevicePtr<T> for View<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
    fn device_ptr(&self, stream: &Stream) -> Result<(u64, Guard<'_>)> {
        checked(self.backend, self.ptr, stream)
    }
}
impl<T> DevicePtr<T> for ViewMut<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
    fn device_ptr(&self, stream: &Stream) -> Result<(u64, Guard<'_>)> {
        checked(self.backend, self.ptr, stream)
    }
}
impl<T> DevicePtrMut<T> for ViewMut<'_, T> {
    fn device_ptr_mut(&mut self, stream: &Stream) -> Result<(u64, Guard<'_>)> {
        checked(self.backend, self.ptr, stream)
    }
}

/// The first `N` values of a device metrics array, read back to the host (synchronizes `stream`);
/// an error naming `arg` when the buffer is shorter.
pub(crate) fn read_metrics<const N: usize>(
    stream: &Stream,
    arg: &'static str,
    buf: &DeviceBuffer<f32>,
) -> Result<[f32; N]> {
    crate::error::ensure(buf.len() >= N, arg, || format!("needs {N} f32, got {}", buf.len()))?;
    let host = stream.clone_dtoh(buf)?;
    let mut out = [0.0; N];
    out.copy_from_slice(&host[..N]);
    Ok(out)
}

/// [`optional_ptr`] of a view that must hold exactly `n` elements (named `arg` in the error).
pub(crate) fn optional_ptr_of_len<'s, T>(
    stream: &'s Stream,
    arg: &'static str,
    v: Option<&'s View<'_, T>>,
    n: usize,
    guards: &mut Vec<Guard<'s>>,
) -> Result<u64> {
    if let Some(v) = v {
        crate::error::ensure_len(arg, v.len(), n)?;
    }
    optional_ptr(stream, v, guards)
}

/// The device pointer of an optional output view with its guard, or `None`.
pub(crate) fn optional_ptr_mut<'s, T>(
    stream: &'s Stream,
    v: Option<&'s mut ViewMut<'_, T>>,
) -> Result<Option<(u64, Guard<'s>)>> {
    v.map(|v| v.device_ptr_mut(stream)).transpose()
}

/// The device pointer of an optional view (0 for `None`), its guard kept in `guards` until the
/// caller's launches are enqueued.
pub(crate) fn optional_ptr<'s, T>(
    stream: &'s Stream,
    v: Option<&'s View<'_, T>>,
    guards: &mut Vec<Guard<'s>>,
) -> Result<u64> {
    match v {
        None => Ok(0),
        Some(v) => {
            let (p, g) = v.device_ptr(stream)?;
            guards.push(g);
            Ok(p)
        }
    }
}
