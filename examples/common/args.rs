//! Command-line values the demos share.

#![allow(dead_code)]

use std::time::Duration;

/// Threads an in-process demo starts at most, well within what systems
/// allow a process (one runs out of memory maps at a few tens of
/// thousands, and the standard library then aborts while starting one).
pub const MAX_THREADS: usize = 4096;

/// `value` milliseconds as a duration, or why `flag` cannot take it.
pub fn millis(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1e3).ok())
        .ok_or(format!(
            "{flag} {value}: must be a number of milliseconds, 0 or more"
        ))
}

/// Refuses more workers and server shards than an in-process demo starts
/// threads for.
pub fn check_threads(workers: usize, servers: usize) -> Result<(), String> {
    if workers.saturating_add(servers) > MAX_THREADS {
        return Err(format!(
            "this demo runs a thread per worker and server shard in one process: at most \
             {MAX_THREADS} in all"
        ));
    }
    Ok(())
}
