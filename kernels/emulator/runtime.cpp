// The emulator runtime: runs kernels compiled for the host (cuda_emu.h) block by block, each CUDA
// thread a fiber on one OS thread, in a fixed order, so results are bitwise reproducible. It owns
// the emulated device memory and checks every access the instrumented kernel code makes:
//   memcheck   global accesses outside a live allocation, misaligned accesses, shared accesses
//              outside the block's declared shared memory;
//   racecheck  two threads touching the same shared byte between two barriers, one writing;
//   initcheck  reads of shared bytes not written since the block started, and of global bytes
//              never written since allocation;
//   synccheck  __syncthreads not reached by every thread, warp collectives with missing or
//              mismatched lanes, deadlocks: reported, never a hang.
// Each report names the kernel, block, thread and address. This file is compiled without
// instrumentation; it provides the __tsan_* hooks the kernel translation units call.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_emu.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace prefk_emu {
namespace {

constexpr uint32_t CHECK_MEM = 1, CHECK_RACE = 2, CHECK_INIT = 4, CHECK_SYNC = 8;
constexpr size_t STATIC_SHARED_CAP = 48 * 1024;  // CUDA's static shared memory limit per block
constexpr size_t MAX_DYNAMIC_SHARED = 227 * 1024;
constexpr size_t MAX_PARAMS = 4096;  // CUDA's kernel parameter limit
constexpr size_t FIBER_STACK = 256 * 1024;
constexpr size_t REDZONE = 256;  // bytes before and after every allocation (also its alignment)
constexpr int MAX_REPORTS = 12;

// ---- allocations ---------------------------------------------------------------------------------
struct Alloc {
    uintptr_t base;
    size_t size;
    unsigned char* raw;
    std::vector<uint8_t> init;  // 1 = written since allocation
};

// One lock for the emulated device: allocations, copies and launches (a launch holds it
// throughout, so the hooks read the allocation map without locking).
std::recursive_mutex g_lock;
std::map<uintptr_t, Alloc*> g_allocs;
thread_local std::string g_last_error;

Alloc* find_alloc(uintptr_t a) {
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    return a < it->second->base + it->second->size ? it->second : nullptr;
}

// Nearest allocation around `a`, for messages.
std::string describe_near(uintptr_t a, size_t n) {
    char buf[256];
    auto it = g_allocs.upper_bound(a);
    if (it != g_allocs.begin()) {
        Alloc* al = std::prev(it)->second;
        if (a >= al->base + al->size) {
            snprintf(buf, sizeof buf, "%zu bytes past the end of the %zu-byte allocation at %#lx",
                     (size_t)(a - (al->base + al->size)), al->size, (unsigned long)al->base);
            return buf;
        }
        if (a + n > al->base + al->size) {
            snprintf(buf, sizeof buf, "straddles the end of the %zu-byte allocation at %#lx", al->size,
                     (unsigned long)al->base);
            return buf;
        }
    }
    if (it != g_allocs.end()) {
        snprintf(buf, sizeof buf, "%zu bytes before the %zu-byte allocation at %#lx", (size_t)(it->second->base - a),
                 it->second->size, (unsigned long)it->second->base);
        return buf;
    }
    return "not in any emulator allocation";
}

// ---- fibers ---------------------------------------------------------------------------------------
#if defined(__x86_64__)
extern "C" void prefk_emu_switch(void** save_sp, void* new_sp);
asm(R"(
.text
.p2align 4
.globl prefk_emu_switch
.hidden prefk_emu_switch
.type prefk_emu_switch,@function
prefk_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size prefk_emu_switch, .-prefk_emu_switch
)");
#endif

enum class State : uint8_t { Runnable, AtBarrier, AtWarp, Exited };

struct Stack {
    unsigned char* lo = nullptr;  // usable range [lo, lo + FIBER_STACK), guard page below
};

// One cp.async in flight: 16 bytes (or zeros) to shared memory, in the thread's group `group`.
struct AsyncCopy {
    void* dst;
    const void* src;  // nullptr: zero-fill
    uint64_t group;
};

// One wgmma.mma_async in flight, per thread: its result (computed at issue from the operands then)
// lands in the accumulator registers `acc` at the wgmma.wait_group that covers `group`; until then
// those registers read as NaN. Lane 0 of the warp also keeps the shared bytes the instruction
// read, so a write to them before the wait (a race with the async proxy) is caught.
struct WgmmaInFlight {
    float* acc;
    int n_acc;
    uint64_t group;  // the newest group of the wgmmas chained into these accumulators
    float d[64];
};
// The shared bytes one wgmma read (lane 0 keeps them), checked unchanged when its group completes.
struct WgmmaReads {
    uint64_t group;
    std::vector<std::pair<size_t, std::vector<unsigned char>>> rows;  // (shared offset, 16 bytes read)
};
// Accumulators of an in-flight wgmma hold this NaN until its wait; any other value then means
// the kernel wrote them in flight.
constexpr uint32_t WGMMA_POISON = 0x7fc0beefu;

struct Thread {
    uint32_t tid;  // linear thread index in the block
    uint3 idx;
    State state;
    uint64_t atomics_since_sync;  // spin-wait detection
    std::vector<AsyncCopy> async;  // issued cp.async copies not yet complete
    uint64_t async_commits;        // cp.async groups committed so far
    std::vector<WgmmaInFlight> wgmma;  // issued wgmma.mma_async not yet waited for
    std::vector<WgmmaReads> wgmma_reads;  // lane 0: the shared bytes of those
    uint64_t wgmma_commits;            // wgmma groups committed so far
    bool wgmma_fenced;                 // a wgmma.fence since the last wgmma.wait_group
    uint32_t proxy_fences;             // fence.proxy.async executed so far
    uintptr_t stack_lo, stack_hi;
#if defined(__x86_64__)
    void* sp;
#else
    ucontext_t ctx;
#endif
};

enum WarpOp : uint32_t { OP_NONE, OP_SHFL, OP_VOTE, OP_SYNCWARP, OP_MMA_BF16, OP_MMA_F16, OP_LDMATRIX, OP_WGMMA };
const char* op_name(uint32_t op) {
    switch (op) {
        case OP_SHFL: return "a warp shuffle";
        case OP_VOTE: return "a warp vote";
        case OP_SYNCWARP: return "__syncwarp";
        case OP_MMA_BF16: return "mma.sync (bf16)";
        case OP_MMA_F16: return "mma.sync (f16)";
        case OP_LDMATRIX: return "ldmatrix";
        case OP_WGMMA: return "wgmma.mma_async";
        default: return "nothing";
    }
}

// A pending warp collective: the lanes of `mask` that have arrived so far. Disjoint lane groups
// of one warp may each have their own (e.g. two half-warps shuffling with their own masks).
struct Pending {
    uint32_t arrived, op, mask;
    int mode, width;
};

struct Warp {
    std::vector<Pending> pending;
    uint32_t in[32][10];  // per lane: inputs of the collective it waits at
    int arg[32];
    uint32_t out[32][4];  // per lane: its result, read when it resumes
    uint64_t sync_gen = 0;          // completed __syncwarp count of this warp
    uint64_t lane_sync_gen[32] = {};  // the last __syncwarp each lane took part in
    uint32_t lane_sync_mask[32] = {};  // and that __syncwarp's mask
};

struct Launch {
    const KernelReg* kernel;
    dim3 grid, block;
    size_t dynamic_smem;
    uint32_t checks;
    const void* params;
    size_t params_size;
    // current block
    uint3 bidx;
    uint32_t n_threads, n_live, n_exited, at_barrier;
    bool barrier_reported;
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    // wgmma's warpgroup check: per warpgroup, each wgmma (descriptor, mode) in issue order; per
    // warp, how many it has issued.
    std::vector<std::vector<std::pair<uint64_t, int>>> wgmma_log;
    std::vector<size_t> wgmma_issued;
    // shared memory: [static region, STATIC_SHARED_CAP bytes | dynamic region]
    unsigned char* smem;
    size_t static_used;
    std::vector<std::pair<const void*, size_t>> sites;
    // results
    bool aborted;
    int n_reports, n_suppressed;
    std::string report;
};

Launch* L = nullptr;   // the running launch (g_lock held)
Thread* T = nullptr;   // the running thread
void* g_sched_sp = nullptr;
#if !defined(__x86_64__)
ucontext_t g_sched_ctx;
#endif
std::vector<Stack> g_stacks;

// Shared memory and its shadow (one entry per byte). Epochs and block generations only grow, so
// nothing needs clearing between blocks: a byte is initialized iff init_gen == the block's.
// w_wgen / r_wgen: the accessing warp's __syncwarp count at the access, so accesses of two lanes
// of one warp separated by a __syncwarp covering both are ordered.
struct ShadowByte {
    uint64_t init_gen, w_epoch, r_epoch;
    uint64_t w_wgen, r_wgen;
    uint32_t w_pfence;  // the writer's fence.proxy.async count at the write
    uint16_t w_tid, r_tid;
    uint8_t r_multi;
};
std::vector<unsigned char> g_smem;
std::vector<ShadowByte> g_shadow;
uint64_t g_epoch = 0, g_block_gen = 0;
constexpr uint64_t MAX_ATOMICS_WITHOUT_SYNC = 10000000;  // a spin-wait: it cannot end under emulation

// ---- reports ----------------------------------------------------------------------------------------
void report(const char* checker, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void report(const char* checker, const char* fmt, ...) {
    if (L->n_reports >= MAX_REPORTS) {
        L->n_suppressed++;
        return;
    }
    L->n_reports++;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char where[256];
    if (T)
        snprintf(where, sizeof where, "kernel `%s`, block (%u,%u,%u), thread (%u,%u,%u)", L->kernel->name, L->bidx.x,
                 L->bidx.y, L->bidx.z, T->idx.x, T->idx.y, T->idx.z);
    else
        snprintf(where, sizeof where, "kernel `%s`, block (%u,%u,%u)", L->kernel->name, L->bidx.x, L->bidx.y, L->bidx.z);
    L->report += std::string("[") + checker + "] " + where + ": " + msg + "\n";
}

// ---- scheduling -------------------------------------------------------------------------------------
void to_scheduler() {
    Thread* me = T;
#if defined(__x86_64__)
    prefk_emu_switch(&me->sp, g_sched_sp);
#else
    swapcontext(&me->ctx, &g_sched_ctx);
#endif
}

// Stops the launch: the current fiber is abandoned (kernel code holds no resources) and the
// scheduler returns. Called where continuing would be undefined (an invalid access) or would hang.
[[noreturn]] void abort_launch() {
    L->aborted = true;
    for (;;) to_scheduler();
}

void release_barrier() {
    for (Thread& t : L->threads)
        if (t.state == State::AtBarrier) t.state = State::Runnable;
    L->at_barrier = 0;
    L->barrier_reported = false;
    ++g_epoch;
}

void check_pending_warp_lanes(const Warp& w, uint32_t warp_id);

void thread_exit() {
    if ((L->checks & CHECK_SYNC) && !T->wgmma.empty())
        report("synccheck", "exited with %zu wgmma.mma_async not waited for (wgmma.wait_group)", T->wgmma.size());
    T->state = State::Exited;
    L->n_live--;
    L->n_exited++;
    if (L->at_barrier > 0) {
        if ((L->checks & CHECK_SYNC) && !L->barrier_reported) {
            L->barrier_reported = true;
            report("synccheck", "exited while %u thread(s) of the block wait at __syncthreads", L->at_barrier);
        }
        if (L->at_barrier == L->n_live) release_barrier();
    }
    check_pending_warp_lanes(L->warps[T->tid / 32], T->tid / 32);
    for (;;) to_scheduler();
}

void fiber_main() {
    alignas(16) unsigned char params[MAX_PARAMS];  // by-value parameters live on the thread's stack
    memcpy(params, L->params, L->params_size);
    L->kernel->entry(params);
    thread_exit();
}

void init_fiber(Thread& t, Stack& s) {
    t.stack_lo = (uintptr_t)s.lo;
    t.stack_hi = (uintptr_t)s.lo + FIBER_STACK;
#if defined(__x86_64__)
    void** sp = (void**)(t.stack_hi & ~(uintptr_t)15);
    *--sp = nullptr;                       // fiber_main's return slot (never used): keeps the ABI alignment
    *--sp = (void*)&fiber_main;            // `ret` of prefk_emu_switch enters fiber_main
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    t.sp = sp;
#else
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = s.lo;
    t.ctx.uc_stack.ss_size = FIBER_STACK;
    t.ctx.uc_link = nullptr;
    makecontext(&t.ctx, (void (*)())fiber_main, 0);
#endif
}

void run_thread(Thread& t) {
    T = &t;
#if defined(__x86_64__)
    prefk_emu_switch(&g_sched_sp, t.sp);
#else
    swapcontext(&g_sched_ctx, &t.ctx);
#endif
    T = nullptr;
}

std::string thread_states() {
    std::string s;
    int listed = 0;
    for (Thread& t : L->threads) {
        if (t.state == State::Exited || listed >= 6) continue;
        char buf[160];
        const Warp& w = L->warps[t.tid / 32];
        uint32_t op = OP_NONE;
        for (const Pending& pd : w.pending)
            if (pd.arrived >> (t.tid % 32) & 1u) op = pd.op;
        snprintf(buf, sizeof buf, "%sthread (%u,%u,%u) waits at %s", listed ? "; " : "", t.idx.x, t.idx.y, t.idx.z,
                 t.state == State::AtBarrier ? "__syncthreads" : op_name(op));
        s += buf;
        ++listed;
    }
    return s;
}

void run_block() {
    const uint32_t n = L->n_threads;
    L->threads.resize(n);
    L->warps.assign((n + 31) / 32, Warp());
    L->wgmma_log.assign((n + 127) / 128, {});
    L->wgmma_issued.assign((n + 31) / 32, 0);
    L->n_live = n;
    L->n_exited = 0;
    L->at_barrier = 0;
    L->barrier_reported = false;
    L->static_used = 0;
    L->sites.clear();
    ++g_block_gen;
    ++g_epoch;
    // Poison the dynamic region (initcheck also tracks it byte by byte).
    memset(L->smem + STATIC_SHARED_CAP, 0xA5, L->dynamic_smem);
    for (uint32_t i = 0; i < n; ++i) {
        Thread& t = L->threads[i];
        t.async.clear();
        t.async_commits = 0;
        t.wgmma.clear();
        t.wgmma_reads.clear();
        t.wgmma_commits = 0;
        t.wgmma_fenced = false;
        t.proxy_fences = 0;
        t.tid = i;
        t.idx = {i % L->block.x, (i / L->block.x) % L->block.y, i / (L->block.x * L->block.y)};
        t.state = State::Runnable;
        t.atomics_since_sync = 0;
        init_fiber(t, g_stacks[i]);
    }
    while (L->n_live > 0 && !L->aborted) {
        bool ran = false;
        for (uint32_t i = 0; i < n && !L->aborted; ++i) {
            if (L->threads[i].state != State::Runnable) continue;
            run_thread(L->threads[i]);
            ran = true;
        }
        if (!ran && !L->aborted) {
            report("synccheck", "deadlock: no thread can proceed (%s)", thread_states().c_str());
            L->aborted = true;
        }
    }
    // wgmma is warpgroup-wide: every warp of a warpgroup must have issued the same ones.
    if (!L->aborted && (L->checks & CHECK_SYNC))
        for (size_t w = 0; w < L->warps.size(); ++w)
            if (L->wgmma_issued[w] != L->wgmma_log[w / 4].size()) {
                report("synccheck", "warp %zu issued %zu wgmma.mma_async, its warpgroup %zu", w, L->wgmma_issued[w],
                       L->wgmma_log[w / 4].size());
                break;
            }
}

// ---- warp collectives ---------------------------------------------------------------------------------
float bf16_bits_to_f32(uint32_t bits) {
    uint32_t u = (bits & 0xffffu) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
float f16_bits_to_f32(uint32_t bits) {
    const uint32_t s = (bits >> 15) & 1u, e = (bits >> 10) & 31u, m = bits & 1023u;
    float v;
    if (e == 0) v = ldexpf((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexpf((float)(m | 1024u), (int)e - 25);
    return s ? -v : v;
}

// D = A B + C for m16n8k16 from the 32 lanes' fragments (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"), g = lane / 4, t = lane % 4:
//   A regs: a0 = (g, 2t|2t+1), a1 = (g+8, 2t|2t+1), a2 = (g, 2t+8|2t+9), a3 = (g+8, 2t+8|2t+9)
//   B regs: b0 = (k 2t|2t+1, n g), b1 = (k 2t+8|2t+9, n g)          (low half = lower index)
//   C, D:   c0 = (g, 2t), c1 = (g, 2t+1), c2 = (g+8, 2t), c3 = (g+8, 2t+1)
// Products of 16-bit floats are exact in double; the sum over k runs in k order in double and
// is rounded to f32 once (hardware order and internal precision are unspecified).
void complete_mma(Warp& w, bool bf16) {
    float A[16][16], B[16][8], C[16][8];
    auto cvt = [bf16](uint32_t bits) { return bf16 ? bf16_bits_to_f32(bits) : f16_bits_to_f32(bits); };
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        const uint32_t* r = w.in[lane];
        for (int reg = 0; reg < 4; ++reg) {
            const int row = g + ((reg & 1) ? 8 : 0), col = 2 * t + ((reg & 2) ? 8 : 0);
            A[row][col] = cvt(r[reg] & 0xffffu);
            A[row][col + 1] = cvt(r[reg] >> 16);
        }
        for (int reg = 0; reg < 2; ++reg) {
            const int k = 2 * t + (reg ? 8 : 0);
            B[k][g] = cvt(r[4 + reg] & 0xffffu);
            B[k + 1][g] = cvt(r[4 + reg] >> 16);
        }
        for (int e = 0; e < 4; ++e) memcpy(&C[g + (e >= 2 ? 8 : 0)][2 * t + (e & 1)], &r[6 + e], 4);
    }
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        for (int e = 0; e < 4; ++e) {
            const int i = g + (e >= 2 ? 8 : 0), j = 2 * t + (e & 1);
            double acc = 0.0;
            for (int k = 0; k < 16; ++k) acc += (double)A[i][k] * (double)B[k][j];
            const float d = (float)(acc + (double)C[i][j]);
            memcpy(&w.out[lane][e], &d, 4);
        }
    }
}

void shared_access(uintptr_t a, size_t n, bool write, bool aligned);

// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16 (PTX ISA, "Warp-level matrix load
// instruction: ldmatrix"): lanes 8j .. 8j+7 give the addresses of the 8 rows (16 bytes each) of
// matrix j; lane i receives, in register j, row i/4's elements 2(i%4) and 2(i%4)+1 of matrix j,
// or with .trans column i/4's elements of rows 2(i%4) and 2(i%4)+1 (low half = the first). Each
// row is read as a 16-byte shared access of the lane that gave its address (checked as such).
// mode = number of matrices | trans << 8.
void complete_ldmatrix(Warp& w, int mode, uint32_t warp_id) {
    const int num = mode & 0xff;
    const bool trans = (mode >> 8) & 1;
    uint16_t m[4][8][8];
    Thread* me = T;
    for (int j = 0; j < num; ++j)
        for (int r = 0; r < 8; ++r) {
            const int lane = 8 * j + r;
            uint64_t addr;
            memcpy(&addr, w.in[lane], 8);
            if ((L->checks & CHECK_MEM) && (addr & 15u) != 0) {
                report("memcheck", "ldmatrix row address %#llx of lane %d is not 16-byte aligned",
                       (unsigned long long)addr, lane);
                abort_launch();
            }
            T = &L->threads[warp_id * 32 + lane];
            shared_access((uintptr_t)addr, 16, false, true);
            T = me;
            memcpy(m[j][r], reinterpret_cast<const void*>(addr), 16);
        }
    for (int lane = 0; lane < 32; ++lane)
        for (int j = 0; j < num; ++j) {
            const int a = lane / 4, b = 2 * (lane % 4);
            const uint16_t lo = trans ? m[j][b][a] : m[j][a][b], hi = trans ? m[j][b + 1][a] : m[j][a][b + 1];
            w.out[lane][j] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
}

// wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}.{bf16,f16} with A in registers (PTX ISA,
// "Asynchronous Warpgroup Level Matrix Multiply-Accumulate"), one warp's share: warp w of the
// warpgroup owns rows 16w .. 16w+15 of D and A, which have mma.m16n8k16's A and C fragment layouts
// (A: the 4 registers of in[0..3]; D: d[4j + e] is mma C element e of the 8-column block j), and
// B (16 x N) comes from shared memory through the descriptor in[4..5]. Only the no-swizzle layout
// (layout type 0) is modelled; its 8 x 16-byte core matrices are placed by
//   K-major  (trans_b 0): B[k][n] at start + (n/8) SBO + (n%8) 16 + (k/8) LBO + (k%8) 2
//   MN-major (trans_b 1): B[k][n] at start + (n/8) SBO + (n%8) 2  + (k/8) LBO + (k%8) 16
// In the SS form A (64 x 16) comes from shared memory too, K-major through its own descriptor
// (in[0..1]), warp w reading rows 16w .. 16w+15: A[m][k] at start + (m/8) SBO + (m%8) 16 + (k/8) LBO
// + (k%8) 2. Each 16-byte core-matrix row is read as a shared access of lane 0 (memcheck,
// initcheck, racecheck), and must have been written before its writer's last fence.proxy.async
// (synccheck). The sum is computed as complete_mma's: exact products, k order, one rounding to f32.
// mode = N | trans_b << 8 | bf16 << 9 | ss << 10;
// in = {a0..a3 (SS: desc_a lo, hi, 0, 0), desc lo, desc hi, acc lo, acc hi, scale_d}.
void complete_wgmma(Warp& w, int mode, uint32_t warp_id) {
    const int n = mode & 0xff;
    const bool trans = (mode >> 8) & 1, bf16 = (mode >> 9) & 1, ss = (mode >> 10) & 1;
    auto cvt = [bf16](uint32_t bits) { return bf16 ? bf16_bits_to_f32(bits) : f16_bits_to_f32(bits); };
    uint64_t desc, desc_a = 0;
    memcpy(&desc, &w.in[0][4], 8);
    if (ss) memcpy(&desc_a, &w.in[0][0], 8);
    const uint32_t scale_d = w.in[0][8];
    for (int lane = 1; lane < 32; ++lane) {
        uint64_t other, other_a = 0;
        memcpy(&other, &w.in[lane][4], 8);
        if (ss) memcpy(&other_a, &w.in[lane][0], 8);
        if (other != desc || other_a != desc_a || w.in[lane][8] != scale_d) {
            report("synccheck", "lanes of warp %u give wgmma.mma_async different descriptors or scale-d (lane %d)",
                   warp_id, lane);
            abort_launch();
        }
    }
    if (L->n_threads % 128 != 0) {
        report("synccheck", "wgmma.mma_async in a block of %u threads: warpgroups are whole groups of 128",
               L->n_threads);
        abort_launch();
    }
    {  // every warp of the warpgroup issues the same sequence of wgmma instructions
        auto& log = L->wgmma_log[warp_id / 4];
        const size_t idx = L->wgmma_issued[warp_id]++;
        const uint64_t key = desc ^ (desc_a * 0x9e3779b97f4a7c15ull);
        if (idx == log.size()) log.emplace_back(key, mode);
        else if (log[idx] != std::make_pair(key, mode)) {
            report("synccheck", "warp %u's wgmma.mma_async #%zu differs from its warpgroup's (descriptor or shape)",
                   warp_id, idx);
            abort_launch();
        }
    }
    for (uint64_t d : {desc, desc_a})
        if ((d >> 62) != 0 || ((d >> 49) & 7u) != 0) {
            report("memcheck", "wgmma descriptor %#llx: the emulator models only the no-swizzle layout, base offset 0",
                   (unsigned long long)d);
            abort_launch();
        }
    Thread* me = T;
    Thread* lane0 = &L->threads[warp_id * 32];
    std::vector<std::pair<size_t, std::vector<unsigned char>>> rows;
    // One 16-byte core-matrix row at shared offset `off`: checked, recorded, its 8 elements returned.
    auto read_row = [&](uint64_t d, size_t off, uint16_t (&v)[8]) {
        if (off + 16 > STATIC_SHARED_CAP + MAX_DYNAMIC_SHARED) {
            report("memcheck", "wgmma descriptor %#llx reads past shared memory (offset %zu)", (unsigned long long)d,
                   off);
            abort_launch();
        }
        T = lane0;
        shared_access((uintptr_t)L->smem + off, 16, false, true);
        T = me;
        if (L->checks & CHECK_SYNC)
            for (size_t i = 0; i < 16; ++i) {
                const ShadowByte& s = g_shadow[off + i];
                if (s.init_gen == g_block_gen && s.w_tid < L->n_threads &&
                    L->threads[s.w_tid].proxy_fences <= s.w_pfence) {
                    report("synccheck", "wgmma.mma_async reads shared offset %zu, written by thread %u with no "
                           "fence.proxy.async after the write", off + i, s.w_tid);
                    abort_launch();
                }
            }
        memcpy(v, L->smem + off, 16);
        rows.emplace_back(off, std::vector<unsigned char>(L->smem + off, L->smem + off + 16));
    };
    auto field = [](uint64_t d, int shift) { return (size_t)((d >> shift) & 0x3fffu) << 4; };
    // B, read by 16-byte core-matrix rows: (n, k half) rows when K-major, (k, n group) when MN-major.
    float B[16][128];
    {
        const size_t start = field(desc, 0), lbo = field(desc, 16), sbo = field(desc, 32);
        for (int outer = 0; outer < (trans ? 16 : n); ++outer)
            for (int half = 0; half < (trans ? n / 8 : 2); ++half) {
                uint16_t v[8];
                read_row(desc, trans ? start + half * sbo + (outer / 8) * lbo + (outer % 8) * 16
                                     : start + (outer / 8) * sbo + (outer % 8) * 16 + half * lbo, v);
                for (int e = 0; e < 8; ++e) {
                    const int k = trans ? outer : 8 * half + e, col = trans ? 8 * half + e : outer;
                    B[k][col] = cvt(v[e]);
                }
            }
    }
    // A: this warp's 16 rows, from its registers or (SS) by (row, k half) core-matrix rows.
    float A[16][16];
    if (ss) {
        const size_t start = field(desc_a, 0), lbo = field(desc_a, 16), sbo = field(desc_a, 32);
        for (int r = 0; r < 16; ++r) {
            const int m = 16 * (int)(warp_id % 4) + r;
            for (int half = 0; half < 2; ++half) {
                uint16_t v[8];
                read_row(desc_a, start + (m / 8) * sbo + (m % 8) * 16 + half * lbo, v);
                for (int e = 0; e < 8; ++e) A[r][8 * half + e] = cvt(v[e]);
            }
        }
    } else {
        for (int lane = 0; lane < 32; ++lane) {
            const int g = lane / 4, t = lane % 4;
            for (int reg = 0; reg < 4; ++reg) {
                const int row = g + ((reg & 1) ? 8 : 0), col = 2 * t + ((reg & 2) ? 8 : 0);
                A[row][col] = cvt(w.in[lane][reg] & 0xffffu);
                A[row][col + 1] = cvt(w.in[lane][reg] >> 16);
            }
        }
    }
    for (int lane = 0; lane < 32; ++lane) {
        Thread& th = L->threads[warp_id * 32 + lane];
        float* acc;
        memcpy(&acc, &w.in[lane][6], sizeof acc);
        WgmmaInFlight* rec = nullptr;
        for (WgmmaInFlight& r : th.wgmma)
            if (r.acc == acc) rec = &r;
        if (rec && rec->n_acc != n / 2) {
            report("synccheck", "wgmma.mma_async accumulators of lane %d overlap an in-flight wgmma of another shape",
                   lane);
            abort_launch();
        }
        float C[64];
        for (int i = 0; i < n / 2; ++i) C[i] = !scale_d ? 0.f : rec ? rec->d[i] : acc[i];
        if (!rec) {
            th.wgmma.push_back(WgmmaInFlight{acc, n / 2, 0, {}});
            rec = &th.wgmma.back();
        }
        rec->group = th.wgmma_commits;
        const int g = lane / 4, t = lane % 4;
        for (int i = 0; i < n / 2; ++i) {
            const int row = g + ((i & 2) ? 8 : 0), col = 8 * (i / 4) + 2 * t + (i & 1);
            double sum = 0.0;
            for (int k = 0; k < 16; ++k) sum += (double)A[row][k] * (double)B[k][col];
            rec->d[i] = (float)(sum + (double)C[i]);
        }
        if (lane == 0) th.wgmma_reads.push_back(WgmmaReads{th.wgmma_commits, std::move(rows)});
    }
}

// CUDA's source lane (only the low 5 bits of the lane/delta/mask operand count, as in PTX).
// XOR may read earlier width-groups but not later ones (then the caller keeps its own value).
int shfl_source(int lane, int arg, int width, int mode) {
    arg &= 31;
    const int seg = lane & ~(width - 1);
    int src = lane;
    switch (mode) {
        case SHFL_IDX: src = seg + (arg & (width - 1)); break;
        case SHFL_UP: src = lane - arg >= seg ? lane - arg : lane; break;
        case SHFL_DOWN: src = lane + arg < seg + width ? lane + arg : lane; break;
        default: src = (lane ^ arg) < seg + width ? (lane ^ arg) : lane;
    }
    return src;
}

void complete(Warp& w, size_t slot, uint32_t warp_id) {
    const Pending pd = w.pending[slot];
    w.pending.erase(w.pending.begin() + slot);
    switch (pd.op) {
        case OP_SHFL:
            for (int lane = 0; lane < 32; ++lane) {
                if (!(pd.arrived >> lane & 1u)) continue;
                const int src = shfl_source(lane, w.arg[lane], pd.width, pd.mode);
                if (!(pd.mask >> src & 1u)) {
                    if (L->checks & CHECK_SYNC)
                        report("synccheck", "warp %u lane %d shuffles from lane %d, which is not in the mask %#x",
                               warp_id, lane, src, pd.mask);
                    w.out[lane][0] = w.in[lane][0];
                } else {
                    w.out[lane][0] = w.in[src][0];
                }
            }
            break;
        case OP_VOTE: {
            uint32_t ballot = 0;
            for (int lane = 0; lane < 32; ++lane)
                if ((pd.arrived >> lane & 1u) && w.in[lane][0]) ballot |= 1u << lane;
            const uint32_t v = pd.mode == VOTE_BALLOT ? ballot
                               : pd.mode == VOTE_ANY  ? (ballot != 0)
                                                      : (ballot == pd.arrived);
            for (int lane = 0; lane < 32; ++lane)
                if (pd.arrived >> lane & 1u) w.out[lane][0] = v;
            break;
        }
        case OP_SYNCWARP:
            ++w.sync_gen;
            for (int lane = 0; lane < 32; ++lane)
                if (pd.arrived >> lane & 1u) {
                    w.lane_sync_gen[lane] = w.sync_gen;
                    w.lane_sync_mask[lane] = pd.mask;
                }
            break;
        case OP_MMA_BF16: complete_mma(w, true); break;
        case OP_MMA_F16: complete_mma(w, false); break;
        case OP_LDMATRIX: complete_ldmatrix(w, pd.mode, warp_id); break;
        case OP_WGMMA: complete_wgmma(w, pd.mode, warp_id); break;
        default: break;
    }
    for (int lane = 0; lane < 32; ++lane)
        if (pd.arrived >> lane & 1u) {
            Thread& t = L->threads[warp_id * 32 + lane];
            t.state = State::Runnable;
            t.atomics_since_sync = 0;
        }
}

// A pending collective whose mask names a lane that exited or does not exist can never complete.
void check_pending_warp_lanes(const Warp& w, uint32_t warp_id) {
    for (const Pending& pd : w.pending)
        for (int lane = 0; lane < 32; ++lane) {
            if (!(pd.mask >> lane & 1u) || (pd.arrived >> lane & 1u)) continue;
            const uint32_t tid = warp_id * 32 + lane;
            if (tid >= L->n_threads || L->threads[tid].state == State::Exited) {
                report("synccheck", "%s with mask %#x waits for lane %d, which %s", op_name(pd.op), pd.mask, lane,
                       tid >= L->n_threads ? "does not exist (block size)" : "has exited");
                abort_launch();
            }
        }
}

// Arrives at a warp collective with this lane's inputs; returns once every lane of `mask` has.
uint32_t* warp_collective(uint32_t op, unsigned mask, int mode, int width, int arg, const uint32_t* in, int n_in) {
    Thread* me = T;
    const uint32_t warp_id = me->tid / 32, lane = me->tid % 32;
    Warp& w = L->warps[warp_id];
    if (!(mask >> lane & 1u)) {
        report("synccheck", "%s called by lane %u with a mask %#x that excludes it", op_name(op), lane, mask);
        abort_launch();
    }
    if (width <= 0 || width > 32 || (width & (width - 1))) {
        report("synccheck", "shuffle width %d is not a power of two in [1, 32]", width);
        abort_launch();
    }
    // The pending collective this lane is expected at (its mask names the lane), or a new one.
    size_t slot = w.pending.size();
    for (size_t i = 0; i < w.pending.size(); ++i)
        if ((w.pending[i].mask >> lane & 1u) || (w.pending[i].mask & mask)) {
            slot = i;
            break;
        }
    if (slot == w.pending.size()) {
        w.pending.push_back(Pending{0, op, mask, mode, width});
    } else {
        const Pending& pd = w.pending[slot];
        if (pd.op != op || pd.mask != mask || pd.mode != mode || pd.width != width) {
            report("synccheck",
                   "lanes of warp %u reach different warp collectives: %s (mask %#x) and %s (mask %#x)", warp_id,
                   op_name(pd.op), pd.mask, op_name(op), mask);
            abort_launch();
        }
    }
    memcpy(w.in[lane], in, sizeof(uint32_t) * n_in);
    w.arg[lane] = arg;
    w.pending[slot].arrived |= 1u << lane;
    me->state = State::AtWarp;
    check_pending_warp_lanes(w, warp_id);
    if ((w.pending[slot].arrived & mask) == mask) complete(w, slot, warp_id);
    while (me->state != State::Runnable) to_scheduler();
    return w.out[lane];
}

// ---- memory checks (called by the hooks) ----------------------------------------------------------
// Sized accesses of 2, 4, 8 or 16 bytes must be naturally aligned, as on the GPU.
inline bool is_pow2(size_t n) { return n > 1 && n <= 16 && (n & (n - 1)) == 0; }

void shared_access(uintptr_t a, size_t n, bool write, bool aligned) {
    const uintptr_t base = (uintptr_t)L->smem;
    if (a < base) {
        report("memcheck", "invalid shared %s of %zu bytes starting %zu bytes before shared memory",
               write ? "write" : "read", n, (size_t)(base - a));
        abort_launch();
    }
    const size_t off = a - base;
    const bool in_static = off + n <= L->static_used;
    const bool in_dynamic = off >= STATIC_SHARED_CAP && off + n <= STATIC_SHARED_CAP + L->dynamic_smem;
    if (!in_static && !in_dynamic) {
        if (L->checks & CHECK_MEM) {
            report("memcheck", "invalid shared %s of %zu bytes at offset %zu (%s)", write ? "write" : "read", n, off,
                   off < STATIC_SHARED_CAP ? "beyond the static shared arrays"
                                           : "beyond the launch's dynamic shared memory");
            abort_launch();
        }
        return;
    }
    if ((L->checks & CHECK_MEM) && aligned && is_pow2(n) && (a & (n - 1)) != 0) {
        report("memcheck", "misaligned shared %s of %zu bytes at offset %zu", write ? "write" : "read", n, off);
        abort_launch();
    }
    if (!(L->checks & (CHECK_RACE | CHECK_INIT))) return;
    const uint16_t tid = (uint16_t)T->tid;
    const Warp& warp = L->warps[tid / 32];
    const uint64_t wgen = warp.sync_gen;
    // Ordered by a __syncwarp: `other` is a lane of this warp, and this lane's last __syncwarp,
    // which included `other`, completed after other's access (taken at warp generation `gen`).
    auto warp_ordered = [&](uint16_t other, uint64_t gen) {
        return other / 32 == tid / 32 && warp.lane_sync_gen[tid % 32] > gen &&
               (warp.lane_sync_mask[tid % 32] >> (other % 32) & 1u);
    };
    bool init_reported = false, race_reported = false;
    for (size_t i = 0; i < n; ++i) {
        ShadowByte& s = g_shadow[off + i];
        if (write) {
            if ((L->checks & CHECK_RACE) && !race_reported) {
                const bool waw = s.w_epoch == g_epoch && s.w_tid != tid && !warp_ordered(s.w_tid, s.w_wgen);
                const bool war = s.r_epoch == g_epoch && (s.r_multi || s.r_tid != tid) &&
                                 !(s.r_tid != tid && !s.r_multi && warp_ordered(s.r_tid, s.r_wgen));
                if (waw || war) {
                    race_reported = true;
                    if (waw || s.r_tid != tid)
                        report("racecheck", "%s hazard at shared offset %zu: written here, %s by thread %u since the "
                               "last __syncthreads", waw ? "write-after-write" : "write-after-read", off + i,
                               waw ? "written" : "read", waw ? s.w_tid : s.r_tid);
                    else
                        report("racecheck", "write-after-read hazard at shared offset %zu: written here, read by "
                               "another thread since the last __syncthreads", off + i);
                }
            }
            s.w_epoch = g_epoch;
            s.w_tid = tid;
            s.w_wgen = wgen;
            s.w_pfence = T->proxy_fences;
            s.init_gen = g_block_gen;
        } else {
            if ((L->checks & CHECK_INIT) && s.init_gen != g_block_gen && !init_reported) {
                init_reported = true;
                report("initcheck", "read of %zu bytes of uninitialized shared memory at offset %zu", n, off);
            }
            if ((L->checks & CHECK_RACE) && !race_reported && s.w_epoch == g_epoch && s.w_tid != tid &&
                !warp_ordered(s.w_tid, s.w_wgen)) {
                race_reported = true;
                report("racecheck", "read-after-write hazard at shared offset %zu: read here, written by thread %u "
                       "since the last __syncthreads", off + i, s.w_tid);
            }
            if (s.r_epoch != g_epoch) {
                s.r_epoch = g_epoch;
                s.r_tid = tid;
                s.r_wgen = wgen;
                s.r_multi = 0;
            } else if (s.r_tid != tid) {
                s.r_multi = 1;
            }
        }
    }
}

void global_access(uintptr_t a, size_t n, bool write, bool aligned) {
    Alloc* al = find_alloc(a);
    if (!al || a + n > al->base + al->size) {
        if (L->checks & CHECK_MEM) {
            report("memcheck", "invalid global %s of %zu bytes at %#lx: %s", write ? "write" : "read", n,
                   (unsigned long)a, describe_near(a, n).c_str());
            abort_launch();
        }
        return;  // unchecked mode: host memory the caller owns
    }
    if ((L->checks & CHECK_MEM) && aligned && is_pow2(n) && (a & (n - 1)) != 0) {
        report("memcheck", "misaligned global %s of %zu bytes at %#lx (offset %zu of a %zu-byte allocation)",
               write ? "write" : "read", n, (unsigned long)a, (size_t)(a - al->base), al->size);
        abort_launch();
    }
    uint8_t* init = al->init.data() + (a - al->base);
    if (write) {
        memset(init, 1, n);
    } else if (L->checks & CHECK_INIT) {
        for (size_t i = 0; i < n; ++i)
            if (!init[i]) {
                report("initcheck", "read of %zu bytes at %#lx (offset %zu of a %zu-byte allocation) that were never "
                       "written", n, (unsigned long)a, (size_t)(a - al->base), al->size);
                break;
            }
    }
}

inline void access(const void* p, size_t n, bool write, bool aligned) {
    if (!L || !T || L->aborted || n == 0) return;  // outside kernels (static initializers) nothing is checked
    const uintptr_t a = (uintptr_t)p;
    if (a >= T->stack_lo && a + n <= T->stack_hi) return;  // the thread's locals and parameters
    const uintptr_t sbase = (uintptr_t)L->smem;
    if (a + n > sbase && a < sbase + STATIC_SHARED_CAP + MAX_DYNAMIC_SHARED) {
        shared_access(a, n, write, aligned);
        return;
    }
    global_access(a, n, write, aligned);  // also records writes for a later initcheck
}

const KernelReg* g_kernels = nullptr;

}  // namespace

// ---- runtime entry points used by cuda_emu.h ----------------------------------------------------------
uint3 thread_idx() { return T->idx; }
uint3 block_idx() { return L->bidx; }
dim3 block_dim() { return L->block; }
dim3 grid_dim() { return L->grid; }

void syncthreads() {
    Thread* me = T;
    if ((L->checks & CHECK_SYNC) && L->n_exited > 0 && !L->barrier_reported) {
        L->barrier_reported = true;
        report("synccheck", "__syncthreads reached while %u thread(s) of the block have exited", L->n_exited);
    }
    for (const Pending& pd : L->warps[me->tid / 32].pending)
        if ((pd.mask >> (me->tid % 32) & 1u) && (L->checks & CHECK_SYNC)) {
            report("synccheck", "__syncthreads reached while other lanes of warp %u wait for this one at %s",
                   me->tid / 32, op_name(pd.op));
            abort_launch();
        }
    me->state = State::AtBarrier;
    me->atomics_since_sync = 0;
    L->at_barrier++;
    if (L->at_barrier == L->n_live) release_barrier();
    while (me->state != State::Runnable) to_scheduler();
}

void syncwarp(unsigned mask) { warp_collective(OP_SYNCWARP, mask, 0, 32, 0, nullptr, 0); }

uint32_t shfl32(unsigned mask, uint32_t value, int arg, int width, int mode) {
    return warp_collective(OP_SHFL, mask, mode, width, arg, &value, 1)[0];
}

uint32_t vote(unsigned mask, int predicate, int mode) {
    const uint32_t p = predicate != 0;
    return warp_collective(OP_VOTE, mask, mode, 32, 0, &p, 1)[0];
}

static void mma(uint32_t op, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
    uint32_t in[10];
    memcpy(in, a, 16);
    memcpy(in + 4, b, 8);
    memcpy(in + 6, c, 16);
    const uint32_t* out = warp_collective(op, 0xffffffffu, 0, 32, 0, in, 10);
    memcpy(d, out, 16);
}
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
    mma(OP_MMA_BF16, d, a, b, c);
}
void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
    mma(OP_MMA_F16, d, a, b, c);
}

void ldmatrix(uint32_t* r, int num, bool trans, const void* row) {
    uint32_t in[2];
    const uint64_t addr = (uint64_t)(uintptr_t)row;
    memcpy(in, &addr, 8);
    const uint32_t* out = warp_collective(OP_LDMATRIX, 0xffffffffu, num | (trans ? 256 : 0), 32, 0, in, 2);
    memcpy(r, out, 4 * num);
}

// cp.async.cg.shared.global [dst], [src], 16, src_size (16, or 0 to zero-fill): checked when
// issued (the global read, the shared write's bounds, alignment and races since the last barrier);
// its destination reads as uninitialized until a cp.async.wait_group completes it, so a read
// before the wait is an initcheck report (on a GPU it would see stale data). The bytes land then.
void cp_async_16(void* dst, const void* src, bool valid) {
    if (!L || L->aborted) return;
    const uintptr_t sbase = (uintptr_t)L->smem, a = (uintptr_t)dst;
    if (a < sbase || a + 16 > sbase + STATIC_SHARED_CAP + MAX_DYNAMIC_SHARED) {
        report("memcheck", "cp.async destination %#lx is not shared memory", (unsigned long)a);
        abort_launch();
    }
    if (valid) global_access((uintptr_t)src, 16, false, true);
    shared_access(a, 16, true, true);
    for (size_t i = 0; i < 16; ++i) g_shadow[a - sbase + i].init_gen = ~0ull;
    T->async.push_back(AsyncCopy{dst, valid ? src : nullptr, T->async_commits});
}

void cp_async_commit() { ++T->async_commits; }

// Completes every copy of the groups committed before the newest `pending`.
void cp_async_wait(int pending) {
    Thread* me = T;
    const uint64_t done_below = me->async_commits >= (uint64_t)pending ? me->async_commits - pending : 0;
    const uint32_t checks = L->checks;
    L->checks &= ~CHECK_RACE;  // raced at issue; the landing is this thread's own write
    std::vector<AsyncCopy> keep;
    for (const AsyncCopy& c : me->async) {
        if (c.group >= done_below) {
            keep.push_back(c);
            continue;
        }
        unsigned char bytes[16] = {};
        if (c.src) memcpy(bytes, c.src, 16);
        shared_access((uintptr_t)c.dst, 16, true, true);
        memcpy(c.dst, bytes, 16);
    }
    L->checks = checks;
    me->async.swap(keep);
}

uint32_t shared_window_addr(const void* p) {
    const uintptr_t a = (uintptr_t)p, base = (uintptr_t)L->smem;
    if (a < base || a >= base + STATIC_SHARED_CAP + MAX_DYNAMIC_SHARED) {
        report("memcheck", "%#lx is not a shared memory address", (unsigned long)a);
        abort_launch();
    }
    return (uint32_t)(a - base);
}

void wgmma_fence() { T->wgmma_fenced = true; }
void wgmma_commit() { ++T->wgmma_commits; }
void fence_proxy_async() { ++T->proxy_fences; }

static void wgmma(float* d, int n, const uint32_t (&a)[4], uint64_t desc_b, bool accumulate, int mode) {
    if (!L || L->aborted) return;
    if ((L->checks & CHECK_SYNC) && !T->wgmma_fenced) {
        report("synccheck", "wgmma.mma_async with no wgmma.fence since the thread's last wgmma.wait_group (or start)");
        abort_launch();
    }
    uint32_t in[10] = {a[0], a[1], a[2], a[3], 0, 0, 0, 0, accumulate ? 1u : 0u, 0};
    memcpy(in + 4, &desc_b, 8);
    memcpy(in + 6, &d, sizeof d);
    warp_collective(OP_WGMMA, 0xffffffffu, n | mode, 32, 0, in, 10);
    for (int i = 0; i < n / 2; ++i) memcpy(&d[i], &WGMMA_POISON, 4);  // the result lands at the wait
}
void wgmma_rs(float* d, int n, const uint32_t (&a)[4], uint64_t desc_b, bool accumulate, bool trans_b, bool bf16) {
    wgmma(d, n, a, desc_b, accumulate, (trans_b ? 256 : 0) | (bf16 ? 512 : 0));
}
void wgmma_ss(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool accumulate, bool trans_b, bool bf16) {
    const uint32_t a[4] = {(uint32_t)desc_a, (uint32_t)(desc_a >> 32), 0, 0};
    wgmma(d, n, a, desc_b, accumulate, (trans_b ? 256 : 0) | (bf16 ? 512 : 0) | 1024);
}

// Completes the wgmma groups committed before the newest `pending`: their results land in the
// accumulators; a shared byte they read that changed since is a race with the async proxy.
void wgmma_wait(int pending) {
    Thread* me = T;
    const uint64_t done_below = me->wgmma_commits >= (uint64_t)pending ? me->wgmma_commits - pending : 0;
    std::vector<WgmmaReads> pending_reads;
    for (WgmmaReads& rd : me->wgmma_reads) {
        if (rd.group >= done_below) {
            pending_reads.push_back(std::move(rd));
            continue;
        }
        for (const auto& row : rd.rows)
            if ((L->checks & CHECK_RACE) && memcmp(L->smem + row.first, row.second.data(), 16) != 0) {
                report("racecheck", "shared offset %zu, read by a wgmma.mma_async, was overwritten before its "
                       "wgmma.wait_group", row.first);
                break;
            }
    }
    me->wgmma_reads.swap(pending_reads);
    std::vector<WgmmaInFlight> keep;
    for (WgmmaInFlight& r : me->wgmma) {
        if (r.group >= done_below) {
            keep.push_back(std::move(r));
            continue;
        }
        for (int i = 0; i < r.n_acc; ++i)
            if ((L->checks & CHECK_SYNC) && memcmp(&r.acc[i], &WGMMA_POISON, 4) != 0) {
                report("synccheck", "accumulator %d of a wgmma.mma_async was written before its wgmma.wait_group", i);
                break;
            }
        memcpy(r.acc, r.d, sizeof(float) * r.n_acc);
    }
    me->wgmma.swap(keep);
    me->wgmma_fenced = false;
}

void* static_shared(const void* site, size_t bytes, size_t align) {
    for (auto& s : L->sites)
        if (s.first == site) return L->smem + s.second;
    if (align < 16) align = 16;
    const size_t off = (L->static_used + align - 1) / align * align;
    if (off + bytes > STATIC_SHARED_CAP) {
        report("memcheck", "static shared memory of the block exceeds %zu bytes", STATIC_SHARED_CAP);
        abort_launch();
    }
    memset(L->smem + off, 0xA5, bytes);  // poison: initcheck reports reads before writes
    L->static_used = off + bytes;
    L->sites.emplace_back(site, off);
    return L->smem + off;
}

void* dynamic_shared() { return L->smem + STATIC_SHARED_CAP; }

// Atomics are checked like plain accesses, except that they never race with each other.
static unsigned* atomic_target(unsigned* p) {
    if (++T->atomics_since_sync > MAX_ATOMICS_WITHOUT_SYNC) {
        report("synccheck", "%llu atomics without a barrier or warp collective: a spin-wait on another thread or "
               "block, which cannot make progress when blocks run one after another",
               (unsigned long long)MAX_ATOMICS_WITHOUT_SYNC);
        abort_launch();
    }
    const uint32_t checks = L->checks;
    L->checks &= ~CHECK_RACE;
    access(p, 4, false, true);
    access(p, 4, true, true);
    L->checks = checks;
    return p;
}
unsigned atomic_or_u32(unsigned* p, unsigned v) { unsigned o = *atomic_target(p); *p = o | v; return o; }
unsigned atomic_and_u32(unsigned* p, unsigned v) { unsigned o = *atomic_target(p); *p = o & v; return o; }
unsigned atomic_add_u32(unsigned* p, unsigned v) { unsigned o = *atomic_target(p); *p = o + v; return o; }
int atomic_add_i32(int* p, int v) {
    unsigned o = *atomic_target(reinterpret_cast<unsigned*>(p));
    *p = (int)(o + (unsigned)v);
    return (int)o;
}
unsigned atomic_max_u32(unsigned* p, unsigned v) { unsigned o = *atomic_target(p); *p = o > v ? o : v; return o; }
unsigned atomic_cas_u32(unsigned* p, unsigned c, unsigned v) {
    unsigned o = *atomic_target(p);
    if (o == c) *p = v;
    return o;
}

bool register_kernel(KernelReg* reg) {
    reg->next = const_cast<KernelReg*>(g_kernels);
    g_kernels = reg;
    return true;
}

}  // namespace prefk_emu

