//! A whole cluster in one process over the in-process transport: the
//! default for trying laggard, for tests and for the demo.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::server::{Server, downcast_part, send_message};
use super::spec::ClusterSpec;
use super::worker::Worker;
use crate::clock::WorkerId;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::proto::{Hello, Message, Role, ServerStats, decode};
use crate::table::Table;
use crate::transport::{Endpoint, Event, InProcess, InProcessEndpoint, Transport};

/// How long [`Cluster::shutdown`] tries to reach a shard at a time before
/// it looks again whether the shard's thread has ended by itself.
const CONNECT_ATTEMPT: Duration = Duration::from_millis(20);

/// S server shards on their own threads and P workers, all in this
/// process, connected by an [`InProcess`] network of their own (two
/// clusters never see each other).
///
/// ```
/// use laggard::{Cluster, ClusterSpec, Consistency, TableSpec};
///
/// let spec = ClusterSpec::new(2, 3).table(
///     "counts",
///     TableSpec::<i64>::dense(0..10, 2).consistency(Consistency::Ssp { staleness: 1 }),
/// );
/// let cluster = Cluster::start(spec)?;
/// cluster.run_workers(|worker| {
///     let counts = worker.table::<i64>("counts")?;
///     let mut row = [0i64; 2];
///     for _ in 0..5 {
///         worker.pull(&counts, &[7], &mut row)?;
///         worker.push(&counts, &[7], &[1, 10])?;
///         worker.clock()?;
///     }
///     Ok(())
/// })?;
/// let mut row = [0i64; 2];
/// cluster.read::<i64>("counts", &[7], &mut row)?;
/// assert_eq!(row, [15, 150]); // 3 workers × 5 clocks
/// cluster.shutdown()?;
/// # Ok::<(), laggard::Error>(())
/// ```
pub struct Cluster {
    spec: ClusterSpec,
    net: InProcess,
    servers: Vec<JoinHandle<Result<ServerStats>>>,
    /// `parts[table][shard]`: each server's part, type-erased.
    parts: Vec<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts the cluster's servers on threads of their own, on a new
    /// in-process network.
    pub fn start(spec: ClusterSpec) -> Result<Self> {
        Self::start_on(spec, InProcess::new())
    }

    /// Starts the servers on the given in-process network (e.g. one built
    /// with a smaller capacity).
    pub fn start_on(spec: ClusterSpec, net: InProcess) -> Result<Self> {
        Self::start_prepared(spec, net, |_| Ok(()))
    }

    /// Starts the cluster after `prepare` ran on each server shard (in
    /// shard order, before any serves): to load a checkpoint into its
    /// [`table`](Server::table)s and [`start_at`](Server::start_at) its
    /// clock, or to register a clock hook ([`Server::on_clock`]). If
    /// `prepare` fails for any shard, no server starts and the error is
    /// returned.
    ///
    /// ```
    /// use laggard::{Cluster, ClusterSpec, TableSpec, checkpoint};
    ///
    /// let spec = ClusterSpec::new(2, 1).table("w", TableSpec::<i64>::dense(0..4, 2));
    /// # let mut files = vec![Vec::new(), Vec::new()];
    /// # Cluster::start_with(spec.clone(), |server| {
    /// #     let part = server.table::<i64>("w")?;
    /// #     checkpoint::save_at(&part, 30, &mut files[server.shard()]).map(drop)
    /// # })?.shutdown()?;
    /// // `files[shard]`: what that shard saved at clock 30 (files in practice).
    /// let cluster = Cluster::start_with(spec, |server| {
    ///     let part = server.table::<i64>("w")?;
    ///     let loaded = checkpoint::load(&part, &files[server.shard()][..], checkpoint::Foreign::Refuse)?;
    ///     server.start_at(loaded.clock)
    /// })?;
    /// cluster.run_workers(|worker| {
    ///     assert_eq!(worker.current_clock(), 30);
    ///     Ok(())
    /// })?;
    /// cluster.shutdown()?;
    /// # Ok::<(), laggard::Error>(())
    /// ```
    pub fn start_with(
        spec: ClusterSpec,
        prepare: impl FnMut(&mut Server<InProcessEndpoint>) -> Result<()>,
    ) -> Result<Self> {
        Self::start_prepared(spec, InProcess::new(), prepare)
    }

