//! `starling-connections`: how fast a `starling node` accepts connections,
//! and what an idle one costs it (issue 14: at least 5,000 accepted per
//! second, at most 16 KiB each).
//!
//! For each backend and variant, each run starts a fresh node (release
//! build, next to this executable), opens `--connections` connections from
//! `--threads` threads at once (see [`open`]) and reports
//!
//! - connections/s: connections over the time until the node holds them
//!   all: for `silent` ones, until the node's descriptors (`/proc/PID/fd`,
//!   read every few milliseconds; not `/v1/node`, whose report walks every
//!   connection and subscription) have grown by their count; for real
//!   clients, until every one has read the node's answers (`HELLO`, and `OK`
//!   to its `SUB`);
//! - KiB per connection: the growth of the node's resident memory (`VmRSS`)
//!   from before the first connection to after the last, over their count.
//!
//! Figures are medians over `--runs` runs. The clients run on the same
//! machine as the node, so on a small one they share its cores: the rates
//! are what node and clients do together, a floor for the node alone.

pub mod open;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Deserialize;

use self::open::{Opened, Variant};
use super::error::{Context, Error, Result};
use super::report::table::{Align, markdown};
use super::targets::process::Scratch;
use super::targets::starling::Node;
use super::targets::{monitor, starling_binary};

/// How often the node's descriptors are counted while silent connections
/// open.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long the node is left to close an HTTP connection, or to set up
/// the sessions of connections already accepted.
const SETTLE: Duration = Duration::from_millis(200);

/// How long the node may take to accept every connection.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Descriptors this process needs besides the connections it opens.
const DESCRIPTORS_RESERVED: u64 = 64;

/// Measures how fast a `starling node` accepts connections opened from
/// several threads at once, and how much memory each idle one costs it, on
/// each I/O backend, for connections that never say HELLO, for real
/// clients that complete it and go quiet, and for real clients that
/// subscribe and go quiet. Each run starts a fresh node.
#[derive(Debug, Parser)]
#[command(name = "starling-connections", version, after_help = USAGE)]
pub struct Options {
    /// Connections per run
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,

    /// Threads opening them, each its share, one connection after another
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: u64,

    /// I/O backends, comma-separated: uring, epoll
    #[arg(long, value_delimiter = ',', default_value = "uring,epoll")]
    pub io_backend: Vec<Backend>,

    /// Variants, comma-separated: silent (never say HELLO), hello (complete
    /// the handshake, then idle), subscribed (as hello, and subscribe to a
    /// subject of their own)
    #[arg(long, value_delimiter = ',', default_value = "silent,hello,subscribed")]
    pub variant: Vec<Variant>,

    /// Runs of each backend and variant; figures are their medians
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,

    /// The starling binary to start nodes with [default: `starling` next to
    /// this executable, where cargo builds both]
    #[arg(long, value_name = "PATH")]
    pub starling_bin: Option<PathBuf>,
}

/// How to build and run it, after the options in `--help`.
const USAGE: &str = "\
Build it and the node into one directory (it looks for `starling` next to itself):
    cargo build --release -p starling-bench -p starling-mesh
    target/release/starling-connections --connections 5000 --runs 3";

/// A node's I/O backend, as `--io-backend` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// io_uring.
    Uring,
    /// epoll.
    Epoll,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Measured {
    per_second: f64,
    bytes_per_connection: f64,
}

/// `/v1/node`, the part read here.
#[derive(Debug, Deserialize)]
struct NodeView {
    connections: u64,
}

/// Runs what `options` ask for and prints a table of medians.
pub fn run(options: &Options) -> Result<ExitCode> {
    let binary = starling_binary(options.starling_bin.as_deref())?;
    if !binary.is_file() {
        return Err(Error::new(format!(
            "no starling binary at {} (build it with `cargo build --release -p starling-mesh`, \
             or pass --starling-bin PATH)",
            binary.display()
        )));
    }
    let descriptors = starling_transport::process::raise_open_files_limit()
        .context("raising the open-files limit")?;
    if descriptors.now < options.connections + DESCRIPTORS_RESERVED {
        return Err(Error::new(format!(
            "the open-files limit ({}) is too low for {} connections; raise the hard limit \
             (ulimit -Hn)",
            descriptors.now, options.connections
        )));
    }
    println!(
        "{} connections from {} threads, {} runs each; the clients share the machine with the node",
        options.connections, options.threads, options.runs
    );
    let mut rows = Vec::new();
    for &backend in &options.io_backend {
        for &variant in &options.variant {
            let mut runs = Vec::new();
            for run in 1..=options.runs {
                let measured = measure(&binary, backend, variant, options).context(format!(
                    "{} {} run {run}",
                    backend.name(),
                    variant.name()
                ))?;
                println!(
                    "{} {} run {run}: {:.0} connections/s, {:.2} KiB per connection",
                    backend.name(),
                    variant.name(),
                    measured.per_second,
                    measured.bytes_per_connection / 1024.0
                );
                runs.push(measured);
            }
            rows.push(row(backend, variant, &runs));
        }
    }
    println!("\n{}", table(&rows));
    Ok(ExitCode::SUCCESS)
}