using namespace prefk_emu;

// build.rs's generated table of module anchors: referencing it links every emulated module.
extern "C" const char* const prefk_emu_module_anchors[];
extern "C" const void* volatile prefk_emu_keep_modules;
const void* volatile prefk_emu_keep_modules = prefk_emu_module_anchors;

// ---- instrumentation hooks (gcc/clang -fsanitize=thread call these for every access) ---------------
extern "C" {
#define PREFK_EMU_HOOKS(N)                                                                   \
    void __tsan_read##N(void* p) { access(p, N, false, true); }                              \
    void __tsan_write##N(void* p) { access(p, N, true, true); }                              \
    void __tsan_unaligned_read##N(void* p) { access(p, N, false, false); }                   \
    void __tsan_unaligned_write##N(void* p) { access(p, N, true, false); }
PREFK_EMU_HOOKS(1)
PREFK_EMU_HOOKS(2)
PREFK_EMU_HOOKS(4)
PREFK_EMU_HOOKS(8)
PREFK_EMU_HOOKS(16)
void __tsan_read_range(void* p, unsigned long n) { access(p, n, false, false); }
void __tsan_write_range(void* p, unsigned long n) { access(p, n, true, false); }
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_read(void**) {}
void __tsan_vptr_update(void**, void*) {}
void* __tsan_memcpy(void* d, const void* s, unsigned long n) {
    access(s, n, false, false);
    access(d, n, true, false);
    return memcpy(d, s, n);
}
void* __tsan_memmove(void* d, const void* s, unsigned long n) {
    access(s, n, false, false);
    access(d, n, true, false);
    return memmove(d, s, n);
}
void* __tsan_memset(void* d, int c, unsigned long n) {
    access(d, n, true, false);
    return memset(d, c, n);
}

// ---- C API used by the Rust backend (src/runtime/emulator.rs) ---------------------------------------
const char* prefk_emu_last_error() { return g_last_error.c_str(); }

size_t prefk_emu_kernel_count() {
    size_t n = 0;
    for (const KernelReg* k = g_kernels; k; k = k->next) ++n;
    return n;
}

const char* prefk_emu_kernel_name(size_t i) {
    const KernelReg* k = g_kernels;
    while (k && i--) k = k->next;
    return k ? k->name : nullptr;
}

// The parameter-struct size and __launch_bounds__ of kernel `name`; -1 when there is none.
int prefk_emu_kernel_info(const char* name, size_t* params_size, int* max_threads) {
    for (const KernelReg* k = g_kernels; k; k = k->next)
        if (strcmp(k->name, name) == 0) {
            *params_size = k->params_size;
            *max_threads = k->max_threads;
            return 0;
        }
    return -1;
}

void* prefk_emu_alloc(size_t bytes) {
    std::lock_guard<std::recursive_mutex> lock(g_lock);
    const size_t body = (bytes + REDZONE - 1) / REDZONE * REDZONE;
    if (bytes > ((size_t)1 << 40)) {
        g_last_error = "allocation of " + std::to_string(bytes) + " bytes exceeds the emulator's 1 TiB limit";
        return nullptr;
    }
    unsigned char* raw = static_cast<unsigned char*>(aligned_alloc(REDZONE, body + 2 * REDZONE));
    if (!raw) {
        g_last_error = "out of host memory allocating " + std::to_string(bytes) + " bytes";
        return nullptr;
    }
    memset(raw, 0xCD, body + 2 * REDZONE);  // garbage, as fresh device memory
    Alloc* al = nullptr;
    try {  // no C++ exception may cross the C ABI
        al = new Alloc{(uintptr_t)(raw + REDZONE), bytes, raw, std::vector<uint8_t>(bytes, 0)};
        if (bytes == 0) al->size = 0;
        g_allocs[al->base] = al;
    } catch (const std::exception& e) {
        delete al;
        free(raw);
        g_last_error = std::string("out of host memory for the shadow state of ") + std::to_string(bytes) +
                       " bytes: " + e.what();
        return nullptr;
    }
    return raw + REDZONE;
}

// Registers caller-owned host memory [p, p + bytes) as an emulator allocation (a CPU tensor handed
// to the C ABI), so kernels may use it with every check: accesses outside it are reported, and
// with initialized == 0 reads before a write are (initcheck on outputs). There are no redzones:
// a neighbouring registered block is not a redzone. Ranges may not overlap a live allocation.
// Unregister with prefk_emu_unregister_host, which leaves the memory to its owner.
int prefk_emu_register_host(void* p, size_t bytes, int initialized) {
    std::lock_guard<std::recursive_mutex> lock(g_lock);
    const uintptr_t a = (uintptr_t)p;
    if (!p || bytes == 0) {
        g_last_error = "register_host: null pointer or empty range";
        return -1;
    }
    if (a + bytes < a) {
        g_last_error = "register_host: the range wraps around the address space";
        return -1;
    }
    auto it = g_allocs.lower_bound(a);
    bool overlaps = it != g_allocs.end() && it->second->base < a + bytes;
    if (!overlaps && it != g_allocs.begin()) {
        Alloc* prev = std::prev(it)->second;
        overlaps = prev->base + std::max<size_t>(prev->size, 1) > a;
    }
    if (overlaps) {
        g_last_error = "register_host: the range overlaps a live emulator allocation (" + describe_near(a, bytes) + ")";
        return -1;
    }
    if (bytes > ((size_t)1 << 40)) {
        g_last_error = "register_host: " + std::to_string(bytes) + " bytes exceed the emulator's 1 TiB limit";
        return -1;
    }
    try {  // no C++ exception may cross the C ABI
        g_allocs[a] = new Alloc{a, bytes, nullptr, std::vector<uint8_t>(bytes, initialized ? 1 : 0)};
    } catch (const std::exception& e) {
        g_last_error = std::string("register_host: out of host memory for the shadow state: ") + e.what();
        return -1;
    }
    return 0;
}

int prefk_emu_unregister_host(void* p) {
    std::lock_guard<std::recursive_mutex> lock(g_lock);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end() || it->second->raw != nullptr) {
        g_last_error = "unregister_host of a pointer that prefk_emu_register_host did not register";
        return -1;
    }
    delete it->second;
    g_allocs.erase(it);
    return 0;
}

