//! Tests that run this test binary again, as a process of their own: the
//! child runs only the test `child_process`, which plays the part `CHILD`
//! names instead of testing.

use std::process::Command;

/// The variable that tells a test binary it runs as a child, and as what.
pub const CHILD: &str = "LAGGARD_TEST_CHILD";

/// Adds to `cmd`, which runs this test binary (perhaps through a launcher),
/// what makes it a child in `mode`.
pub fn as_child<'a>(cmd: &'a mut Command, mode: &str) -> &'a mut Command {
    cmd.args([
        "child_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, mode)
}
