//! Software prefetch for the firing path: a hint that moves a key's state into the cache
//! before the engine reaches it.
//!
//! The sparse workload (many keys, about 3.3 windows fired per event) is bound by memory
//! latency, not by arithmetic: each fired window first touches a key's slot, its panes and
//! its rule state, all cold (`perf annotate`: most of `window_into` is the first load of a
//! pane). The timers due at one time are known in advance, so the engine asks for the state
//! of the keys a few timers ahead while it evaluates the current one.
//!
//! This is the workspace's only `unsafe` (its lints deny it elsewhere): `_mm_prefetch` is an
//! SSE intrinsic (part of every x86-64 CPU) and a pure hint: it never dereferences the pointer
//! architecturally, cannot fault, and does not change what any later load returns. On other
//! architectures the hint is a no-op.

/// Bytes per cache line on the targets Vigil runs on.
const LINE: usize = 64;

/// Asks for the cache lines holding the `bytes` bytes at `p` (none when `bytes` is 0): one
/// hint per 64 bytes and one for the last byte, whose line the others miss when `p` is not
/// line-aligned.
#[inline(always)]
pub(super) fn prefetch<T>(p: *const T, bytes: usize) {
    let base = p.cast::<i8>();
    for off in (0..bytes).step_by(LINE) {
        line(base.wrapping_add(off));
    }
    if bytes > 0 {
        line(base.wrapping_add(bytes - 1)); // often a line already asked for: a no-op then
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(always)]
fn line(p: *const i8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: `prefetch` is a hint: it performs no architectural memory access, so any
    // pointer value is allowed (dangling or null included) and no fault can result. The only
    // requirement of the intrinsic is the `sse` target feature, which every x86-64 CPU has
    // (it is in the x86-64 baseline the target is compiled for).
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn line(_p: *const i8) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The safety argument of `line`: a hint never faults, whatever the pointer. A load
    /// through these pointers would kill the test process (SIGSEGV).
    #[test]
    fn null_and_wild_pointers_do_not_fault() {
        let v = vec![7u64; 64];
        prefetch(v.as_ptr(), std::mem::size_of_val(v.as_slice()));
        prefetch(std::ptr::null::<u64>(), 256);
        prefetch(v.as_ptr().wrapping_add(1 << 40), 64);
        prefetch(usize::MAX as *const u8, 4096);
    }
}
