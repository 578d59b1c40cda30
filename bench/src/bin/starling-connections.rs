//! `starling-connections`: how fast a `starling node` accepts connections
//! and what an idle one costs it. See `starling_bench::harness::connections`.

use std::process::ExitCode;

use clap::Parser;
use starling_bench::harness::connections::{self, Options};

fn main() -> ExitCode {
    match connections::run(&Options::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("starling-connections: {error}");
            ExitCode::FAILURE
        }
    }
}
