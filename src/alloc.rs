//! glibc malloc, tuned for a server that allocates large short-lived buffers (rasters, tensors)
//! from many threads: the arenas are capped (`server.malloc_arenas`: each thread arena keeps the
//! high-water mark of what ran on it), and freed memory is handed back to the OS when the
//! pipeline is idle (`malloc_trim`), so resident memory follows the load instead of its peak.
//! Measured against glibc's defaults and mimalloc with `gpubackend bench soak` (README, Memory).
//! No-ops where the C library is not glibc.

/// Caps glibc's malloc arenas at `n` (0: glibc's default, 8 × cores). Call before threads start.
pub fn cap_arenas(n: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if n > 0 {
        // SAFETY: mallopt only sets an allocator parameter; called before other threads allocate.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, n.min(i32::MAX as usize) as i32);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}

/// Returns the free memory of every arena to the OS; whether any was returned.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim is thread-safe (it takes each arena's lock).
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn trimming_after_a_large_free_is_safe() {
        let big = vec![1u8; 64 << 20];
        drop(std::hint::black_box(big));
        super::trim();
    }
}
