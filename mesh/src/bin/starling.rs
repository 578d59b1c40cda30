//! The `starling` binary: see `starling --help`.

use std::process::ExitCode;

// mimalloc's v2 line: the v3 bundled by default in mimalloc 0.1.52 crashes
// under multi-threaded load (microsoft/mimalloc#1287).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Transparent huge pages off (unless MIMALLOC_ALLOW_THP is set) before
// mimalloc's constructor touches its first arena: each first touch of a huge
// page zeroed 2 MiB, 10-30 ms stalls over a fresh node's first subscriptions
// (BENCHMARKS.md, interest convergence). `cli::main` logs what it did.
starling_transport::disable_transparent_huge_pages_before_main!();

fn main() -> ExitCode {
    starling_mesh::cli::main()
}
