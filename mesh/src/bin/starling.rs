//! The `starling` binary: see `starling --help`.

use std::process::ExitCode;

// mimalloc's v2 line: the v3 bundled by default in mimalloc 0.1.52 crashes
// under multi-threaded load (microsoft/mimalloc#1287).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    starling_mesh::cli::main()
}
