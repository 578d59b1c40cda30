//! The client commands: `pub`, `sub`, `req`, `reply`.

use std::error::Error;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use starling_core::event::Header;
use starling_core::{RecvError, SlowConsumerPolicy};
use starling_transport::client::{Client, ClientError, ClientOptions, ClientSubscription};
use starling_transport::tls::ClientTls;

use super::{PubArgs, ReplyArgs, ReqArgs, ServerArgs, SubArgs};

type Outcome = Result<ExitCode, Box<dyn Error>>;

fn connect(server: &ServerArgs, name: &str) -> Result<Client, Box<dyn Error>> {
    let options = ClientOptions {
        name: format!("{name}-{}", std::process::id()),
        token: server.token.clone(),
        user: server.user.clone(),
        password: server.password.clone(),
        tls: client_tls(server)?,
        ..ClientOptions::default()
    };
    Ok(Client::connect_with(&server.server, options)?)
}

/// `--ca` and the client certificate, for a `tls://` URL only: given with
/// another URL, they would be ignored, and the connection would be plain
/// where its user asked for TLS.
fn client_tls(server: &ServerArgs) -> Result<Option<ClientTls>, Box<dyn Error>> {
    let identity = server.tls_cert.as_deref().zip(server.tls_key.as_deref());
    if !server.server.starts_with("tls://") {
        if server.ca.is_some() || identity.is_some() {
            return Err(format!(
                "--ca, --tls-cert and --tls-key are for tls:// URLs, and {} is not one",
                server.server
            )
            .into());
        }
        return Ok(None);
    }
    let Some(ca) = &server.ca else {
        return Err(format!(
            "{} needs --ca FILE: the CA that signed the node's certificate",
            server.server
        )
        .into());
    };
    Ok(Some(ClientTls::from_files(ca, identity)?))
}

fn subscribe(
    client: &Client,
    pattern: &str,
    queue: Option<&str>,
    policy: SlowConsumerPolicy,
) -> Result<ClientSubscription, ClientError> {
    client.subscribe_with(pattern, queue, policy)
}

pub(super) fn publish(args: PubArgs) -> Outcome {
    let headers: Vec<(String, String)> = args
        .headers
        .iter()
        .map(|header| match header.split_once('=') {
            Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
            None => Err(format!("header '{header}' is not NAME=VALUE")),
        })
        .collect::<Result<_, _>>()?;
    let headers: Vec<Header<'_>> = headers
        .iter()
        .map(|(n, v)| Header(n, v.as_bytes()))
        .collect();
    let payload: Vec<u8> = match args.size {
        Some(size) => (0..size).map(|i| b'a' + (i % 26) as u8).collect(),
        None => args.payload.unwrap_or_default().into_bytes(),
    };
    let client = connect(&args.server, "starling-pub")?;
    let started = Instant::now();
    for _ in 0..args.count {
        client.publish_with_headers(&args.subject, &headers, &payload)?;
    }
    client.flush()?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "published {} event{} of {} bytes in {seconds:.3} s ({:.0} events/s)",
        args.count,
        if args.count == 1 { "" } else { "s" },
        payload.len(),
        args.count as f64 / seconds.max(1e-9),
    );
    client.close();
    Ok(ExitCode::SUCCESS)
}

pub(super) fn subscribe_command(args: SubArgs) -> Outcome {
    let client = connect(&args.server, "starling-sub")?;
    let policy =
        SlowConsumerPolicy::from_name(&args.policy, Duration::from_millis(args.max_stall))?;
    let subscription = subscribe(&client, &args.pattern, args.queue.as_deref(), policy)?;
    let deadline = args
        .timeout
        .map(|seconds| Instant::now() + Duration::from_secs_f64(seconds));
    let mut received = 0u64;
    let mut out = std::io::stdout().lock();
    while args.count.is_none_or(|count| received < count) {
        let event = match deadline {
            Some(deadline) => subscription.recv_deadline(deadline),
            None => subscription.recv(),
        };
        let event = match event {
            Ok(event) => event,
            Err(RecvError::Timeout | RecvError::Closed) => break,
        };
        let line = writeln!(
            out,
            "{} {}",
            event.subject(),
            String::from_utf8_lossy(event.payload())
        )
        .and_then(|()| out.flush());
        if line.is_err() {
            // Whoever read our output went away (`| head`): done.
            return Ok(ExitCode::SUCCESS);
        }
        received += 1;
    }
    let dropped = subscription.dropped() + client.dropped_by_node();
    if dropped > 0 {
        eprintln!(
            "{dropped} events were dropped because this subscriber fell behind (policy {policy})"
        );
    }
    if let Some(count) = args.count
        && received < count
    {
        eprintln!("received {received} of {count} events before the timeout");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn request(args: ReqArgs) -> Outcome {
    let client = connect(&args.server, "starling-req")?;
    let payload = args.payload.unwrap_or_default();
    match client.request(
        &args.subject,
        payload.as_bytes(),
        Duration::from_millis(args.timeout),
    ) {
        Ok(reply) => {
            println!("{}", String::from_utf8_lossy(&reply.payload));
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::NoResponders) => {
            eprintln!("no responders for {}", args.subject);
            Ok(ExitCode::FAILURE)
        }
        Err(ClientError::Timeout) => {
            eprintln!("no reply within {} ms", args.timeout);
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(error.into()),
    }
}

pub(super) fn reply(args: ReplyArgs) -> Outcome {
    let client = connect(&args.server, "starling-reply")?;
    let subscription = subscribe(
        &client,
        &args.subject,
        args.queue.as_deref(),
        SlowConsumerPolicy::default(),
    )?;
    let mut answered = 0u64;
    while args.count.is_none_or(|count| answered < count) {
        let request = match subscription.recv() {
            Ok(request) => request,
            Err(_) => break,
        };
        if let Some(reply_to) = request.reply_to() {
            client.publish(reply_to, request.payload())?;
            answered += 1;
        }
    }
    client.close();
    Ok(ExitCode::SUCCESS)
}
