//! `starling health`: exits 0 when a node's `/healthz` answers 200. Made for
//! container health checks and probes, where no HTTP client may be at hand
//! (the image holds nothing but `starling`).

use std::error::Error;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::HealthArgs;

/// The most of a reply that is read: a status line and a few headers.
const REPLY_BYTES_MAX: u64 = 4096;

pub(super) fn run(args: HealthArgs) -> Result<ExitCode, Box<dyn Error>> {
    let authority = authority(&args.http)?;
    let timeout = Duration::from_millis(args.timeout.max(1));
    match check(authority, timeout) {
        Ok(()) => {
            println!("healthy: http://{authority}/healthz");
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("unhealthy: http://{authority}/healthz: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `HOST:PORT` out of `HOST:PORT` or `http://HOST:PORT[/...]`.
fn authority(http: &str) -> Result<&str, String> {
    let rest = http.strip_prefix("http://").unwrap_or(http);
    if rest.contains("://") {
        return Err(format!("'{http}': only http:// endpoints can be checked"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("'{http}': give HOST:PORT or http://HOST:PORT"));
    }
    Ok(authority)
}

fn check(authority: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let address = resolve(authority)?;
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|error| error.to_string())?;
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(remaining))
        .and_then(|()| stream.set_write_timeout(Some(remaining)))
        .map_err(|error| error.to_string())?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|error| format!("cannot send the request: {error}"))?;
    let mut reply = Vec::new();
    stream
        .take(REPLY_BYTES_MAX)
        .read_to_end(&mut reply)
        .map_err(|error| format!("no answer: {error}"))?;
    let reply = String::from_utf8_lossy(&reply);
    let status = reply.lines().next().unwrap_or_default();
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(_) => Err(format!("answered '{status}'")),
        None => Err("answered with no HTTP status line".into()),
    }
}

/// The first address of `authority`. A node bound to every interface
/// (`0.0.0.0`, `[::]`: the usual `STARLING_HTTP` in a container, shared with
/// the node it checks) is reached on loopback.
fn resolve(authority: &str) -> Result<SocketAddr, String> {
    let mut address = authority
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve: {error}"))?
        .next()
        .ok_or("resolves to no address")?;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_with_or_without_scheme_and_path() {
        assert_eq!(authority("127.0.0.1:7402"), Ok("127.0.0.1:7402"));
        assert_eq!(authority("http://node-a:7402/"), Ok("node-a:7402"));
        assert_eq!(authority("http://node-a:7402/healthz"), Ok("node-a:7402"));
        assert!(authority("https://node-a:7402").is_err());
        assert!(authority("http://").is_err());
        assert!(authority("").is_err());
    }

    #[test]
    fn every_interface_means_loopback() {
        assert_eq!(
            resolve("0.0.0.0:7402"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 7402)))
        );
        assert_eq!(
            resolve("[::]:7402").map(|a| a.ip()),
            Ok(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert!(resolve("no-port").is_err());
    }
}