    fn start_prepared(
        spec: ClusterSpec,
        net: InProcess,
        mut prepare: impl FnMut(&mut Server<InProcessEndpoint>) -> Result<()>,
    ) -> Result<Self> {
        spec.validate()?;
        let mut prepared = Vec::with_capacity(spec.servers);
        let mut parts = vec![Vec::new(); spec.tables.len()];
        for shard in 0..spec.servers {
            let ep = net.bind(&spec.server_name(shard))?;
            let mut server = Server::new(ep, &spec, shard)?;
            prepare(&mut server)?;
            for (t, part) in parts.iter_mut().enumerate() {
                part.push(server.typed_part(t));
            }
            prepared.push(server);
        }
        let mut servers = Vec::new();
        for server in prepared {
            let handle = std::thread::Builder::new()
                .name(spec.server_name(server.shard()))
                .spawn(move || server.run())
                .map_err(|e| Error::Transport {
                    reason: format!("could not start a server thread: {e}"),
                })?;
            servers.push(handle);
        }
        Ok(Cluster {
            spec,
            net,
            servers,
            parts,
        })
    }

    /// The cluster's spec.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The network the cluster runs on.
    pub fn network(&self) -> &InProcess {
        &self.net
    }

    /// Connects worker `id` (for running workers on threads of your own).
    pub fn worker(&self, id: usize) -> Result<Worker<InProcessEndpoint>> {
        let ep = self.net.bind(&self.spec.worker_name(id))?;
        let deadline = Instant::now() + self.spec.timeout;
        Worker::connect(ep, &self.spec, WorkerId(id as u32), deadline)
    }

    /// Runs `f` once per worker, each on its own thread with its own
    /// connected [`Worker`]; a worker whose `f` succeeds then leaves
    /// (flushing its pushes). Returns the results in worker order, or the
    /// first error.
    ///
    /// A worker whose `f` fails drops its connection without leaving; the
    /// servers declare it dead after the spec's `dead_after`, so the
    /// others are held back at most that long.
    ///
    /// If the system refuses a thread (too many workers for its limits),
    /// no further worker starts and that error is returned, once the
    /// workers that did start have ended: under BSP or SSP they wait for
    /// the missing ones until the spec's timeout.
    pub fn run_workers<R, F>(&self, f: F) -> Result<Vec<R>>
    where
        R: Send,
        F: Fn(&mut Worker<InProcessEndpoint>) -> Result<R> + Sync,
    {
        let f = &f;
        let (results, refused): (Vec<Result<R>>, _) = std::thread::scope(|s| {
            let mut handles = Vec::with_capacity(self.spec.workers);
            let mut refused = None;
            for id in 0..self.spec.workers {
                let spawned = std::thread::Builder::new()
                    .name(self.spec.worker_name(id))
                    .spawn_scoped(s, move || -> Result<R> {
                        let mut worker = self.worker(id)?;
                        let result = f(&mut worker)?;
                        worker.leave()?;
                        Ok(result)
                    });
                match spawned {
                    Ok(handle) => handles.push(handle),
                    Err(e) => {
                        refused = Some(Error::Transport {
                            reason: format!(
                                "could not start a thread for worker {id} of {}: {e}; run \
                                 fewer workers per process, or raise the process's thread \
                                 limit (ulimit -u)",
                                self.spec.workers
                            ),
                        });
                        break;
                    }
                }
            }
            let results = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect();
            (results, refused)
        });
        match refused {
            Some(e) => Err(e),
            None => results.into_iter().collect(),
        }
    }

    /// Server shard `shard`'s part of table `name`, shared with the running
    /// server: for checkpoints ([`checkpoint::save`](crate::checkpoint::save)
    /// of every shard's part, [`checkpoint::load`](crate::checkpoint::load)
    /// before workers start) and inspection. See [`Server::table`].
    pub fn server_table<T: Element>(&self, name: &str, shard: usize) -> Result<Arc<Table<T>>> {
        let (index, _) = self.spec.typed_table::<T>(name)?;
        let part = self.parts[index].get(shard).ok_or(Error::ShardOutOfRange {
            shard,
            shards: self.spec.servers,
        })?;
        downcast_part(part)
    }

