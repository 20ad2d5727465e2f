//! Two streams for a chunk loop whose chunks alternate between two workspace slots: the caller's
//! stream fills a slot (a GEMM) while a side stream drains the other (the row pass over the
//! previous chunk's logits), so the bandwidth-bound row pass overlaps the next compute-bound GEMM.
//!
//! Only events order the two streams, and only events the loop records: a slot is handed to the
//! side stream after its fill (`filled`), and back after its drain (`drained`); before the loop
//! returns, the caller's stream waits for the side stream's last drain, so everything enqueued on
//! the caller's stream afterwards sees every output (and a CUDA graph capture of the caller's
//! stream, which the side stream joins through the first wait, is joined back before it ends).
//! Nothing here synchronizes the host or allocates while a loop runs: a side lane is created on
//! a stream's first pipelined call, or taken from a spare made ahead when that call is being
//! captured (where creating streams and events is not a documented-safe call); where a lane
//! cannot be made, the loop runs on the caller's stream alone. A loop cut short by an error still
//! joins the side stream back (`Drop`), so no queued row pass outlives the call unordered.
//!
//! On the emulator every launch runs when enqueued, so the pipeline is one stream: `side()` is
//! the caller's stream and the hand-offs are no-ops (the loop's slot alternation is still what
//! runs, and is what the emulator tests).
use std::cell::Cell;
use std::sync::{Mutex, MutexGuard};

use cudarc::driver::{result, sys};

use crate::error::Result;

/// A side stream and the events that hand each of two workspace slots between it and the
/// caller's stream. Owned by one caller stream; used by one loop at a time (its mutex).
pub(crate) struct SideLane {
    stream: sys::CUstream,
    filled: [sys::CUevent; 2],
    drained: [sys::CUevent; 2],
    /// Records the side stream's last work when a loop ends early (an error), to join it back.
    joined: sys::CUevent,
}

// SAFETY: the handles are plain driver handles of one context, used only under the lane's mutex
// with that context bound.
unsafe impl Send for SideLane {}
// SAFETY: as above.
unsafe impl Sync for SideLane {}

impl SideLane {
    /// A non-blocking side stream (no implicit order with the legacy default stream) of the
    /// context's greatest priority, so a row pass gets SMs as a GEMM's blocks retire instead of
    /// queueing behind the next GEMM's, and five events without timing, in the context current
    /// on this thread.
    pub(crate) fn new() -> Result<Self> {
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;
        let mut lane = SideLane {
            stream: std::ptr::null_mut(),
            filled: [std::ptr::null_mut(); 2],
            drained: [std::ptr::null_mut(); 2],
            joined: std::ptr::null_mut(),
        };
        // Each handle is stored as soon as it exists, so Drop frees what an error leaves behind.
        let (_least, greatest) = result::stream::get_priority_range()?;
        lane.stream =
            result::stream::create_with_priority(result::stream::StreamKind::NonBlocking, greatest)?;
        for slot in 0..2 {
            lane.filled[slot] = result::event::create(flags)?;
            lane.drained[slot] = result::event::create(flags)?;
        }
        lane.joined = result::event::create(flags)?;
        Ok(lane)
    }
}

impl Drop for SideLane {
    fn drop(&mut self) {
        for e in self.filled.iter().chain(&self.drained).chain([&self.joined]).filter(|e| !e.is_null()) {
            // SAFETY: created by cuEventCreate in `new` and destroyed once, here.
            let _ = unsafe { result::event::destroy(*e) };
        }
        if !self.stream.is_null() {
            // SAFETY: created by cuStreamCreateWithPriority in `new` and destroyed once, here
            // (pending work completes first, as cuStreamDestroy documents).
            let _ = unsafe { result::stream::destroy(self.stream) };
        }
    }
}

/// The two streams of one chunk loop (see the module docs). Holds the side lane's lock while the
/// loop enqueues, so two loops on one caller stream never interleave their hand-offs.
pub(crate) struct Pipeline<'a> {
    main: u64,
    lane: Option<MutexGuard<'a, SideLane>>,
    /// Side work enqueued since the last drain record (a chunk cut short by an error).
    undrained: Cell<bool>,
    /// The slot of the last drain record, while the caller's stream has not waited for it.
    unjoined: Cell<Option<usize>>,
}

impl Drop for Pipeline<'_> {
    /// A loop that returns early (an error) may leave row passes queued on the side stream that
    /// write the caller's outputs and read its workspace: join them to the caller's stream, so
    /// nothing the caller frees or reuses afterwards is still in use, and a capture still closes.
    fn drop(&mut self) {
        if let Some(l) = &self.lane {
            if self.undrained.get() || self.unjoined.get().is_some() {
                // SAFETY: live handles of the lane's context, which the loop bound on this thread.
                unsafe {
                    let _ = result::event::record(l.joined, l.stream);
                    let _ = result::stream::wait_event(
                        self.main as sys::CUstream,
                        l.joined,
                        sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                    );
                }
            }
        }
    }
}

