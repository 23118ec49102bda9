//! The `tessera` binary: parse the command line and run it (see `cli`).

/// mimalloc instead of glibc's allocator: under load, sled's page copies
/// and tonic's buffers made glibc's `malloc`/`free` (and their arena
/// consolidation) about a fifth of the server's CPU; see BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tessera::cli::main()
}
