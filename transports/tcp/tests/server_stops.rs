//! A server shard that stops on an error of its own (here its clock hook,
//! as a checkpoint that finds the disk full) tells its workers why over
//! TCP: each fails with that reason, rather than taking the closed
//! connection for a network fault and reconnecting until `dead_after`;
//! also a worker that was busy when the shard stopped and finds its
//! connection closed.

use std::time::Duration;

use laggard::transport::Transport;
use laggard::{ClusterSpec, Consistency, Error, Server, TableSpec, Worker, WorkerId};
use laggard_tcp::TcpTransport;

#[test]
fn a_shard_whose_clock_hook_fails_tells_its_workers_why() {
    let spec = ClusterSpec::new(2, 2)
        .table(
            "w",
            TableSpec::<f32>::dense(0..8, 4).consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(60))
        .dead_after(Duration::from_secs(60));
    let net = TcpTransport::new();
    let servers: Vec<_> = (0..2)
        .map(|shard| {
            let mut server =
                Server::new(net.bind(&spec.server_name(shard)).unwrap(), &spec, shard).unwrap();
            if shard == 0 {
                server
                    .on_clock(3, |clock| {
                        Err(Error::Checkpoint {
                            reason: format!("no room left on the disk for clock {clock}"),
                        })
                    })
                    .unwrap();
            }
            std::thread::spawn(move || server.run_until_workers_done())
        })
        .collect();
    let workers: Vec<_> = (0..2)
        .map(|id| {
            let (net, spec) = (net.clone(), spec.clone());
            std::thread::spawn(move || -> laggard::Result<()> {
                let ep = net.bind(&spec.worker_name(id))?;
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                let mut worker = Worker::connect(ep, &spec, WorkerId(id as u32), deadline)?;
                let table = worker.table::<f32>("w")?;
                let mut rows = [0f32; 8];
                for _ in 0..10 {
                    worker.push(&table, &[0, 4], &[1.0; 8])?;
                    worker.clock()?;
                    worker.pull(&table, &[0, 4], &mut rows)?;
                }
                worker.leave().map(drop)
            })
        })
        .collect();
    for worker in workers {
        match worker.join().unwrap() {
            Err(Error::Remote { peer, message }) => {
                assert_eq!(peer, "server shard 0");
                assert_eq!(
                    message,
                    "the shard stopped: checkpoint: no room left on the disk for clock 3"
                );
            }
            other => panic!("expected shard 0's report, got {other:?}"),
        }
    }
    let mut ended = servers.into_iter().map(|s| s.join().unwrap());
    match ended.next().unwrap() {
        Err(Error::Checkpoint { reason }) => assert!(reason.contains("clock 3"), "{reason}"),
        other => panic!("expected the hook's error, got {other:?}"),
    }
    // The other shard saw both workers go without leaving; it ends once
    // it declared them dead, which this test does not wait for.
    drop(ended);
}

#[test]
fn a_worker_busy_while_its_shard_stopped_hears_why_afterwards() {
    // It used to find the connection closed on its next send, drop the
    // shard's last frame unread and reconnect to nothing until its pull
    // timed out ("server shards to answer a pull").
    laggard_conformance::a_busy_worker_hears_why_its_shard_stopped(&TcpTransport::new());
}