impl<'a> Pipeline<'a> {
    /// `main` with `lane`'s side stream, or alone without a lane (the lane's context must be
    /// current on this thread whenever a hand-off is enqueued). A lane whose mutex a panic
    /// poisoned is used as is: it holds only handles, and every loop records before it waits.
    pub(crate) fn new(main: u64, lane: Option<&'a Mutex<SideLane>>) -> Self {
        let lane = lane.map(|l| l.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        Pipeline { main, lane, undrained: Cell::new(false), unjoined: Cell::new(None) }
    }

    /// The caller's stream: the fills (GEMMs), and everything after the loop.
    pub(crate) fn main(&self) -> u64 {
        self.main
    }

    /// The stream the drains (row passes) are enqueued on.
    pub(crate) fn side(&self) -> u64 {
        self.lane.as_ref().map_or(self.main, |l| l.stream as u64)
    }

    /// Runs a chunk loop of `n_chunks` chunks over `slots` workspace slots (chunk `c` in slot
    /// `c % slots`): `fill(c, slot)` enqueues the chunk's fill (its logits GEMM) on [`Pipeline::main`],
    /// then `drain(c, slot)` its row pass on [`Pipeline::side`]. A slot is filled again only after
    /// its previous drain; the loop ends with the caller's stream joined to the last drain.
    ///
    /// # Safety
    /// As for [`Pipeline::fill_done`]; the closures enqueue only on the stream they are given to
    /// and only into their chunk's slot.
    pub(crate) unsafe fn run_chunks(
        &self,
        n_chunks: usize,
        slots: usize,
        fill: impl FnMut(usize, usize) -> Result<()>,
        drain: impl FnMut(usize, usize) -> Result<()>,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.chunk_loop(n_chunks, slots, fill, drain, None::<fn(usize, usize) -> Result<()>>) }
    }

    /// [`Pipeline::run_chunks`] with `finish(c, slot)`: main-stream work that reads the chunk's
    /// drained slot (a backward's weight GEMMs). With two slots it is enqueued after the next
    /// chunk's fill, so the row pass on the side stream overlaps that GEMM; the slot's next fill
    /// comes after it, in order on the caller's stream.
    ///
    /// # Safety
    /// As for [`Pipeline::run_chunks`].
    pub(crate) unsafe fn run_chunks_then(
        &self,
        n_chunks: usize,
        slots: usize,
        fill: impl FnMut(usize, usize) -> Result<()>,
        drain: impl FnMut(usize, usize) -> Result<()>,
        finish: impl FnMut(usize, usize) -> Result<()>,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.chunk_loop(n_chunks, slots, fill, drain, Some(finish)) }
    }

    /// # Safety
    /// As for [`Pipeline::run_chunks`].
    unsafe fn chunk_loop(
        &self,
        n_chunks: usize,
        slots: usize,
        mut fill: impl FnMut(usize, usize) -> Result<()>,
        mut drain: impl FnMut(usize, usize) -> Result<()>,
        mut finish: Option<impl FnMut(usize, usize) -> Result<()>>,
    ) -> Result<()> {
        debug_assert!(slots == 1 || slots == 2, "one or two slots");
        debug_assert!(slots == 2 || self.lane.is_none(), "a side stream needs two slots");
        let has_finish = finish.is_some();
        // SAFETY (every block below): the caller's contract; each hand-off names the chunk's slot.
        let mut finish_chunk = |c: usize| -> Result<()> {
            match finish.as_mut() {
                Some(f) => {
                    unsafe { self.wait_drained(c % slots)? };
                    f(c, c % slots)
                }
                None => Ok(()),
            }
        };
        for c in 0..n_chunks {
            let slot = c % slots;
            // Without `finish` the slot's previous drain is waited for here; with it, that chunk's
            // finish, enqueued before this fill, already waited.
            if c >= slots && !has_finish {
                unsafe { self.wait_drained(slot)? };
            }
            fill(c, slot)?;
            unsafe { self.fill_done(slot)? };
            drain(c, slot)?;
            unsafe { self.drain_done(slot)? };
            if slots == 1 {
                finish_chunk(c)?;
            } else if c > 0 {
                finish_chunk(c - 1)?;
            }
        }
        if let Some(last) = n_chunks.checked_sub(1) {
            if !has_finish {
                // Joins the side stream back (its work is in order: the last drain covers every
                // chunk's).
                unsafe { self.wait_drained(last % slots)? };
            } else if slots == 2 {
                finish_chunk(last)?;
            }
        }
        Ok(())
    }

    /// Side-stream work enqueued from now on runs after the main-stream work enqueued so far
    /// (`slot` has been filled).
    ///
    /// # Safety
    /// The lane's context is current on this thread and `main` is a live stream of it.
    pub(crate) unsafe fn fill_done(&self, slot: usize) -> Result<()> {
        if let Some(l) = &self.lane {
            // SAFETY: live handles of the current context (the caller's contract and `new`).
            unsafe {
                result::event::record(l.filled[slot], self.main as sys::CUstream)?;
                self.undrained.set(true);
                result::stream::wait_event(
                    l.stream,
                    l.filled[slot],
                    sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )?;
            }
        }
        Ok(())
    }

    /// Marks the side-stream work enqueued so far as `slot`'s drain.
    ///
    /// # Safety
    /// As for [`Pipeline::fill_done`].
    pub(crate) unsafe fn drain_done(&self, slot: usize) -> Result<()> {
        if let Some(l) = &self.lane {
            // SAFETY: live handles of the current context.
            unsafe { result::event::record(l.drained[slot], l.stream)? };
            self.undrained.set(false);
            self.unjoined.set(Some(slot));
        }
        Ok(())
    }

    /// Main-stream work enqueued from now on runs after `slot`'s last recorded drain (before
    /// the slot is filled again, before its results are used on the main stream, and at the end
    /// of the loop for the last slot drained, which joins the side stream back).
    ///
    /// # Safety
    /// As for [`Pipeline::fill_done`].
    pub(crate) unsafe fn wait_drained(&self, slot: usize) -> Result<()> {
        if let Some(l) = &self.lane {
            // SAFETY: live handles of the current context.
            unsafe {
                result::stream::wait_event(
                    self.main as sys::CUstream,
                    l.drained[slot],
                    sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )?
            };
            if self.unjoined.get() == Some(slot) {
                self.unjoined.set(None);
            }
        }
        Ok(())
    }
}
