//! Preflight tells the user what is missing. On a host without an RDMA
//! device (CI's host) it says so; on one with a device (the guests) it
//! reports the device it found. Both check the errors for a device or GID
//! that does not exist.

use laggard::transport::Transport;
use laggard_rdma::{RdmaConfig, RdmaTransport, preflight};

fn has_device() -> bool {
    std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn preflight_reports_the_device_or_its_absence() {
    match preflight(&RdmaConfig::default()) {
        Ok(info) => {
            assert!(has_device());
            let shown = info.to_string();
            assert!(
                shown.contains(&info.device) && shown.contains("port 1"),
                "{shown}"
            );
        }
        Err(e) => {
            assert!(!has_device(), "a device exists but preflight failed: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains("no RDMA device") && msg.contains("rdma link add"),
                "{msg}"
            );
        }
    }
}

#[test]
fn binding_without_a_usable_device_is_an_error_not_a_panic() {
    let net = RdmaTransport::with_config(RdmaConfig::default().device("no-such-device0")).unwrap();
    let err = net.bind("x").unwrap_err().to_string();
    assert!(err.contains("RDMA preflight"), "{err}");
    assert!(
        err.contains("no-such-device0") || err.contains("no RDMA device"),
        "{err}"
    );
    assert!(
        net.leaks().is_empty(),
        "a failed bind leaves nothing: {:?}",
        net.leaks()
    );
}
