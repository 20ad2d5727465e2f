//! The collectives of the vocabulary-parallel ops over NCCL, for Rust callers outside PyTorch
//! (feature `nccl`: cudarc's NCCL bindings, loaded at run time like the driver). PyTorch callers
//! use the Python ops, which run the same collectives through `torch.distributed`.
//!
//! [`VocabParallelComm`] pairs a communicator with this rank's [`VocabShard`] and runs the whole
//! forward (partials → `ncclAllGather` → finalize) on the communicator's stream; the logits
//! backward needs no collective ([`crate::Gpu::vocab_shard_backward`]); the fused LM head's
//! backward ends with an all-reduce (sum) of the partial `d_hidden`
//! ([`VocabParallelComm::linear_backward`]).
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{
    sys::CUdeviceptr, CudaStream, DevicePtr as CuPtr, DevicePtrMut as CuPtrMut, DeviceSlice, SyncOnDrop,
};
use cudarc::nccl::safe::{Comm, NcclType, ReduceOp};

use super::{VocabShard, VP_STATS};
use crate::dtype::{LogitElement, TargetIndex};
use crate::error::{ensure, Error, Result};
use crate::linear_token_logprobs::{LinearConfig, LinearGradViews, LinearHead, LinearRun};
use crate::runtime::mem::{DevicePtr, DevicePtrMut, Stream, View, ViewMut};
use crate::runtime::Gpu;
use crate::token_logprobs::{EntropyGrad, TokenLogprobsConfig, TokenLogprobsOutputs};
use crate::LogitsLayout;

/// A span of device memory handed to cudarc's NCCL wrappers, which want cudarc's slice traits.
/// Ordering is the caller's: everything runs on the communicator's stream.
struct Span<'s, T> {
    ptr: u64,
    len: usize,
    stream: &'s Arc<CudaStream>,
    _t: PhantomData<T>,
}

impl<T> DeviceSlice<T> for Span<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        self.stream
    }
}

impl<T> CuPtr<T> for Span<'_, T> {
    fn device_ptr<'a>(&'a self, _stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Sync(None))
    }
}

impl<T> CuPtrMut<T> for Span<'_, T> {
    fn device_ptr_mut<'a>(&'a mut self, _stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Sync(None))
    }
}

/// Whether cudarc can load NCCL: `Ok`, or the reason with where a pip-installed `libnccl.so.2` is
/// and what to link. Call it before creating a `cudarc::nccl::Comm`, which panics without NCCL.
pub fn nccl_available() -> Result<()> {
    match crate::runtime::libs::nccl_hint() {
        None => Ok(()),
        Some(why) => Err(Error::Collective(why)),
    }
}

fn nccl_err(e: cudarc::nccl::result::NcclError) -> Error {
    Error::Collective(format!("NCCL: {e:?}"))
}

/// A tensor-parallel group's communicator with this rank's vocabulary shard.
pub struct VocabParallelComm {
    comm: Comm,
    shard: VocabShard,
    stream: Stream,
}

impl VocabParallelComm {
    /// Pairs `comm` with `shard` (rank `comm.rank()` of `comm.world_size()`). Collective: every
    /// rank of the group calls it; the ranks' shards are all-gathered once and must tile the
    /// vocabulary ([`VocabShard::check_tiling`]), so a gap or an overlap is an error here on
    /// every rank instead of silently wrong rows later.
    pub fn new(comm: Comm, shard: VocabShard) -> Result<Self> {
        shard.validate()?;
        let stream = Stream::from_cuda(comm.stream());
        let vp = VocabParallelComm { comm, shard, stream };
        let mine = [shard.start as u64, shard.len as u64, shard.vocab as u64];
        let send = vp.stream.clone_htod(&mine)?;
        let mut all = vp.stream.alloc_zeros::<u64>(3 * vp.world_size())?;
        vp.all_gather(&send.as_view(), &mut all.as_view_mut())?;
        let all = vp.stream.clone_dtoh(&all)?;
        let shards: Vec<VocabShard> = all
            .chunks_exact(3)
            .map(|d| VocabShard { start: d[0] as usize, len: d[1] as usize, vocab: d[2] as usize })
            .collect();
        VocabShard::check_tiling(&shards)?;
        Ok(vp)
    }

    /// Pairs `comm` with the even split of `vocab` ([`VocabShard::even`]).
    pub fn even(comm: Comm, vocab: usize) -> Result<Self> {
        let shard = VocabShard::even(vocab, comm.world_size(), comm.rank())?;
        Self::new(comm, shard)
    }

    /// This rank's shard.
    pub fn shard(&self) -> VocabShard {
        self.shard
    }

