//! Fuzz body for the wire protocol: arbitrary bytes must decode to an error
//! or to a message that re-encodes to exactly those bytes, and arbitrary
//! frame sequences fed to a server shard's state machine, or to a worker's
//! (pulling, pushing and replaying its own pushes onto what it reads
//! meanwhile), must never panic.
//! Shared by the libFuzzer target and the stable-toolchain corpus replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use laggard::proto::{
    ClientCore, Keys, Output, ServerConfig, ServerCore, ShardTables, TableInfo, Welcome, decode,
    decode_split,
};
use laggard::transport::PeerId;
use laggard::{Consistency, ElementKind, Placement, ShardMap};

const MAX: usize = 1 << 16;

/// One table of 16 keys, rows of 2 × i64; keys `>= 16` are foreign.
struct Tables;

impl ShardTables for Tables {
    fn len(&self) -> usize {
        1
    }

    fn check(&self, table: u32, keys: Keys<'_>, value_len: Option<usize>) -> laggard::Result<()> {
        if table != 0 {
            return Err(laggard::Error::UnknownTable {
                name: format!("#{table}"),
                known: vec!["#0".into()],
            });
        }
        if value_len.is_some_and(|len| Some(len) != keys.len().checked_mul(16)) {
            return Err(laggard::Error::WidthMismatch {
                expected: 2,
                got: 0,
            });
        }
        match keys.iter().find(|&k| k >= 16) {
            Some(key) => Err(laggard::Error::KeyOutOfRange {
                key,
                first: 0,
                last: 15,
            }),
            None => Ok(()),
        }
    }

    // No table here has a row limit: there is no room to promise.
    fn promise(&mut self, _: u32, _: Keys<'_>) -> laggard::Result<Vec<u64>> {
        Ok(Vec::new())
    }
    fn unpromise(&mut self, _: u32, _: &[u64]) {}
    fn apply(&mut self, _: u32, keys: Keys<'_>, values: &[u8]) -> laggard::Result<()> {
        assert_eq!(
            values.len(),
            keys.len() * 16,
            "apply called with an unchecked section"
        );
        Ok(())
    }

    fn row_bytes(&self, _: u32) -> usize {
        16
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    if let Ok(msg) = decode(data, MAX) {
        assert_eq!(
            msg.to_vec(),
            data,
            "{} did not re-encode to its input",
            msg.name()
        );
    }
    // The same bytes with a tail that arrived apart (a stashed push's
    // values): an error, or the message of the whole.
    let cut = data
        .len()
        .saturating_sub(usize::from(data.first().copied().unwrap_or(0) % 64));
    let (head, tail) = data.split_at(cut);
    if let Ok(msg) = decode_split(head, tail, MAX) {
        assert_eq!(
            msg.to_vec(),
            data,
            "{} with a tail did not re-encode to its input",
            msg.name()
        );
    }
    // The same bytes as a session: [peer: 1 byte][len: 2 bytes][frame]...
    let mut server = ServerCore::new(ServerConfig {
        shard: 0,
        workers: 2,
        schema: 1,
        dead_after: Duration::from_millis(5),
        max_payload: MAX,
    });
    let start = Instant::now();
    let mut out = Vec::new();
    for (step, (control, frame, next)) in session(data).enumerate() {
        let peer = PeerId(u64::from(control % 4));
        let now = start + Duration::from_millis(step as u64);
        if next.is_some_and(|b| b & 0x80 != 0) {
            server.on_disconnect(peer, now);
        }
        server.on_frame(peer, frame, now, &mut Tables, &mut out);
        server.poll(now, &mut out);
        // The peer byte's other bits may move the shard's hold (as a clock
        // hook does): to none, or to a clock 0-3.
        match (control >> 2) % 6 {
            0 => {}
            1 => server.hold_from(None, &mut Tables, &mut out),
            bits => server.hold_from(Some(u64::from(bits) - 2), &mut Tables, &mut out),
        }
        for o in out.drain(..) {
            match o {
                Output::Send(_, reply) => {
                    let bytes = reply.message().to_vec();
                    assert!(
                        decode(&bytes, usize::MAX).is_ok(),
                        "server sent an undecodable reply"
                    );
                }
                Output::Rows { keys, .. } => assert!(keys.iter().all(|&k| k < 16)),
                Output::Close(peer) => server.on_disconnect(peer, now),
                Output::Stop => {}
            }
        }
    }
    worker_session(data);
}

/// `data` as a session, `[control: 1 byte][len: 2 bytes][frame]...`:
/// each frame with its control byte and the first byte after it (the
/// next frame's control byte), if any. A length past the end is cut.
fn session(data: &[u8]) -> impl Iterator<Item = (u8, &[u8], Option<u8>)> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 3 {
            return None;
        }
        let control = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let (frame, tail) = rest[3..].split_at(len);
        rest = tail;
        Some((control, frame, rest.first().copied()))
    })
}

