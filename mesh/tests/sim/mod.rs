//! What the deterministic simulators share: which seeds a run uses.

/// The seeds to run: `STARLING_SIM_SEED` alone if set (to replay a failure
/// exactly), else `STARLING_SIM_SEEDS` (or `default_count`) seeds that differ
/// on every run, so that runs together find more; a failure prints its own.
pub fn seeds(default_count: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("STARLING_SIM_SEED") {
        return vec![seed.parse().expect("STARLING_SIM_SEED is a u64")];
    }
    let count: u64 = std::env::var("STARLING_SIM_SEEDS").map_or(default_count, |n| {
        n.parse().expect("STARLING_SIM_SEEDS is a count")
    });
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    (0..count)
        .map(|k| start.wrapping_add(k.wrapping_mul(7919)))
        .collect()
}
