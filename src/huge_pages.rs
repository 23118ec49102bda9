//! The server runs without transparent huge pages.
//!
//! Where the kernel backs anonymous memory with 2 MiB pages on first touch
//! (`/sys/kernel/mm/transparent_hugepage/enabled` = `always`, Debian's
//! default), every fresh region of mimalloc's arenas and fjall's write
//! buffers is resident 2 MiB at a time and zeroed 2 MiB at a time. Measured
//! on this machine after 8 s of unary tokenize on fjall (BENCHMARKS.md):
//! 256–394 MiB resident with huge pages, 141–176 MiB without, and
//! throughput within noise. So `serve` opts its process out
//! (`PR_SET_THP_DISABLE`, which its threads share), as databases such as
//! Redis and MongoDB advise.

/// Opts this process out of transparent huge pages. Where the kernel
/// refuses, the server runs with them and says so at WARN.
pub fn disable() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %e, "transparent huge pages stay on");
    }
}
