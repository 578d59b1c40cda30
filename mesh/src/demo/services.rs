//! The demo's food-ordering services, each on its own thread and its own
//! node's bus: an order service publishing `orders.<region>.created` at a
//! fixed rate, order processing as a queue group, and inventory answering
//! `inventory.check` requests from its stock.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use starling_core::{Bus, RecvError, Subscription};

/// Regions orders come from.
pub const REGIONS: [&str; 3] = ["eu", "us", "apac"];
/// What the kitchen sells, and how many of each it starts with.
pub const MENU: [&str; 5] = ["espresso", "croissant", "ramen", "taco", "bagel"];
/// Enough for part of the run: later orders find some items short, and the
/// inventory says so.
const STOCK_START: u64 = 3_500;
/// How long a blocked service waits before it looks at its stop flag.
const POLL: Duration = Duration::from_millis(50);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// An order on the wire: `SEQ REGION ITEM QUANTITY SENT_NANOS`, the send
/// time being the intended one, in nanoseconds since the demo's start (so
/// latency includes any delay in sending: no coordinated omission).
struct Order<'a> {
    sequence: u64,
    item: &'a str,
    quantity: u64,
    sent_nanos: u64,
}

impl<'a> Order<'a> {
    fn parse(payload: &'a [u8]) -> Option<Order<'a>> {
        let mut fields = std::str::from_utf8(payload).ok()?.split(' ');
        let sequence = fields.next()?.parse().ok()?;
        let _region = fields.next()?;
        let item = fields.next()?;
        let quantity = fields.next()?.parse().ok()?;
        let sent_nanos = fields.next()?.parse().ok()?;
        Some(Order {
            sequence,
            item,
            quantity,
            sent_nanos,
        })
    }
}

/// What the services count, shared with the reporter.
#[derive(Debug)]
pub struct Tally {
    /// The demo's time origin.
    pub epoch: Instant,
    /// Orders published.
    pub published: AtomicU64,
    /// Orders processed, per processing member.
    pub processed: Vec<AtomicU64>,
    /// Deliveries per order sequence number: exactly one each, or the demo
    /// fails.
    pub deliveries: Vec<AtomicU8>,
    /// Orders the inventory could fill.
    pub reserved: AtomicU64,
    /// Orders the inventory had too little for.
    pub short: AtomicU64,
    /// Inventory checks that failed (no responders, timeout).
    pub check_failures: AtomicU64,
    /// Set to stop every service.
    pub stop: AtomicBool,
}

impl Tally {
    /// A tally for at most `orders` orders and `members` processing members.
    pub fn new(orders: usize, members: usize) -> Tally {
        Tally {
            epoch: Instant::now(),
            published: AtomicU64::new(0),
            processed: (0..members).map(|_| AtomicU64::new(0)).collect(),
            deliveries: (0..orders).map(|_| AtomicU8::new(0)).collect(),
            reserved: AtomicU64::new(0),
            short: AtomicU64::new(0),
            check_failures: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    /// Orders processed by all members.
    pub fn processed_total(&self) -> u64 {
        self.processed
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One latency sample for the reporter.
#[derive(Debug, Clone, Copy)]
pub enum Sample {
    /// From an order's intended send time to its processing, nanoseconds.
    Order(u64),
    /// One inventory check's round trip, nanoseconds.
    Check(u64),
}

/// Publishes `orders` orders at `rate` per second from `bus`, each at its
/// intended time (catching up without pause if behind).
pub fn order_service(
    bus: Bus,
    tally: Arc<Tally>,
    orders: u64,
    rate: u64,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("demo-orders".into())
        .spawn(move || {
            let mut publisher = bus.publisher();
            let mut random = starling_core::random_u64() | 1;
            let mut payload = String::with_capacity(64);
            let mut subject = String::with_capacity(32);
            for sequence in 0..orders {
                let intended = Duration::from_nanos(sequence * 1_000_000_000 / rate);
                while tally.epoch.elapsed() < intended {
                    std::thread::sleep(Duration::from_micros(100));
                }
                if tally.stopping() {
                    return;
                }
                // xorshift64: a different mix of orders each run.
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                let region = REGIONS[(random % 3) as usize];
                let item = MENU[(random >> 8) as usize % MENU.len()];
                let quantity = 1 + (random >> 16) % 3;
                subject.clear();
                subject.push_str("orders.");
                subject.push_str(region);
                subject.push_str(".created");
                payload.clear();
                let _ = write!(
                    payload,
                    "{sequence} {region} {item} {quantity} {}",
                    intended.as_nanos()
                );
                if publisher.publish(&subject, payload.as_bytes()).is_ok() {
                    tally.published.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
}

/// A member of the `order-processing` queue group: takes each order it is
/// given, reserves its items with an `inventory.check` request, and reports
/// both latencies.
pub fn order_processing(
    bus: Bus,
    member: usize,
    subscription: Subscription,
    tally: Arc<Tally>,
    samples: SyncSender<Sample>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("demo-processing-{member}"))
        .spawn(move || {
            let mut check = String::with_capacity(32);
            while !tally.stopping() {
                let order = match subscription.recv_timeout(POLL) {
                    Ok(order) => order,
                    Err(RecvError::Timeout) => continue,
                    Err(RecvError::Closed) => return,
                };
                let Some(parsed) = Order::parse(order.payload()) else {
                    continue;
                };
                let now = tally.epoch.elapsed().as_nanos() as u64;
                let _ = samples.try_send(Sample::Order(now.saturating_sub(parsed.sent_nanos)));
                if let Some(count) = tally.deliveries.get(parsed.sequence as usize) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                check.clear();
                let _ = write!(check, "{} {}", parsed.item, parsed.quantity);
                let asked = Instant::now();
                match bus.request("inventory.check", check.as_bytes(), CHECK_TIMEOUT) {
                    Ok(reply) => {
                        let _ = samples.try_send(Sample::Check(asked.elapsed().as_nanos() as u64));
                        let counter = if reply.payload().starts_with(b"reserved") {
                            &tally.reserved
                        } else {
                            &tally.short
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        tally.check_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tally.processed[member].fetch_add(1, Ordering::Relaxed);
            }
        })
}

/// Inventory: answers `inventory.check` requests (`ITEM QUANTITY`) with
/// `reserved ITEM QUANTITY, LEFT left` or `short ITEM, LEFT left`, keeping
/// stock. Returns the stock left when stopped.
pub fn inventory(
    bus: Bus,
    requests: Subscription,
    tally: Arc<Tally>,
) -> std::io::Result<JoinHandle<Vec<(&'static str, u64)>>> {
    std::thread::Builder::new()
        .name("demo-inventory".into())
        .spawn(move || {
            let mut stock: Vec<(&'static str, u64)> =
                MENU.iter().map(|item| (*item, STOCK_START)).collect();
            let mut answer = String::with_capacity(64);
            while !tally.stopping() {
                let request = match requests.recv_timeout(POLL) {
                    Ok(request) => request,
                    Err(RecvError::Timeout) => continue,
                    Err(RecvError::Closed) => break,
                };
                let Some(reply_to) = request.reply_to() else {
                    continue;
                };
                let text = std::str::from_utf8(request.payload()).unwrap_or("");
                let (item, quantity) = text.split_once(' ').unwrap_or((text, "1"));
                let quantity: u64 = quantity.parse().unwrap_or(1);
                answer.clear();
                match stock.iter_mut().find(|(name, _)| *name == item) {
                    Some((_, left)) if *left >= quantity => {
                        *left -= quantity;
                        let _ = write!(answer, "reserved {item} {quantity}, {left} left");
                    }
                    Some((_, left)) => {
                        let _ = write!(answer, "short {item}, {left} left");
                    }
                    None => {
                        let _ = write!(answer, "short {item}, not on the menu");
                    }
                }
                let _ = bus.publish(reply_to, answer.as_bytes());
            }
            stock
        })
}