    /// Reads rows of table `name` straight from the servers' storage
    /// (bypassing the protocol; for inspecting results and tests).
    pub fn read<T: Element>(&self, name: &str, keys: &[u64], out: &mut [T]) -> Result<()> {
        let (index, info) = self.spec.typed_table::<T>(name)?;
        if keys.len().checked_mul(info.width) != Some(out.len()) {
            return Err(Error::BatchShape {
                keys: keys.len(),
                width: info.width,
                values: out.len(),
            });
        }
        for (&key, row) in keys.iter().zip(out.chunks_exact_mut(info.width)) {
            let shard = info.map.shard_of(key)?;
            downcast_part::<T>(&self.parts[index][shard])?.pull(key, row)?;
        }
        Ok(())
    }

    /// Stops the servers and returns their counters, shard by shard.
    ///
    /// A shard that panicked (in a table's update rule or the clock hook,
    /// say) has told its workers and stopped by itself; its panic goes on
    /// from here, once every other shard was stopped.
    pub fn shutdown(mut self) -> Result<Vec<ServerStats>> {
        self.stop(true)
    }

    /// Tells each shard still serving to stop and waits for it; a shard
    /// that did not take the request is left running (its thread detached)
    /// rather than waited for without end. With `rethrow`, a shard's panic
    /// goes on here.
    fn stop(&mut self, rethrow: bool) -> Result<Vec<ServerStats>> {
        let deadline = Instant::now() + self.spec.timeout;
        let mut first_error = None;
        let mut panicked = None;
        let mut stats = Vec::with_capacity(self.servers.len());
        let servers = std::mem::take(&mut self.servers);
        for (shard, handle) in servers.into_iter().enumerate() {
            if let Err(e) = self.send_shutdown(shard, &handle, deadline) {
                // A shard that stopped by itself (and told its workers
                // why) closes the controller's connection as it ends.
                while !handle.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if !handle.is_finished() {
                    first_error.get_or_insert(e);
                    continue;
                }
            }
            match handle.join() {
                Ok(result) => stats.push(result),
                Err(panic) => {
                    panicked.get_or_insert(panic);
                }
            }
        }
        if let Some(panic) = panicked.filter(|_| rethrow) {
            std::panic::resume_unwind(panic);
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        stats.into_iter().collect()
    }

    /// Connects to shard `shard`, served by `thread`, as a controller and
    /// asks it to stop; nothing to do once the thread has ended.
    fn send_shutdown(
        &self,
        shard: usize,
        thread: &JoinHandle<Result<ServerStats>>,
        deadline: Instant,
    ) -> Result<()> {
        let mut ep = self.net.bind("laggard-controller")?;
        let hello = Message::Hello(Hello {
            role: Role::Controller,
            schema: self.spec.fingerprint(),
            session: 0,
        });
        // A shard that stopped by itself is gone from the network before
        // its thread has ended: connect a little at a time, looking at the
        // thread in between, rather than wait for the name to come back.
        let peer = loop {
            if thread.is_finished() {
                return Ok(());
            }
            let attempt = (Instant::now() + CONNECT_ATTEMPT).min(deadline);
            match ep.connect(&self.spec.server_name(shard), attempt) {
                Ok(peer) => break peer,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {}
            }
        };
        send_message(&mut ep, peer, &hello, deadline)?;
        let started = Instant::now();
        loop {
            match ep.recv(deadline)? {
                Some(Event::Frame(_, frame)) => {
                    if let Ok(Message::Welcome(_)) = decode(&frame, self.spec.max_payload) {
                        break;
                    }
                }
                Some(Event::Disconnected(_)) => {
                    return Err(Error::Disconnected {
                        peer: format!("server shard {shard}"),
                        reason: "it closed the controller's connection before stopping".into(),
                    });
                }
                Some(Event::Connected(_)) => {}
                None => {
                    return Err(Error::NoResponse {
                        what: format!("server shard {shard} to accept the controller"),
                        waited: started.elapsed(),
                    });
                }
            }
        }
        send_message(&mut ep, peer, &Message::Shutdown, deadline)?;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Best effort: a cluster dropped without `shutdown` still stops its
        // server threads rather than leaking them.
        let _ = self.stop(false);
    }
}