    /// The communicator's stream, on which every call here runs.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The tensor-parallel world size.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn cuda(&self) -> &Arc<CudaStream> {
        self.stream.cuda().expect("a communicator's stream is a CUDA stream")
    }

    /// All-gathers this rank's `[n, VP_STATS]` partials into `gathered` (`[world, n, VP_STATS]`,
    /// rank-major): `VP_STATS · 4` bytes per token and rank.
    pub fn all_gather_partials(
        &self,
        partials: &View<'_, f32>,
        gathered: &mut ViewMut<'_, f32>,
    ) -> Result<()> {
        self.all_gather(partials, gathered)
    }

    fn all_gather<T: NcclType + crate::runtime::mem::Element>(
        &self,
        send: &View<'_, T>,
        recv: &mut ViewMut<'_, T>,
    ) -> Result<()> {
        let world = self.world_size();
        ensure(recv.len() == send.len() * world, "gathered", || {
            format!("needs world · sent = {} elements, got {}", send.len() * world, recv.len())
        })?;
        let (src, _g0) = send.device_ptr(&self.stream)?;
        let (dst, _g1) = recv.device_ptr_mut(&self.stream)?;
        let s = self.cuda();
        let send = Span::<T> { ptr: src, len: send.len(), stream: s, _t: PhantomData };
        let mut recv = Span::<T> { ptr: dst, len: recv.len(), stream: s, _t: PhantomData };
        self.comm.all_gather(&send, &mut recv).map_err(nccl_err)?;
        Ok(())
    }

    /// All-reduces (sum) `buf` in place over the group: the partial `d_hidden` of the fused LM
    /// head's shards.
    pub fn all_reduce_sum<T: NcclType>(&self, buf: &mut ViewMut<'_, T>) -> Result<()> {
        let (p, _g) = buf.device_ptr_mut(&self.stream)?;
        let mut span = Span::<T> { ptr: p, len: buf.len(), stream: self.cuda(), _t: PhantomData };
        self.comm.all_reduce_in_place(&mut span, &ReduceOp::Sum).map_err(nccl_err)?;
        Ok(())
    }

    fn finalize<I: TargetIndex>(
        &self,
        gpu: &Gpu,
        partials: &View<'_, f32>,
        targets: &impl DevicePtr<I>,
        out: TokenLogprobsOutputs<'_>,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        let mut gathered = self.stream.alloc_zeros::<f32>(partials.len() * self.world_size())?;
        self.all_gather_partials(partials, &mut gathered.as_view_mut())?;
        gpu.vocab_parallel_finalize(
            &self.stream,
            &gathered.as_view(),
            self.world_size(),
            self.shard.vocab,
            targets,
            out,
            cfg,
        )
    }

    /// Token log-probs (lse, entropy) of this rank's shard of the logits, identical on every rank:
    /// partials, all-gather, finalize. `layout` is the shard's (`layout.vocab == shard.len`).
    pub fn token_logprobs<T: LogitElement, I: TargetIndex>(
        &self,
        gpu: &Gpu,
        logits: &impl DevicePtr<T>,
        layout: LogitsLayout,
        targets: &impl DevicePtr<I>,
        out: TokenLogprobsOutputs<'_>,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        let mut partials = self.stream.alloc_zeros::<f32>(layout.n_rows * VP_STATS)?;
        gpu.vocab_shard_partials(
            &self.stream,
            logits,
            layout,
            self.shard,
            targets,
            &mut partials.as_view_mut(),
            cfg,
        )?;
        self.finalize(gpu, &partials.as_view(), targets, out, cfg)
    }

    /// Token log-probs of the fused LM head's shard (`head.weight` = this rank's rows), identical
    /// on every rank, without any `[N, V/tp]` logits tensor.
    pub fn linear_token_logprobs<T: LogitElement, I: TargetIndex>(
        &self,
        gpu: &Gpu,
        head: &LinearHead<'_, T>,
        targets: &View<'_, I>,
        out: TokenLogprobsOutputs<'_>,
        cfg: &LinearConfig,
    ) -> Result<LinearRun> {
        let mut partials = self.stream.alloc_zeros::<f32>(head.shape.n_rows * VP_STATS)?;
        let run = gpu.linear_shard_partials_into(
            &self.stream,
            head,
            self.shard,
            targets,
            partials.as_view_mut(),
            cfg,
        )?;
        self.finalize(gpu, &partials.as_view(), targets, out, &cfg.token)?;
        Ok(run)
    }

    /// The fused LM head's backward on this rank, from the softmax statistics `stats` the
    /// forward's finalize wrote (`out.stats`): its `d_weight` / `d_bias` shard, and `d_hidden`
    /// summed over the group (all-reduce), so every rank holds the full `d_hidden`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward<T: LogitElement + NcclType, I: TargetIndex>(
        &self,
        gpu: &Gpu,
        head: &LinearHead<'_, T>,
        targets: &View<'_, I>,
        stats: &View<'_, f32>,
        grad_logp: &View<'_, f32>,
        entropy: Option<EntropyGrad<'_, '_>>,
        mut grads: LinearGradViews<'_, T>,
        cfg: &LinearConfig,
    ) -> Result<LinearRun> {
        let views = LinearGradViews {
            d_hidden: grads.d_hidden.reborrow(),
            d_weight: grads.d_weight.reborrow(),
            d_bias: grads.d_bias.as_mut().map(ViewMut::reborrow),
        };
        let run = gpu.linear_shard_backward_into(
            &self.stream,
            head,
            self.shard,
            targets,
            stats,
            grad_logp,
            entropy,
            views,
            cfg,
        )?;
        self.all_reduce_sum(&mut grads.d_hidden)?;
        Ok(run)
    }
}
