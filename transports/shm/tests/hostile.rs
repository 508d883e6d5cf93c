//! Bad segments and bad settings are errors, never panics, hangs or
//! undefined behaviour: foreign, truncated and world-writable files in a
//! segment's place, a peer that corrupts its ring or names a stashed tail
//! outside its stash, and invalid settings.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use laggard::Error;
use laggard::transport::{Endpoint, Event, Transport};
use laggard_shm::{ShmConfig, ShmTransport};

fn net(tag: &str) -> ShmTransport {
    ShmTransport::new(&format!("{tag}{}", std::process::id())).unwrap()
}

fn mailbox(net: &ShmTransport, name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/laggard-{}-ep-{name}", net.cluster()))
}

fn write_file(path: &PathBuf, bytes: &[u8], mode: u32) {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

#[test]
fn a_foreign_file_in_a_mailbox_place_is_an_error() {
    let net = net("foreign");
    let path = mailbox(&net, "squatted");
    write_file(&path, &[0xAB; 20_000], 0o600);
    let err = net.bind("squatted").unwrap_err();
    assert!(
        err.to_string().contains("not a usable laggard segment"),
        "{err}"
    );
    let mut client = net.bind("client").unwrap();
    let err = client.connect("squatted", soon()).unwrap_err();
    assert!(err.to_string().contains("magic"), "{err}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_truncated_or_world_writable_mailbox_is_an_error() {
    let net = net("trunc");
    let real = net.bind("real").unwrap();
    let bytes = std::fs::read(mailbox(&net, "real")).unwrap();
    let mut client = net.bind("client").unwrap();

    let short = mailbox(&net, "short");
    write_file(&short, &bytes[..bytes.len() / 2], 0o600);
    let err = client.connect("short", soon()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");

    let open = mailbox(&net, "open");
    write_file(&open, &bytes, 0o666);
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let err = client.connect("open", soon()).unwrap_err();
    assert!(err.to_string().contains("other users"), "{err}");

    std::fs::remove_file(short).unwrap();
    std::fs::remove_file(open).unwrap();
    drop(real);
}

/// Connects `client` to `server` and returns the connection segment's
/// file, which exists until the server accepts.
fn connect_unaccepted(
    net: &ShmTransport,
    client: &mut impl Endpoint,
    server: &str,
) -> (laggard::transport::PeerId, File) {
    let peer = client.connect(server, soon()).unwrap();
    let conn = net
        .segments()
        .into_iter()
        .find(|n| n.contains("-conn-"))
        .expect("the connection segment exists until accepted");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/shm/{conn}"))
        .unwrap();
    (peer, file)
}

fn expect_connect_then_disconnect(server: &mut laggard_shm::ShmEndpoint) {
    assert!(matches!(
        server.recv(soon()).unwrap(),
        Some(Event::Connected(_))
    ));
    match server.recv(soon()).unwrap() {
        Some(Event::Disconnected(_)) => {}
        other => panic!("a corrupt ring must drop the connection, got {other:?}"),
    }
}

#[test]
fn a_peer_that_corrupts_its_ring_is_dropped() {
    // Offsets from the layout (see `layout.rs`): ring 0's data is at
    // 4096; a record's header word publishes it.
    // A frame whose tail is in the stash (record kind 3) ends with where:
    // offset and length, little-endian.
    // Here after 8 bytes of head.
    let stashed = |off: u64, len: u64| [[0; 8], off.to_le_bytes(), len.to_le_bytes()].concat();
    let stash = ShmConfig::default().stash_bytes(4096);
    let cases: [(&str, u64, Vec<u8>); 6] = [
        ("unknown record kind", 7 << 32 | 8, vec![]),
        ("a header with no kind", 8, vec![]),
        ("record overrunning the ring", 1 << 32 | 0xffff_fff0, vec![]),
        (
            "stashed tail past the stash",
            3 << 32 | 24,
            stashed(4000, 97),
        ),
        (
            "stashed tail wrapping around",
            3 << 32 | 24,
            stashed(u64::MAX, 2),
        ),
        (
            "stashed frame too short to say where",
            3 << 32 | 8,
            vec![0; 8],
        ),
    ];
    for (what, header, payload) in cases {
        let net =
            ShmTransport::with_config(&format!("corrupt{}", std::process::id()), stash.clone())
                .unwrap();
        let mut server = net.bind("server").unwrap();
        let mut client = net.bind("client").unwrap();
        let (peer, mut file) = connect_unaccepted(&net, &mut client, "server");
        // The payload first, then the header that publishes it.
        file.seek(SeekFrom::Start(4096 + 8)).unwrap();
        file.write_all(&payload).unwrap();
        file.seek(SeekFrom::Start(4096)).unwrap();
        file.write_all(&header.to_ne_bytes()).unwrap();
        expect_connect_then_disconnect(&mut server);
        // The writer learns that the connection is gone.
        let err = client
            .lend(peer, 8, soon())
            .and_then(|buf| client.send(buf))
            .unwrap_err();
        assert!(matches!(err, Error::Disconnected { .. }), "{what}: {err:?}");
        drop((server, client));
        assert_eq!(net.segments(), Vec::<String>::new(), "{what}");
    }
}

#[test]
fn a_corrupt_connection_header_is_refused() {
    let net = net("badconn");
    let mut server = net.bind("server").unwrap();
    let mut client = net.bind("client").unwrap();
    let (_peer, mut file) = connect_unaccepted(&net, &mut client, "server");
    file.seek(SeekFrom::Start(40)).unwrap(); // the ring capacity
    file.write_all(&3000u64.to_ne_bytes()).unwrap();
    // Refused: no connection event, and nothing panics.
    assert!(
        server
            .recv(Instant::now() + Duration::from_millis(200))
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_refused_connection_is_reported_to_its_connector() {
    let net = net("refused");
    let mut server = net.bind("server").unwrap();
    let mut client = net.bind("client").unwrap();
    let (peer, mut file) = connect_unaccepted(&net, &mut client, "server");
    // The header names a connector that has no mailbox (offset 56: the
    // name; its length, 6, is unchanged).
    file.seek(SeekFrom::Start(56)).unwrap();
    file.write_all(b"nobody").unwrap();
    assert!(
        server
            .recv(Instant::now() + Duration::from_millis(200))
            .unwrap()
            .is_none()
    );
    let err = client
        .lend(peer, 8, soon())
        .and_then(|buf| client.send(buf))
        .unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
}

#[test]
fn an_oversized_frame_is_an_error_that_says_what_to_change() {
    let net = ShmTransport::with_config(
        &format!("big{}", std::process::id()),
        ShmConfig::default().ring_bytes(1 << 16),
    )
    .unwrap();
    let _server = net.bind("server").unwrap();
    let mut client = net.bind("client").unwrap();
    let peer = client.connect("server", soon()).unwrap();
    let err = client.lend(peer, 1 << 16, soon()).unwrap_err();
    assert!(err.to_string().contains("ring_bytes"), "{err}");
    assert!(client.lend(peer, (1 << 15) - 8, soon()).is_ok());
}

#[test]
fn a_bound_name_cannot_be_bound_twice() {
    let net = net("twice");
    let _a = net.bind("name").unwrap();
    let err = net.bind("name").unwrap_err();
    assert!(err.to_string().contains("already bound"), "{err}");
    let err = net.bind("").unwrap_err();
    assert!(err.to_string().contains("1 to"), "{err}");
}

#[test]
fn invalid_settings_are_errors() {
    let bad = [
        ShmTransport::new("has-dash").unwrap_err(),
        ShmTransport::new("").unwrap_err(),
        ShmTransport::with_config("ok", ShmConfig::default().dir("/no/such/dir")).unwrap_err(),
        ShmTransport::with_config("ok", ShmConfig::default().liveness_interval(Duration::ZERO))
            .unwrap_err(),
        ShmTransport::with_config("ok", ShmConfig::default().ring_bytes(1 << 50)).unwrap_err(),
    ];
    for err in bad {
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    }
}

#[test]
fn connecting_to_nobody_times_out_with_the_name() {
    let net = net("nobody");
    let mut client = net.bind("client").unwrap();
    let err = client
        .connect("absent", Instant::now() + Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, Error::NoResponse { .. }), "{err:?}");
    assert!(err.to_string().contains("absent"), "{err}");
}

/// Byte offsets in a segment's header: the owner's start time and PID
/// namespace.
const OWNER_START: usize = 32;
const OWNER_PIDNS: usize = 52;

/// A copy of live mailbox `of`, as mailbox `name`, changed by `forge`.
fn forged_mailbox(net: &ShmTransport, of: &str, name: &str, forge: impl Fn(&mut [u8])) -> PathBuf {
    let mut bytes = std::fs::read(mailbox(net, of)).unwrap();
    forge(&mut bytes);
    let path = mailbox(net, name);
    write_file(&path, &bytes, 0o600);
    path
}

#[test]
fn a_mailbox_whose_owner_is_not_running_here_is_named_in_the_timeout() {
    let net = net("ghost");
    let server = net.bind("server").unwrap();
    let mut client = net.bind("client").unwrap();
    // Its owner's pid is no process here with that start time: it died.
    let dead = forged_mailbox(&net, "server", "dead", |b| b[OWNER_START] ^= 0xff);
    let err = client
        .connect("dead", Instant::now() + Duration::from_millis(50))
        .unwrap_err()
        .to_string();
    assert!(err.contains("died without closing it"), "{err}");
    // The same from a build that did not record PID namespaces: it died,
    // or it runs in another namespace.
    let unsure = forged_mailbox(&net, "server", "unsure", |b| {
        b[OWNER_START] ^= 0xff;
        b[OWNER_PIDNS..OWNER_PIDNS + 4].fill(0);
    });
    let err = client
        .connect("unsure", Instant::now() + Duration::from_millis(50))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not running here"), "{err}");
    assert!(err.contains("another PID namespace"), "{err}");
    std::fs::remove_file(&dead).unwrap();
    std::fs::remove_file(&unsure).unwrap();
    drop(server);
}

#[test]
fn a_mailbox_of_another_pid_namespace_is_neither_removed_nor_taken_over() {
    // As a live job's mailbox looks from another container sharing
    // /dev/shm: owned by a pid that says nothing here. Taking it for a
    // crashed run's would delete or replace a live job's endpoint.
    let net = net("foreign");
    let server = net.bind("server").unwrap();
    let foreign = forged_mailbox(&net, "server", "foreign", |b| {
        b[OWNER_START] ^= 0xff;
        b[OWNER_PIDNS] ^= 1;
    });
    assert!(!net.remove_stale().contains(&foreign));
    assert!(foreign.exists());
    let err = net.bind("foreign").unwrap_err().to_string();
    assert!(err.contains("of another PID namespace"), "{err}");
    let mut client = net.bind("client").unwrap();
    // Refused at once, not after the deadline.
    match client.connect("foreign", Instant::now() + Duration::from_secs(600)) {
        Err(Error::Transport { reason }) => {
            assert!(reason.contains("must share one PID namespace"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    std::fs::remove_file(&foreign).unwrap();
    drop(server);
}

#[test]
fn stale_segments_of_every_cluster_can_be_removed_and_live_ones_stay() {
    // Runs that crashed under cluster ids of their own (a launcher's pid)
    // leave segments that `remove_stale`, which looks at one cluster, never
    // sees again. In a directory of its own: other tests' forged
    // segments in /dev/shm are theirs to remove.
    let dir = PathBuf::from(format!("/dev/shm/lgtest-stale-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let in_dir =
        |cluster: &str| ShmTransport::with_config(cluster, ShmConfig::default().dir(&dir)).unwrap();
    let (ours, theirs, crashed) = (in_dir("ours"), in_dir("theirs"), in_dir("crashed"));
    let _live = theirs.bind("server").unwrap();
    let _mine = ours.bind("server").unwrap();
    // A mailbox of cluster `crashed` whose owner died, and one of another
    // PID namespace, both copied from a live one.
    let live = std::fs::read(dir.join("laggard-theirs-ep-server")).unwrap();
    let forge = |name: &str, f: &dyn Fn(&mut [u8])| {
        let mut bytes = live.clone();
        f(&mut bytes);
        let path = dir.join(name);
        write_file(&path, &bytes, 0o600);
        path
    };
    let dead = forge("laggard-crashed-ep-worker-0", &|b| b[OWNER_START] ^= 0xff);
    let foreign = forge("laggard-elsewhere-ep-worker-0", &|b| {
        b[OWNER_START] ^= 0xff;
        b[OWNER_PIDNS] ^= 1;
    });
    // Half made by a process that no longer runs (no pid is 2^22 + 1).
    let half = dir.join(".laggard-crashed-ep-worker-1.4194305.tmp");
    std::fs::write(&half, b"half").unwrap();
    assert!(ours.remove_stale().is_empty(), "none of them is ours");
    let mut removed = ours.remove_stale_of_every_cluster();
    removed.sort();
    assert_eq!(removed, [half, dead]);
    assert_eq!(crashed.segments(), Vec::<String>::new());
    assert_eq!(theirs.segments(), ["laggard-theirs-ep-server"]);
    assert!(foreign.exists());
    std::fs::remove_file(&foreign).unwrap();
    drop((_live, _mine));
    std::fs::remove_dir(&dir).unwrap();
}
