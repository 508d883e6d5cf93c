//! The in-process demos' progress monitor: a thread that measures the
//! servers' current model while the workers train.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Calls `measure` every `every` until `done` is set, and once more after
/// (seeing the workers' final pushes), printing the line it returns: on a
/// terminal redrawn at most every 200 ms, in a log (CI, a pipe) only the
/// last one.
pub fn watch(
    done: &AtomicBool,
    every: Duration,
    mut measure: impl FnMut() -> laggard::Result<String>,
) -> laggard::Result<()> {
    let mut last_print = Instant::now();
    let tty = std::io::stderr().is_terminal();
    loop {
        // Acquire pairs with the Release store of whoever sets `done` once
        // the workers finished: the last measure then sees their pushes.
        let finished = done.load(Ordering::Acquire);
        let line = measure()?;
        if (tty && last_print.elapsed() > Duration::from_millis(200)) || finished {
            eprint!("\r  {line}   ");
            last_print = Instant::now();
        }
        if finished {
            eprintln!();
            return Ok(());
        }
        std::thread::sleep(every);
    }
}
