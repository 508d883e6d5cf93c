//! A segment directory without room for what is sent (a container's
//! 64 MiB `/dev/shm`, say): an error that says so, not a SIGBUS that kills
//! the process when a page of a sparse segment is first written.
//!
//! Needs a small tmpfs of its own, so it mounts one (root, as in CI) and
//! says SKIPPED where it cannot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, Transport};
use laggard_shm::{ShmConfig, ShmTransport};

/// A tmpfs of `size` mounted on a new directory, unmounted on drop.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(size: &str) -> Result<SmallTmpfs, String> {
        let dir = std::env::temp_dir().join(format!("laggard-full-{size}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(SmallTmpfs(dir))
    }

    /// [`mount`](Self::mount), or `None` after saying why the test is
    /// skipped.
    fn mount_or_skip(size: &str) -> Option<SmallTmpfs> {
        Self::mount(size)
            .inspect_err(|why| {
                eprintln!("SKIPPED: cannot mount a small tmpfs here ({why}); run as root")
            })
            .ok()
    }

    fn files(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn net(dir: &Path) -> ShmTransport {
    let cfg = ShmConfig::default().dir(dir).ring_bytes(16 << 20);
    ShmTransport::with_config(&format!("full{}", std::process::id()), cfg).unwrap()
}

#[test]
fn a_frame_with_no_room_left_is_an_error_and_smaller_ones_still_go() {
    let Some(tmpfs) = SmallTmpfs::mount_or_skip("4m") else {
        return;
    };
    let net = net(&tmpfs.0);
    let mut server = net.bind("server").unwrap();
    let mut client = net.bind("client").unwrap();
    let peer = client.connect("server", soon()).unwrap();
    let Some(Event::Connected(_)) = server.recv(soon()).unwrap() else {
        panic!("no connection")
    };
    // The connection's rings (16 MiB each) fit the 4 MiB file system only
    // because they are sparse: a 6 MiB frame's pages do not.
    let err = client
        .lend(peer, 6 << 20, soon())
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot take memory in"), "{err}");
    assert!(err.contains("--shm-size"), "{err}");
    // A stash block (a long pending push row) likewise: none, so the row
    // would go through the ring.
    assert!(client.stash(peer, 6 << 20).is_none());
    drop(
        client
            .stash(peer, 64 << 10)
            .expect("a stash block that fits"),
    );
    // What fits still goes, on the same connection.
    for round in 0..3u8 {
        let mut buf = client.lend(peer, 1 << 20, soon()).unwrap();
        buf.fill(round);
        client.send(buf).unwrap();
        match server.recv(soon()).unwrap() {
            Some(Event::Frame(_, frame)) => {
                assert_eq!(frame.len(), 1 << 20);
                assert!(frame.iter().all(|&b| b == round));
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }
    drop((client, server));
    assert_eq!(tmpfs.files(), Vec::<String>::new(), "segments left behind");
}

#[test]
fn binding_in_a_full_directory_is_an_error_that_says_so() {
    let Some(tmpfs) = SmallTmpfs::mount_or_skip("64k") else {
        return;
    };
    let filler = tmpfs.0.join("filler");
    let room = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&filler)
        .unwrap();
    // Fill it: writing zeros until the file system refuses.
    let chunk = vec![0u8; 4096];
    let mut f = &room;
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    let err = net(&tmpfs.0)
        .bind("server")
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--shm-size"), "{err}");
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        tmpfs.files(),
        Vec::<String>::new(),
        "a half-made segment left behind"
    );
}