/// The same bytes as frames from shard 0 to worker 1, each after a step
/// of the worker's chosen by its control byte: a pull of a key, a push to
/// one, or a flush. The control byte's top bit picks one of the worker's
/// two tables: under SSP(1) with a rule that replays (`Sum`), or under BSP
/// with one that neither replays nor sums (`Assign`).
fn worker_session(data: &[u8]) {
    let Ok(map) = ShardMap::new(Placement::Range, 1, 0..=15) else {
        return;
    };
    let table = |name: &str, consistency, replay, sums_deltas| TableInfo {
        name: name.into(),
        kind: ElementKind::I64,
        width: 2,
        consistency,
        map: map.clone(),
        replay,
        sums_deltas,
    };
    let tables: Arc<[TableInfo]> = Arc::from(vec![
        table("sum", Consistency::Ssp { staleness: 1 }, Some(1.0), true),
        table("set", Consistency::Bsp, None, false),
    ]);
    let mut worker = ClientCore::new(1, 1, tables);
    worker.set_cache_limit(64);
    let welcome = Welcome {
        shard: 0,
        workers: 2,
        applied_seq: 0,
        clock: 0,
    };
    if worker.on_welcome(0, &welcome).is_err() {
        return;
    }
    for (control, frame, _) in session(data) {
        // The top bit picks the table, the four below it the key.
        let (t, key) = (u32::from(control >> 7), u64::from((control >> 3) & 15));
        match control % 4 {
            0 => drop(worker.plan_pull(t, &[key], Duration::from_secs(1))),
            1 => drop(worker.pending_add(t, key, &[1i64, -2])),
            2 => drop(worker.flush(control & 4 != 0)),
            _ => {}
        }
        if control & 4 == 0 {
            drop(worker.on_owned_frame(0, frame.to_vec(), MAX));
        } else if let Ok(msg) = decode(frame, MAX) {
            drop(worker.on_message(0, msg));
        }
    }
}

/// Valid frames of every kind, and a session, to seed the corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    use laggard::proto::*;
    let keys = [1u64, 15];
    let values = [7u8; 32];
    let sections = [Section {
        table: 0,
        keys: Keys::Native(&keys),
        values: &values,
    }];
    let msgs = vec![
        Message::Hello(Hello {
            role: Role::Worker(1),
            schema: 1,
            session: 9,
        }),
        Message::Hello(Hello {
            role: Role::Controller,
            schema: 1,
            session: 0,
        }),
        Message::Welcome(Welcome {
            shard: 0,
            workers: 2,
            applied_seq: 3,
            clock: 4,
        }),
        Message::Push(Push {
            worker: 1,
            seq: 1,
            clock: 0,
            tick: true,
            sections: Sections::Native(&sections),
        }),
        Message::PushAck(PushAck {
            seq: 1,
            min_clock: 0,
        }),
        Message::PullRequest(PullRequest {
            req: 1,
            min_clock: 1,
            timeout_ms: 2,
            table: 0,
            keys: Keys::Native(&keys),
        }),
        Message::PullResponse(PullResponse {
            req: 1,
            clock: 1,
            table: 0,
            rows: 2,
            values: &values,
        }),
        Message::PullTimedOut(PullTimedOut {
            req: 1,
            needed: 2,
            waited_us: 3,
            clocks: vec![(0, 0, 1), (1, 2, 0), (2, 3, 0)],
        }),
        Message::Leave { worker: 1 },
        Message::Shutdown,
        Message::Fault(Fault {
            code: 1,
            text: "bad",
        }),
    ];
    let mut seeds: Vec<Vec<u8>> = msgs.iter().map(Message::to_vec).collect();
    // A session: two workers register, push, pull, one leaves; a controller stops.
    let mut session = Vec::new();
    record(&mut session, 0, &msgs[0].to_vec());
    let hello = Message::Hello(Hello {
        role: Role::Worker(0),
        schema: 1,
        session: 2,
    });
    record(&mut session, 1, &hello.to_vec());
    for (peer, m) in [(0, 3), (1, 5), (0, 8), (2, 1), (2, 9)] {
        record(&mut session, peer, &msgs[m].to_vec());
    }
    seeds.push(session);
    // A replacement: worker 1 registers and pushes; its connection drops
    // (the high bit of the record after an empty frame of peer 0); a new
    // session takes its place and pushes on; the old session comes back
    // and is refused.
    let mut session = Vec::new();
    record(&mut session, 0, &msgs[0].to_vec());
    record(&mut session, 0, &msgs[3].to_vec());
    record(&mut session, 0, &[]);
    let replacement = Message::Hello(Hello {
        role: Role::Worker(1),
        schema: 1,
        session: 10,
    });
    record(&mut session, 0x81, &replacement.to_vec());
    let next = Message::Push(Push {
        worker: 1,
        seq: 2,
        clock: 1,
        tick: true,
        sections: Sections::Native(&sections),
    });
    record(&mut session, 1, &next.to_vec());
    record(&mut session, 2, &msgs[0].to_vec());
    seeds.push(session);
    seeds
}

/// Appends one record of a session: `[peer][len: u16 LE][frame]`.
fn record(session: &mut Vec<u8>, peer: u8, frame: &[u8]) {
    session.push(peer);
    session.extend_from_slice(&(frame.len() as u16).to_le_bytes());
    session.extend_from_slice(frame);
}