int prefk_emu_free(void* p) {
    std::lock_guard<std::recursive_mutex> lock(g_lock);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end()) {
        g_last_error = "free of a pointer that is not an emulator allocation";
        return -1;
    }
    if (it->second->raw == nullptr) {
        g_last_error = "free of registered host memory (use prefk_emu_unregister_host)";
        return -1;
    }
    free(it->second->raw);
    delete it->second;
    g_allocs.erase(it);
    return 0;
}

// Copies `n` bytes; every emulator-side range must lie inside one allocation. kind: 0 host to
// device, 1 device to host, 2 device to device. Written device bytes become initialized.
int prefk_emu_copy(void* dst, const void* src, size_t n, int kind) {
    std::lock_guard<std::recursive_mutex> lock(g_lock);
    if (n == 0) return 0;
    auto inside = [](const void* p, size_t len) -> Alloc* {
        Alloc* al = find_alloc((uintptr_t)p);
        return al && (uintptr_t)p + len <= al->base + al->size ? al : nullptr;
    };
    Alloc* d = kind != 1 ? inside(dst, n) : nullptr;
    if (kind != 1 && !d) {
        g_last_error = "copy destination is not inside one emulator allocation: " + describe_near((uintptr_t)dst, n);
        return -1;
    }
    if (kind != 0 && !inside(src, n)) {
        g_last_error = "copy source is not inside one emulator allocation: " + describe_near((uintptr_t)src, n);
        return -1;
    }
    memmove(dst, src, n);
    if (d) {
        uint8_t* di = d->init.data() + ((uintptr_t)dst - d->base);
        if (kind == 2) {  // device to device: the destination is as initialized as the source
            Alloc* sa = find_alloc((uintptr_t)src);
            memmove(di, sa->init.data() + ((uintptr_t)src - sa->base), n);
        } else {
            memset(di, 1, n);
        }
    }
    return 0;
}

