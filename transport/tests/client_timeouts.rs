//! The client's answers time out on time whatever else the connection is
//! doing: a steady stream of other frames must not keep an async request or
//! flush waiting past its deadline (the client used to expire answers only
//! when a read found nothing to read).

mod common;

use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{backends, frame, node};
use starling_transport::client::{Client, ClientError, ClientOptions};
use starling_transport::frame::Kind;
use starling_transport::frame::control::Hello;

/// The timeout every test here asks for.
const TIMEOUT: Duration = Duration::from_millis(200);

/// How late past [`TIMEOUT`] an answer may come: scheduling on a busy
/// 2-core machine (a thread to start, the timer's and the waker's threads
/// to run), not a tick of the client's. 300 ms is little on a machine loaded
/// far past its cores (tests/limits.rs saw a thread starved past 200 ms at a
/// load of 14); the fault these tests look for makes the answer wait as
/// long as the traffic lasts, which [`STUCK`] catches.
const SLACK: Duration = Duration::from_secs(2);

/// How long a test waits for an outcome at all before it calls the future
/// stuck.
const STUCK: Duration = Duration::from_secs(10);

/// Polls `future` only when its waker is called, as a real executor does:
/// an answer that nobody wakes never arrives (a re-polling loop would hide
/// exactly the bug these tests look for).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

/// Runs `future` on a thread of its own and returns its output and how long
/// it took, or `None` if it was still pending after [`STUCK`].
fn outcome_of<T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
) -> Option<(T, Duration)> {
    let (sender, receiver) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let output = block_on(future);
        let _ = sender.send((output, started.elapsed()));
    });
    receiver.recv_timeout(STUCK).ok()
}

fn assert_timed_out<T: std::fmt::Debug>(
    what: &str,
    outcome: Option<(Result<T, ClientError>, Duration)>,
) {
    let (result, took) = outcome.unwrap_or_else(|| panic!("{what}: still pending after {STUCK:?}"));
    assert!(
        matches!(result, Err(ClientError::Timeout)),
        "{what}: {result:?}"
    );
    assert!(took >= TIMEOUT, "{what}: gave up early, after {took:?}");
    assert!(
        took <= TIMEOUT + SLACK,
        "{what}: timed out after {took:?}, asked for {TIMEOUT:?}"
    );
}

/// A thread that keeps something arriving at a client until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(mut send: impl FnMut() -> bool + Send + 'static) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Every millisecond: far more often than any read timeout.
                while !stop.load(Ordering::Relaxed) && send() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn an_async_request_times_out_while_other_events_keep_arriving() {
    for backend in backends() {
        let node = node(backend);
        // A responder that never answers: the node routes the request to it,
        // so the client hears neither a reply nor "no responders".
        let _silent = node.bus.subscribe("svc").unwrap();
        let client = Client::connect(&node.tcp).unwrap();
        let traffic = client.subscribe("traffic").unwrap();
        client.flush().unwrap();
        let bus = node.bus.clone();
        let delivered = Arc::new(AtomicU64::new(0));
        let _traffic = Traffic::start({
            let delivered = delivered.clone();
            move || {
                // Drained as it comes, so that the client's queue never fills.
                while traffic.try_recv().is_some() {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                bus.publish("traffic", b"x").is_ok()
            }
        });
        // Traffic flows before the request starts.
        let started = Instant::now();
        while delivered.load(Ordering::Relaxed) < 10 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{backend:?}: the traffic never started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let requester = client.clone();
        let before = delivered.load(Ordering::Relaxed);
        let outcome =
            outcome_of(async move { requester.request_async("svc", b"?", TIMEOUT).await });
        assert_timed_out(&format!("{backend:?}: request_async"), outcome);
        let during = delivered.load(Ordering::Relaxed) - before;
        // About one a millisecond on an idle machine, far fewer on a loaded
        // one; what matters is that the reader was kept busy meanwhile, so
        // the timeout had to come from the timer, not from an idle reader.
        assert!(
            during >= 10,
            "{backend:?}: only {during} events arrived meanwhile"
        );
        client.close();
    }
}

/// A node that shakes hands, then sends `PING` after `PING` and never
/// answers anything; it stops when the client goes away.
fn unanswering_node() -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let hello = frame(Kind::Hello, 0, &Hello::ours("unanswering", "").encode());
        if stream.write_all(&hello).is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        for tag in 1.. {
            // Whatever the client sends (its HELLO, PINGs, PONGs) is read
            // and ignored.
            match stream.read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
            if stream.write_all(&frame(Kind::Ping, tag, &[])).is_err() {
                return;
            }
        }
    });
    (url, thread)
}

#[test]
fn an_async_flush_times_out_when_the_node_stops_answering() {
    let (url, node) = unanswering_node();
    let options = ClientOptions {
        answer_timeout: TIMEOUT,
        reconnect: false,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&url, options).unwrap();
    let flusher = client.clone();
    let outcome = outcome_of(async move { flusher.flush_async().await });
    assert_timed_out("flush_async", outcome);
    // The blocking flush has the same bound.
    let started = Instant::now();
    let flushed = client.flush();
    assert!(matches!(flushed, Err(ClientError::Timeout)), "{flushed:?}");
    assert!(
        started.elapsed() <= TIMEOUT + SLACK,
        "{:?}",
        started.elapsed()
    );
    client.close();
    node.join().unwrap();
}
