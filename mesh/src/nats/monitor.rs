//! `/varz`, `/connz` and `/subsz`: nats-server's monitoring endpoints, with
//! the fields the NATS ecosystem's tools read (prometheus-nats-exporter,
//! `nats server` dashboards, test harnesses), for the NATS listener.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::ListenerState;

/// `/varz`: the server and its totals.
pub(super) fn varz(state: &ListenerState) -> Value {
    let info = &state.session.info;
    let settings = &state.settings;
    let connections = state.connections.lock().expect("connections lock").clone();
    let mut totals = [0u64; 4];
    for stats in connections
        .values()
        .map(|c| &*c.stats)
        .chain(std::iter::once(&state.closed))
    {
        for (total, counter) in totals.iter_mut().zip([
            &stats.in_msgs,
            &stats.out_msgs,
            &stats.in_bytes,
            &stats.out_bytes,
        ]) {
            *total += counter.load(Ordering::Relaxed);
        }
    }
    let [in_msgs, out_msgs, in_bytes, out_bytes] = totals;
    let now = SystemTime::now();
    json!({
        "server_id": info.server_id,
        "server_name": info.server_name,
        "version": info.version,
        "proto": info.proto,
        "go": info.go,
        "host": info.host,
        "port": info.port,
        "headers": info.headers,
        "auth_required": info.auth_required,
        "tls_required": info.tls_required,
        "max_connections": settings.connections_max,
        "max_payload": info.max_payload,
        "max_control_line": state.session.max_control_line,
        "max_pending": settings.pending_events_max,
        "ping_interval": settings.ping_interval.as_nanos() as u64,
        "ping_max": settings.max_pings_out,
        "auth_timeout": settings.auth_timeout.as_secs_f64(),
        "write_deadline": settings.write_deadline.as_nanos() as u64,
        "start": rfc3339(state.started),
        "now": rfc3339(now),
        "uptime": uptime(state.started_at.elapsed()),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "connections": connections.len(),
        "total_connections": state.next_cid.load(Ordering::Relaxed) - 1,
        "routes": 0,
        "remotes": 0,
        "leafnodes": 0,
        "in_msgs": in_msgs,
        "out_msgs": out_msgs,
        "in_bytes": in_bytes,
        "out_bytes": out_bytes,
        "slow_consumers": state.slow_consumers.load(Ordering::Relaxed),
        "subscriptions": state.bus.stats().subscriptions,
    })
}

/// `/connz`: every NATS connection, oldest first.
pub(super) fn connz(state: &ListenerState) -> Value {
    let mut connections: Vec<_> = state
        .connections
        .lock()
        .expect("connections lock")
        .iter()
        .map(|(cid, c)| (*cid, c.clone()))
        .collect();
    connections.sort_by_key(|(cid, _)| *cid);
    let now = SystemTime::now();
    let list: Vec<Value> = connections
        .iter()
        .map(|(cid, c)| {
            let stats = &c.stats;
            let client = stats.client.get().cloned().unwrap_or_default();
            json!({
                "cid": cid,
                "kind": "Client",
                "type": "nats",
                "ip": c.addr.ip().to_string(),
                "port": c.addr.port(),
                "start": rfc3339(c.started),
                "uptime": uptime(now.duration_since(c.started).unwrap_or_default()),
                "in_msgs": stats.in_msgs.load(Ordering::Relaxed),
                "out_msgs": stats.out_msgs.load(Ordering::Relaxed),
                "in_bytes": stats.in_bytes.load(Ordering::Relaxed),
                "out_bytes": stats.out_bytes.load(Ordering::Relaxed),
                "subscriptions": stats.subscriptions.load(Ordering::Relaxed),
                "name": client.name,
                "lang": client.lang,
                "version": client.version,
            })
        })
        .collect();
    json!({
        "server_id": state.session.info.server_id,
        "now": rfc3339(now),
        "num_connections": list.len(),
        "total": list.len(),
        "offset": 0,
        "limit": list.len(),
        "connections": list,
    })
}

/// `/subsz`: the subscription index, as far as the bus counts it.
pub(super) fn subsz(state: &ListenerState) -> Value {
    json!({
        "server_id": state.session.info.server_id,
        "now": rfc3339(SystemTime::now()),
        "num_subscriptions": state.bus.stats().subscriptions,
    })
}

/// `1d2h3m4s`, as nats-server writes uptimes.
fn uptime(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m{seconds}s"),
        (0, _, _) => format!("{hours}h{minutes}m{seconds}s"),
        _ => format!("{days}d{hours}h{minutes}m{seconds}s"),
    }
}

/// A UTC time as RFC 3339 with microseconds (`2026-12-06T03:04:05.123456Z`).
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_nats_server_writes_them() {
        assert_eq!(uptime(Duration::from_secs(59)), "59s");
        assert_eq!(uptime(Duration::from_secs(3_725)), "1h2m5s");
        assert_eq!(uptime(Duration::from_secs(90_061)), "1d1h1m1s");
        let time = UNIX_EPOCH + Duration::from_micros(1_796_526_245_000_001);
        assert_eq!(rfc3339(time), "2026-12-06T03:04:05.000001Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