int prefk_emu_memset(void* dst, int byte, size_t n) {
    std::lock_guard<std::recursive_mutex> lock(g_lock);
    if (n == 0) return 0;
    Alloc* d = find_alloc((uintptr_t)dst);
    if (!d || (uintptr_t)dst + n > d->base + d->size) {
        g_last_error = "memset destination is not inside one emulator allocation: " + describe_near((uintptr_t)dst, n);
        return -1;
    }
    memset(dst, byte, n);
    memset(d->init.data() + ((uintptr_t)dst - d->base), 1, n);
    return 0;
}

// Runs kernel `name` over the grid. Returns 0 on success, 1 when a checker reported an error (the
// reports are in prefk_emu_last_error()), 2 for an invalid launch (unknown kernel, bad
// configuration, parameter size mismatch).
int prefk_emu_launch(const char* name, const uint32_t grid[3], const uint32_t block[3], size_t dynamic_smem,
                     const void* params, size_t params_size, uint32_t checks) {
    std::lock_guard<std::recursive_mutex> lock(g_lock);
    const KernelReg* k = g_kernels;
    while (k && strcmp(k->name, name) != 0) k = k->next;
    char buf[512];
    if (!k) {
        snprintf(buf, sizeof buf, "no emulated kernel named `%s`", name);
        g_last_error = buf;
        return 2;
    }
    const uint64_t threads = (uint64_t)block[0] * block[1] * block[2];
    const char* bad = nullptr;
    if (params_size != k->params_size) bad = "parameter size does not match the kernel's";
    else if (threads == 0 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0) bad = "empty grid or block";
    else if (threads > 1024 || block[2] > 64) bad = "block larger than 1024 threads (or block.z > 64)";
    else if (threads > (uint64_t)k->max_threads) bad = "block larger than the kernel's __launch_bounds__";
    else if (grid[1] > 65535 || grid[2] > 65535 || grid[0] > 0x7fffffffu) bad = "grid dimension out of range";
    else if (dynamic_smem > MAX_DYNAMIC_SHARED) bad = "dynamic shared memory above 227 KiB";
    if (bad) {
        snprintf(buf, sizeof buf, "invalid launch of `%s` (grid %u,%u,%u block %u,%u,%u, %zu B dynamic smem): %s",
                 name, grid[0], grid[1], grid[2], block[0], block[1], block[2], dynamic_smem, bad);
        g_last_error = buf;
        return 2;
    }
    while (g_stacks.size() < threads) {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        void* m = mmap(nullptr, FIBER_STACK + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (m == MAP_FAILED) {
            g_last_error = "could not map a fiber stack";
            return 2;
        }
        mprotect(m, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
        g_stacks.push_back(Stack{static_cast<unsigned char*>(m) + page});
    }
    const size_t smem_bytes = STATIC_SHARED_CAP + MAX_DYNAMIC_SHARED;
    if (g_smem.size() < smem_bytes) {
        g_smem.assign(smem_bytes, 0);
        g_shadow.assign(smem_bytes, ShadowByte{0, 0, 0, 0, 0, 0, 0, 0, 0});
    }
    Launch launch;
    launch.kernel = k;
    launch.grid = dim3(grid[0], grid[1], grid[2]);
    launch.block = dim3(block[0], block[1], block[2]);
    launch.dynamic_smem = dynamic_smem;
    launch.checks = checks;
    launch.params = params;
    launch.params_size = params_size;
    launch.n_threads = (uint32_t)threads;
    launch.smem = g_smem.data();
    launch.aborted = false;
    launch.n_reports = 0;
    launch.n_suppressed = 0;
    L = &launch;
    for (uint32_t z = 0; z < grid[2] && !launch.aborted; ++z)
        for (uint32_t y = 0; y < grid[1] && !launch.aborted; ++y)
            for (uint32_t x = 0; x < grid[0] && !launch.aborted; ++x) {
                launch.bidx = {x, y, z};
                run_block();
            }
    L = nullptr;
    T = nullptr;
    if (launch.n_reports == 0) return 0;
    if (launch.n_suppressed) launch.report += "(" + std::to_string(launch.n_suppressed) + " more reports suppressed)\n";
    if (launch.aborted) launch.report += "(launch stopped at the first invalid access or hang)\n";
    g_last_error = launch.report;
    return 1;
}

}  // extern "C"
