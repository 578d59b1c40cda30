//! `starling demo`: see [`crate::demo`].

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use super::DemoArgs;
use crate::demo::DemoOptions;

pub(super) fn run(args: DemoArgs) -> Result<ExitCode, Box<dyn Error>> {
    let duration = Duration::try_from_secs_f64(args.duration)
        .map_err(|_| format!("--duration {}: not a number of seconds", args.duration))?;
    let options = DemoOptions {
        duration,
        rate: args.rate,
    };
    crate::demo::run(&options, &mut std::io::stdout().lock())?;
    Ok(ExitCode::SUCCESS)
}
