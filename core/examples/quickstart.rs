//! The in-process bus in one minute: the food-ordering example on one bus.
//!
//! An order service publishes `orders.<region>.created`; two order processors
//! share the work as a queue group; an audit log sees every order; inventory
//! answers `inventory.check` requests. Run it with
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::time::{Duration, Instant};

use starling_core::{Bus, BusConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::new(BusConfig::default());

    // Inventory management answers stock checks (returning values).
    let inventory = bus.subscribe("inventory.check")?;
    let replies = bus.clone();
    std::thread::spawn(move || {
        while let Ok(request) = inventory.recv() {
            let answer: &[u8] = if request.payload().starts_with(b"sku-") {
                b"in-stock"
            } else {
                b"unknown"
            };
            if let Some(reply_to) = request.reply_to() {
                let _ = replies.publish(reply_to, answer);
            }
        }
    });

    // Order processing scales out as a queue group: each order goes to one.
    let processors: Vec<_> = (0..2)
        .map(|worker| -> Result<_, Box<dyn std::error::Error>> {
            let orders = bus.queue_subscribe("orders.*.created", "processing")?;
            Ok(std::thread::spawn(move || {
                let mut handled = 0u64;
                while orders.recv_timeout(Duration::from_millis(200)).is_ok() {
                    handled += 1;
                }
                (worker, handled, orders.dropped())
            }))
        })
        .collect::<Result<_, _>>()?;

    // An audit log sees every order, whatever the region. If it falls behind,
    // its queue drops events and counts every one: nothing is lost uncounted.
    let audit = bus.subscribe("orders.>")?;
    let auditor = std::thread::spawn(move || {
        let mut seen = 0u64;
        while audit.recv_timeout(Duration::from_millis(200)).is_ok() {
            seen += 1;
        }
        (seen, audit.dropped())
    });

    let answer = bus.request("inventory.check", b"sku-42", Duration::from_secs(1))?;
    println!(
        "inventory.check sku-42 -> {}",
        String::from_utf8_lossy(answer.payload())
    );
    drop(answer);
    match bus.request("payments.authorize", b"order-1", Duration::from_secs(5)) {
        Err(error) => println!("payments.authorize -> {error} (at once, not after 5 s)"),
        Ok(_) => unreachable!("nobody subscribes to payments"),
    }

    const ORDERS: u64 = 1_000_000;
    let regions = [
        "orders.eu.created",
        "orders.us.created",
        "orders.apac.created",
    ];
    let mut publisher = bus.publisher();
    let started = Instant::now();
    for i in 0..ORDERS {
        publisher.publish(regions[(i % 3) as usize], &i.to_le_bytes())?;
    }
    let elapsed = started.elapsed();

    for processor in processors {
        let (worker, handled, missed) = processor.join().expect("processor thread");
        println!(
            "processor {worker}: handled {handled} orders, missed {missed} while its queue was full"
        );
    }
    let (audited, missed) = auditor.join().expect("auditor thread");
    println!(
        "published {ORDERS} orders in {:.0} ms ({:.2} M events/s)",
        elapsed.as_secs_f64() * 1e3,
        ORDERS as f64 / elapsed.as_secs_f64() / 1e6,
    );
    println!(
        "audit log: saw {audited}, missed {missed} while it fell behind, total {}",
        audited + missed
    );
    Ok(())
}
