//! `starling-bench`: loads Starling and nats-server with the same scenarios
//! and reports them side by side. See `starling_bench::harness`.

use std::process::ExitCode;

use clap::Parser;
use starling_bench::harness::{self, cli::Options};

// The allocator the `starling` binary uses, so the in-process bus target
// runs as the node's bus does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let options = Options::parse();
    match harness::run(&options) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("starling-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
