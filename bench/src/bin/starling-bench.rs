//! `starling-bench`: loads Starling and nats-server with the same scenarios
//! and reports them side by side. See `starling_bench::harness`.

use std::process::ExitCode;

use clap::Parser;
use starling_bench::harness::{self, cli::Options};
use starling_transport::process;

// The allocator the `starling` binary uses, set up as it is (transparent
// huge pages off before mimalloc starts, unless MIMALLOC_ALLOW_THP is set),
// so the in-process bus target runs as the node's bus does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

starling_transport::disable_transparent_huge_pages_before_main!();

fn main() -> ExitCode {
    if let Err(error) = process::huge_pages_at_start() {
        eprintln!("starling-bench: transparent huge pages stay on: {error}");
    }
    let options = Options::parse();
    match harness::run(&options) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("starling-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