/// One run: a fresh node, the connections, its memory before and after.
fn measure(
    binary: &std::path::Path,
    backend: Backend,
    variant: Variant,
    options: &Options,
) -> Result<Measured> {
    let scratch = Scratch::create()?;
    let config = scratch.path().join("node.toml");
    // Room for every connection, and silent ones kept for the whole run.
    std::fs::write(
        &config,
        format!(
            "[limits]\nconnections_max = {}\nhandshake_timeout_ms = 600000\n",
            options.connections
        ),
    )
    .context(format!("writing {}", config.display()))?;
    let node = Node::start_alone(
        binary,
        backend.name(),
        &[OsStr::new("--config"), config.as_os_str()],
    )?;
    let address: SocketAddr = node
        .tcp()
        .parse()
        .context(format!("the node's address {}", node.tcp()))?;
    // The HTTP endpoint's first request sets up what every later one uses:
    // not a connection's cost. Its connection is closed a moment after the
    // answer: counted among the node's descriptors, it would never go.
    let _: NodeView = monitor::get(node.http(), "/v1/node")?;
    std::thread::sleep(SETTLE);
    let before = node.usage()?.rss_bytes;
    let descriptors = descriptors(node.pid())?;
    let count = options.connections as usize;
    let start = Instant::now();
    let (opened, held) = std::thread::scope(|scope| {
        let opening = scope.spawn(|| open::open(address, count, options.threads as usize, variant));
        let held = (variant == Variant::Silent)
            .then(|| await_descriptors(node.pid(), descriptors + count, start))
            .transpose();
        let opened = opening
            .join()
            .unwrap_or_else(|_| Err(Error::new("the opening thread panicked")));
        (opened, held)
    });
    let Opened {
        connections,
        elapsed,
    } = opened?;
    let elapsed = held?.unwrap_or(elapsed);
    // io_uring accepts into the descriptor table before the node's loop
    // makes the connection's session.
    std::thread::sleep(SETTLE);
    let after = node.usage()?.rss_bytes;
    // Every one counted: none was refused or lost.
    let view: NodeView = monitor::get(node.http(), "/v1/node")?;
    if view.connections != options.connections {
        return Err(Error::new(format!(
            "the node counts {} connections, not {}",
            view.connections, options.connections
        )));
    }
    drop(connections);
    node.stop()?;
    Ok(Measured {
        per_second: options.connections as f64 / elapsed.as_secs_f64(),
        bytes_per_connection: after.saturating_sub(before) as f64 / options.connections as f64,
    })
}

/// How many descriptors process `pid` has open.
fn descriptors(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .context(format!("reading {dir}"))?
        .count())
}

/// Waits until process `pid` has `count` descriptors open; returns how long
/// after `start` it did.
fn await_descriptors(pid: u32, count: usize, start: Instant) -> Result<Duration> {
    loop {
        let open = descriptors(pid)?;
        if open >= count {
            return Ok(start.elapsed());
        }
        if start.elapsed() > ACCEPT_TIMEOUT {
            return Err(Error::new(format!(
                "the node had {open} of {count} descriptors open after {ACCEPT_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A backend and variant's medians, and every run's figures.
fn row(backend: Backend, variant: Variant, runs: &[Measured]) -> Vec<String> {
    let figures = |figure: fn(&Measured) -> f64, format: fn(f64) -> String| {
        let mut values: Vec<f64> = runs.iter().map(figure).collect();
        let each = values.iter().map(|&v| format(v)).collect::<Vec<_>>();
        values.sort_by(f64::total_cmp);
        (format(values[values.len() / 2]), each.join(", "))
    };
    let (rate, rate_runs) = figures(|m| m.per_second, |value| format!("{value:.0}"));
    let (memory, memory_runs) = figures(
        |m| m.bytes_per_connection,
        |bytes| format!("{:.2}", bytes / 1024.0),
    );
    vec![
        backend.name().to_owned(),
        variant.name().to_owned(),
        rate,
        rate_runs,
        memory,
        memory_runs,
    ]
}

fn table(rows: &[Vec<String>]) -> String {
    use Align::{Left, Right};
    markdown(
        &[
            ("backend", Left),
            ("variant", Left),
            ("connections/s", Right),
            ("runs", Left),
            ("KiB each", Right),
            ("runs", Left),
        ],
        rows,
    )
}
