//! Running out of file descriptors: how to tell, and what to say.
//!
//! A TCP endpoint holds one descriptor per connection and rank 0's
//! coordinator one per joining process, so a job larger than the usual
//! soft limit (1024) meets it. The failure must name the limit, or it
//! reads as a network fault.

use std::io;

/// Whether `e` says this process (EMFILE) or the system (ENFILE) has no
/// file descriptor left.
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(rustix::io::Errno::MFILE.raw_os_error())
        || code == Some(rustix::io::Errno::NFILE.raw_os_error())
}

/// `failed` (an error [`out_of_descriptors`] recognised) with this
/// process's limit and what to do about it.
pub(crate) fn advice(failed: &io::Error) -> String {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or_else(|| "no limit".to_owned(), |n| format!("a limit of {n}"));
    format!(
        "{failed}; {limit}. Raise the limit where it runs (`ulimit -n`, or LimitNOFILE= \
         for a systemd service)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_running_out_of_descriptors_counts() {
        let emfile = io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        let enfile = io::Error::from_raw_os_error(rustix::io::Errno::NFILE.raw_os_error());
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(out_of_descriptors(&emfile));
        assert!(out_of_descriptors(&enfile));
        assert!(!out_of_descriptors(&reset));
        let text = advice(&emfile);
        assert!(text.contains("ulimit -n"), "{text}");
        assert!(text.contains("limit"), "{text}");
    }
}
