//! Asking a server's HTTP monitoring endpoint (Starling's `--http`,
//! nats-server's `-m`) how it is doing: plain HTTP/1.0 over a loopback
//! socket, which both speak, read into the caller's types.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::harness::error::{Context, Error, Result};

/// How long a monitoring request may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// GETs `path` from the endpoint at `address` (`HOST:PORT`) and reads the
/// JSON body as a `T`.
pub fn get<T: DeserializeOwned>(address: &str, path: &str) -> Result<T> {
    let doing = format!("GET http://{address}{path}");
    let mut stream = TcpStream::connect(address).context(&doing)?;
    stream.set_read_timeout(Some(TIMEOUT)).context(&doing)?;
    // One write: `write!` would send each piece of the format on its own.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).context(&doing)?;
    // HTTP/1.0: the server closes the connection after the body.
    let mut response = String::new();
    stream.read_to_string(&mut response).context(&doing)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::new(format!("{doing}: no end of headers")))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(Error::new(format!("{doing}: {status}")));
    }
    serde_json::from_str(body).context(&doing)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use serde::Deserialize;

    use super::*;

    /// Answers one request with `response` on a free port; returns the
    /// address and the thread, which gives back the request.
    fn serve_once(response: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // Reads the whole request: closing with some of it unread would
            // reset the connection.
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0];
                stream.read_exact(&mut byte).unwrap();
                request.push(byte[0]);
            }
            stream.write_all(response.as_bytes()).unwrap();
            String::from_utf8(request).unwrap()
        });
        (address, server)
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Routes {
        num_routes: usize,
    }

    #[test]
    fn reads_the_json_body_of_a_200() {
        let (address, server) = serve_once(
            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"num_routes\": 2, \"other\": 1}",
        );
        let routes: Routes = get(&address, "/routez").unwrap();
        assert_eq!(routes, Routes { num_routes: 2 });
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("GET /routez HTTP/1.0\r\n")
        );
    }

    #[test]
    fn other_statuses_fail_with_the_status_line() {
        let (address, server) = serve_once("HTTP/1.1 404 Not Found\r\n\r\nnot in a mesh\n");
        let error = get::<Routes>(&address, "/v1/links")
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with("/v1/links: HTTP/1.1 404 Not Found"),
            "{error}"
        );
        server.join().unwrap();
    }
}
