//! Assembling a cluster across processes and hosts: one rendezvous at a
//! coordinator (rank 0) that collects every process's address and hands
//! out the cluster map.
//!
//! Every process of the job runs the same program. Each learns its rank,
//! the world size and the coordinator's address from the launcher's
//! environment ([`Bootstrap::from_env`]: torchrun, Slurm, Open MPI, or
//! `LAGGARD_*` variables) or from code ([`Bootstrap::new`]), builds the
//! same [`ClusterSpec`], and calls [`Bootstrap::join`]. The coordinator
//! checks that everyone agrees (world size, server count, the spec's
//! fingerprint, no rank claimed twice), places the server shards spread
//! across hosts, and answers each process with the map and its role.
//!
//! After that, for as long as rank 0's endpoints live, the coordinator
//! answers processes that join late with a worker's rank: a process
//! started again after its predecessor died gets the map and, through
//! [`Node::worker`], takes the worker's place at its clock (see
//! [`Worker`]). A server's rank cannot be taken over: its table lives
//! nowhere else.
//!
//! ```no_run
//! use laggard::{ClusterSpec, Sgd, TableSpec};
//! use laggard_tcp::{Bootstrap, Role};
//!
//! let boot = Bootstrap::from_env()?;
//! let spec = ClusterSpec::new(boot.servers(), boot.workers())
//!     .table("w", TableSpec::<f32>::dense(0..1024, 8).update(Sgd::new(0.1)));
//! let node = boot.join(&spec)?;
//! match node.role() {
//!     Role::Server(_) => {
//!         let report = node.run_server()?; // until every worker left or died
//!         println!("{:?}", report.stats);
//!     }
//!     Role::Worker(_) => {
//!         let mut worker = node.worker()?;
//!         // ... push, pull, clock ...
//!         worker.leave()?;
//!     }
//! }
//! # Ok::<(), laggard::Error>(())
//! ```

mod env;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use laggard::{ClusterSpec, Error, Result, Server, ServerReport, Worker, WorkerId};

pub use env::{DEFAULT_PORT, Launcher};

use crate::descriptors;
use crate::{TcpConfig, TcpEndpoint, TcpTransport};

const VERSION: u32 = 2;
/// The longest job id a join carries, in characters: launchers' ids are
/// far shorter, and a join line must fit in [`MAX_JOIN_LINE`].
const JOB_ID_MAX: usize = 128;
/// How long past the deadline a process waits for the coordinator's
/// verdict.
const VERDICT_GRACE: Duration = Duration::from_secs(1);
/// How long a failed rendezvous keeps telling late processes why.
const ERROR_GRACE: Duration = Duration::from_secs(2);

/// A process's role in the cluster, assigned by the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Server shard number `.0`.
    Server(usize),
    /// Worker `.0`.
    Worker(WorkerId),
}

/// One process in the cluster map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its role.
    pub role: Role,
    /// Its rank in the launcher's numbering.
    pub rank: usize,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// How to find the rest of the job: rank, world size, coordinator, and
/// how many of the processes are servers.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    launcher: Launcher,
    rank: usize,
    world: usize,
    servers: usize,
    coordinator: String,
    host: Option<String>,
    job: Option<String>,
    timeout: Duration,
    tcp: TcpConfig,
}

impl Bootstrap {
    /// Process `rank` of `world`, of which `servers` are server shards,
    /// meeting at `coordinator` (`host:port`, where rank 0 listens).
    /// Times out after 60 s by default.
    pub fn new(rank: usize, world: usize, servers: usize, coordinator: &str) -> Self {
        Bootstrap {
            launcher: Launcher::Laggard,
            rank,
            world,
            servers,
            coordinator: coordinator.to_owned(),
            host: None,
            job: None,
            timeout: Duration::from_secs(60),
            tcp: TcpConfig::default(),
        }
    }

    /// Reads the placement from this process's environment: torchrun
    /// (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`; the rendezvous uses
    /// `MASTER_PORT + 1`, since torchrun's own store holds `MASTER_PORT`), Slurm
    /// (`SLURM_PROCID`, `SLURM_NTASKS`, the job's first node as
    /// coordinator, on port 29500 plus `SLURM_JOB_ID` modulo 1000 unless
    /// `LAGGARD_PORT` says), Open MPI (`OMPI_COMM_WORLD_RANK`,
    /// `OMPI_COMM_WORLD_SIZE`, with `MASTER_ADDR` or `LAGGARD_COORDINATOR`),
    /// overridden by `LAGGARD_RANK`, `LAGGARD_WORLD_SIZE`,
    /// `LAGGARD_COORDINATOR`, `LAGGARD_SERVERS` (default 1),
    /// `LAGGARD_HOST` (the address others reach this process at) and
    /// `LAGGARD_TIMEOUT_MS`; the job id ([`job`](Self::job)) from
    /// `SLURM_JOB_ID` (with `SLURM_STEP_ID`), `TORCHELASTIC_RUN_ID` or
    /// `PMIX_NAMESPACE`, overridden by `LAGGARD_JOB_ID`.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), with variables looked up by `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let p = env::placement(&get)?;
        let mut b = Bootstrap::new(p.rank, p.world, p.servers.unwrap_or(1), &p.coordinator);
        b.launcher = p.launcher;
        b.host = p.host;
        b.job = p.job;
        if let Some(t) = p.timeout {
            b.timeout = t;
        }
        Ok(b)
    }

    /// How long joining may take, waiting for every process.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The address other processes reach this one at: an IP address, or a
    /// host name, resolved here (default: the local address of the route
    /// to the coordinator). It must be an address of this host.
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }

    /// The job this process belongs to (read from the launcher by
    /// [`from_env`](Self::from_env): `SLURM_JOB_ID`, `TORCHELASTIC_RUN_ID`,
    /// `PMIX_NAMESPACE`, or `LAGGARD_JOB_ID` over them). A coordinator
    /// with a job id refuses the joins of processes of another job (two
    /// jobs given one coordinator address, as on a node two jobs share),
    /// telling them so, and goes on with its own; without one on either
    /// side, any join of the right shape is taken. Whitespace in `id`
    /// becomes `_`, and only its first 128 characters count.
    pub fn job(mut self, id: &str) -> Self {
        self.job = job_id(id);
        self
    }

    /// Settings of the TCP transport the cluster runs on.
    pub fn tcp_config(mut self, cfg: TcpConfig) -> Self {
        self.tcp = cfg;
        self
    }

    /// Which launcher's environment described the job.
    pub fn launcher(&self) -> Launcher {
        self.launcher
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Processes in the job.
    pub fn world(&self) -> usize {
        self.world
    }

    /// How many processes are server shards.
    pub fn servers(&self) -> usize {
        self.servers
    }

    /// How many processes are workers.
    pub fn workers(&self) -> usize {
        self.world.saturating_sub(self.servers)
    }

    fn check(&self, spec: &ClusterSpec) -> Result<()> {
        let invalid = |reason: String| Error::InvalidConfig {
            what: "bootstrap",
            reason,
        };
        if self.servers == 0 || self.servers >= self.world {
            return Err(invalid(format!(
                "{} servers in a job of {} processes; at least one of each role is needed",
                self.servers, self.world
            )));
        }
        if self.rank >= self.world {
            return Err(invalid(format!(
                "rank {} is outside a world of {}",
                self.rank, self.world
            )));
        }
        if spec.servers() != self.servers || spec.workers() != self.workers() {
            return Err(invalid(format!(
                "the spec describes {} servers and {} workers, but the job has {} servers \
                 and {} workers; build it with ClusterSpec::new(boot.servers(), boot.workers())",
                spec.servers(),
                spec.workers(),
                self.servers,
                self.workers()
            )));
        }
        spec.validate()?;
        self.tcp.validate()
    }

    /// Meets every other process at the coordinator (rank 0 runs it), and
    /// returns this process's part of the cluster. Fails with a clear
    /// error within the timeout if the coordinator is unreachable, a
    /// process disagrees about the job, or a rank is claimed twice.
    ///
    /// A process joining after the rendezvous, with the rank of a worker
    /// whose process died, is answered with the map while rank 0 runs (see
    /// the [module docs](self)); rank 0 keeps the rendezvous port until its
    /// endpoints are dropped.
    pub fn join(self, spec: &ClusterSpec) -> Result<Node> {
        self.check(spec)?;
        laggard::check_wait("Bootstrap::timeout", self.timeout)?;
        let deadline = Instant::now() + self.timeout;
        let coord = resolve(&self.coordinator)?;
        // Before rank 0 starts the coordinator, which would otherwise run
        // until its deadline for a job this process then fails to join.
        // (Its own listener comes after the coordinator's port is taken:
        // a launcher may have picked that port from the ephemeral range.)
        let ip = match &self.host {
            Some(h) => host_ip(h, coord)?,
            None => local_ip_towards(coord),
        };
        let coordinator = if self.rank == 0 {
            let listener = TcpListener::bind((unspecified_like(coord.ip()), coord.port()))
                .map_err(|e| Error::Transport {
                    reason: format!(
                        "rank 0 cannot listen for the rendezvous on port {}: {e}; pick \
                             another port (MASTER_PORT, LAGGARD_COORDINATOR) or stop whatever \
                             holds it",
                        coord.port()
                    ),
                })?;
            let (world, servers, schema) = (self.world, self.servers, spec.fingerprint());
            let job_id = self.job.clone();
            let stop = Arc::new(AtomicBool::new(false));
            let (done_tx, done_rx) = mpsc::channel();
            let stopping = stop.clone();
            let thread = std::thread::Builder::new()
                .name("laggard-coordinator".into())
                .spawn(move || {
                    let ours = job_id.as_deref();
                    let job = (world, servers, schema);
                    let rendezvous = coordinate(&listener, job, ours, deadline, &stopping);
                    let _ = done_tx.send(());
                    if let Ok(members) = rendezvous {
                        answer_late_joins(&listener, members, job, ours, &stopping);
                    }
                })
                .map_err(|e| Error::Transport {
                    reason: format!("rank 0 could not start its rendezvous thread: {e}"),
                })?;
            Some((
                Coordinator {
                    stop,
                    thread: Some(thread),
                },
                done_rx,
            ))
        } else {
            None
        };
        let listener = TcpListener::bind((ip, 0)).map_err(|e| Error::Transport {
            reason: match (&self.host, e.kind()) {
                (Some(_), std::io::ErrorKind::AddrNotAvailable) => format!(
                    "cannot listen on {ip}: {e}; the bootstrap host (LAGGARD_HOST, \
                     Bootstrap::host) must be an address of this host"
                ),
                _ => format!("cannot listen on {ip}: {e}"),
            },
        })?;
        let addr = listener.local_addr().map_err(|e| Error::Transport {
            reason: format!("cannot read the listening address: {e}"),
        })?;
        // Rank 0 joins its own coordinator over loopback (it listens on
        // every address): the address the others reach it at may not
        // lead back to it from inside (a Kubernetes service without
        // hairpin NAT, a port published out of a container).
        let via = if self.rank == 0 {
            SocketAddr::new(loopback_like(coord.ip()), coord.port())
        } else {
            coord
        };
        let answer = rendezvous(&self, via, spec.fingerprint(), addr, deadline);
        let transport = TcpTransport::with_config(self.tcp.clone())?;
        if let Some((coordinator, done)) = coordinator {
            // The coordinator's own failure is what every rank was told.
            let _ = done.recv();
            // It goes on answering processes that take the place of a
            // worker, for as long as this process's endpoints live.
            transport.keep_alive(Box::new(coordinator));
        }
        let (members, role) = answer?;
        for m in &members {
            let name = match m.role {
                Role::Server(s) => spec.server_name(s),
                Role::Worker(w) => spec.worker_name(w.0 as usize),
            };
            transport.set_address(&name, m.addr);
        }
        Ok(Node {
            role,
            rank: self.rank,
            members,
            transport,
            listener,
            spec: spec.clone(),
        })
    }
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::InvalidConfig {
            what: "coordinator address",
            reason: format!("{addr:?} does not resolve to host:port"),
        })
}

/// The bootstrap host `h` as an address: an IP address (an IPv6 one may
/// come in brackets, as in `[fd00::1]`), or a host name (`$(hostname)`),
/// resolved to an address of the coordinator's family if it has one.
fn host_ip(h: &str, coord: SocketAddr) -> Result<IpAddr> {
    let bare = h.trim().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip);
    }
    let found: Vec<IpAddr> = (bare, 0)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .unwrap_or_default();
    found
        .iter()
        .find(|ip| ip.is_ipv4() == coord.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| Error::InvalidConfig {
            what: "bootstrap host",
            reason: format!("{h:?} is neither an IP address nor a host name that resolves"),
        })
}

/// The local address of the route to `to` (no packet is sent).
fn local_ip_towards(to: SocketAddr) -> IpAddr {
    if to.ip().is_loopback() {
        return to.ip();
    }
    UdpSocket::bind((unspecified_like(to.ip()), 0))
        .and_then(|s| s.connect(to).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(loopback_like(to.ip()))
}

/// The loopback address of `ip`'s family.
fn loopback_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// Every address of `ip`'s family (`0.0.0.0` or `::`): where a listener
/// for peers that reach us at `ip` binds. An IPv6 coordinator address
/// (`[::1]:29500`, or a host name that resolves to one) used to get a
/// listener on IPv4 only, which nobody could reach.
fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// One process's part of a bootstrapped cluster.
#[derive(Debug)]
pub struct Node {
    role: Role,
    rank: usize,
    members: Vec<Member>,
    transport: TcpTransport,
    listener: TcpListener,
    spec: ClusterSpec,
}

impl Node {
    /// This process's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Every process of the cluster: role, rank and address.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Runs this process's server shard until every worker has left or
    /// been declared dead. Fails if this process is a worker.
    pub fn run_server(self) -> Result<ServerReport> {
        self.server()?.run_until_workers_done()
    }

    /// This process's server shard, bound and not yet serving: reach its
    /// tables with [`Server::table`] (to load a checkpoint before it serves
    /// and save one after), then call
    /// [`run_until_workers_done`](Server::run_until_workers_done). Fails if
    /// this process is a worker.
    pub fn server(self) -> Result<Server<TcpEndpoint>> {
        let Role::Server(shard) = self.role else {
            return Err(Error::InvalidConfig {
                what: "node role",
                reason: format!("rank {} is {:?}, not a server", self.rank, self.role),
            });
        };
        let ep = self
            .transport
            .bind_on(&self.spec.server_name(shard), self.listener)?;
        Server::new(ep, &self.spec, shard)
    }

    /// Connects this process's worker to every server shard. Fails if this
    /// process is a server.
    pub fn worker(self) -> Result<Worker<TcpEndpoint>> {
        let Role::Worker(id) = self.role else {
            return Err(Error::InvalidConfig {
                what: "node role",
                reason: format!("rank {} is {:?}, not a worker", self.rank, self.role),
            });
        };
        let ep = self
            .transport
            .bind_on(&self.spec.worker_name(id.0 as usize), self.listener)?;
        let deadline = Instant::now() + self.spec.default_timeout();
        Worker::connect(ep, &self.spec, id, deadline)
    }
}

/// A process's announcement at the rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Join {
    rank: usize,
    world: usize,
    servers: usize,
    schema: u64,
    addr: SocketAddr,
    /// The process's job id (`-` on the wire if it has none).
    job: Option<String>,
}

impl Join {
    fn line(&self) -> String {
        format!(
            "laggard-join {VERSION} {} {} {} {:#x} {} {}\n",
            self.rank,
            self.world,
            self.servers,
            self.schema,
            self.addr,
            self.job.as_deref().unwrap_or("-")
        )
    }

    fn parse(line: &str) -> std::result::Result<Join, String> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("not a laggard join: {:?}", line.trim());
        if f.len() < 2 || f[0] != "laggard-join" {
            return Err(bad());
        }
        // Before the fields, whose number changes with the version.
        if f[1] != VERSION.to_string() {
            return Err(format!(
                "rendezvous version {} (this coordinator speaks {VERSION}); run one laggard \
                 version everywhere",
                f[1]
            ));
        }
        if f.len() != 8 {
            return Err(bad());
        }
        let num = |s: &str| s.parse::<usize>().map_err(|_| bad());
        Ok(Join {
            rank: num(f[2])?,
            world: num(f[3])?,
            servers: num(f[4])?,
            schema: u64::from_str_radix(f[5].trim_start_matches("0x"), 16).map_err(|_| bad())?,
            addr: f[6].parse().map_err(|_| bad())?,
            job: Some(f[7]).filter(|&j| j != "-").map(str::to_owned),
        })
    }
}

/// Sends this process's join and reads the map or the error.
fn rendezvous(
    boot: &Bootstrap,
    coord: SocketAddr,
    schema: u64,
    addr: SocketAddr,
    deadline: Instant,
) -> Result<(Vec<Member>, Role)> {
    let started = Instant::now();
    let mut last = String::new();
    let stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::NoResponse {
                what: format!(
                    "the coordinator at {coord} (rank 0) to accept a connection; is rank 0 \
                     running and reachable? (last error: {last})"
                ),
                waited: started.elapsed(),
            });
        }
        match TcpStream::connect_timeout(&coord, left) {
            Ok(s) => break s,
            Err(e) => {
                last = e.to_string();
                std::thread::sleep(Duration::from_millis(50).min(left));
            }
        }
    };
    let io = |e: std::io::Error| Error::Transport {
        reason: format!("the rendezvous with {coord} failed: {e}"),
    };
    // The coordinator gives its verdict (the map, or why not) at the
    // deadline at the latest; wait a moment longer so that verdict, not a
    // bare timeout, is what this process reports.
    let left = deadline.saturating_duration_since(Instant::now()) + VERDICT_GRACE;
    stream.set_read_timeout(Some(left)).map_err(io)?;
    let join = Join {
        rank: boot.rank,
        world: boot.world,
        servers: boot.servers,
        schema,
        addr,
        job: boot.job.clone(),
    };
    (&stream).write_all(join.line().as_bytes()).map_err(io)?;
    let mut members = Vec::new();
    let mut role = None;
    // A line per process and one to end it, each far shorter than this:
    // a peer that is not a coordinator cannot make this process buffer
    // without end.
    let limit = ((boot.world + 1) * MAX_JOIN_LINE) as u64;
    let mut reader = BufReader::new((&stream).take(limit));
    for line in (&mut reader).lines() {
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::NoResponse {
                what: format!("every process of the job to join at {coord}"),
                waited: started.elapsed(),
            },
            _ => io(e),
        })?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || Error::Protocol {
            peer: format!("coordinator {coord}"),
            reason: format!("unexpected line {line:?}"),
        };
        match f.as_slice() {
            ["error", ..] => {
                return Err(Error::Remote {
                    peer: format!("coordinator {coord}"),
                    message: line["error".len()..].trim().to_owned(),
                });
            }
            [kind, index, rank, addr] => {
                let index: usize = index.parse().map_err(|_| bad())?;
                let member = Member {
                    role: parse_role(kind, index).ok_or_else(bad)?,
                    rank: rank.parse().map_err(|_| bad())?,
                    addr: addr.parse().map_err(|_| bad())?,
                };
                if member.rank == boot.rank {
                    role = Some(member.role);
                }
                members.push(member);
            }
            ["end"] => {
                let role = role.ok_or_else(bad)?;
                return Ok((members, role));
            }
            _ => return Err(bad()),
        }
    }
    if reader.get_ref().limit() == 0 {
        return Err(Error::Protocol {
            peer: format!("coordinator {coord}"),
            reason: format!(
                "its cluster map ran past {limit} bytes, more than {} processes need",
                boot.world
            ),
        });
    }
    Err(Error::Disconnected {
        peer: format!("coordinator {coord}"),
        reason: "it closed the rendezvous before sending the cluster map".into(),
    })
}

fn parse_role(kind: &str, index: usize) -> Option<Role> {
    match kind {
        "server" => Some(Role::Server(index)),
        "worker" => Some(Role::Worker(WorkerId(u32::try_from(index).ok()?))),
        _ => None,
    }
}

/// Places `servers` shards spread across hosts (one per host in turn, the
/// lowest ranks first); the other ranks are workers in rank order.
fn place(joins: &[Join], servers: usize) -> Vec<Member> {
    let mut hosts: Vec<(IpAddr, Vec<usize>)> = Vec::new();
    for j in joins {
        match hosts.iter_mut().find(|(ip, _)| *ip == j.addr.ip()) {
            Some((_, ranks)) => ranks.push(j.rank),
            None => hosts.push((j.addr.ip(), vec![j.rank])),
        }
    }
    let mut server_ranks = Vec::new();
    let mut round = 0;
    while server_ranks.len() < servers {
        for (_, ranks) in &hosts {
            if let Some(&r) = ranks.get(round) {
                if server_ranks.len() < servers {
                    server_ranks.push(r);
                }
            }
        }
        round += 1;
    }
    let mut members: Vec<Member> = server_ranks
        .iter()
        .enumerate()
        .map(|(shard, &r)| Member {
            role: Role::Server(shard),
            rank: r,
            addr: joins[r].addr,
        })
        .collect();
    let workers = joins.iter().filter(|j| !server_ranks.contains(&j.rank));
    for (id, j) in workers.enumerate() {
        members.push(Member {
            role: Role::Worker(WorkerId(id as u32)),
            rank: j.rank,
            addr: j.addr,
        });
    }
    members
}

/// Rank 0's coordinator thread, answering late joins after the
/// rendezvous; stopped (and waited for) on drop.
struct Coordinator {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// After the rendezvous: a process that joins with the rank of a worker
/// (a new process taking the place of one that died) gets the map, with
/// that rank at its new address; it then connects as the worker and goes
/// on from its clock ([`Worker::connect`]). A server's rank cannot be
/// taken over (its table is nowhere else), nor can rank 0 (the
/// coordinator itself). Runs until `stop`.
fn answer_late_joins(
    listener: &TcpListener,
    mut members: Vec<Member>,
    (world, servers, schema): (usize, usize, u64),
    job: Option<&str>,
    stop: &AtomicBool,
) {
    let mut arrivals = Arrivals::new(world);
    let _ = listener.set_nonblocking(true);
    // Relaxed: the flag carries no data; the thread is joined after it.
    while !stop.load(Ordering::Relaxed) {
        let Some((stream, read)) = arrivals.next(listener) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let answer = match read {
            Err(e) => format!("error {e}\n"),
            Ok(join) => {
                match other_job(&join, job).or_else(|| check_join(&join, world, servers, schema)) {
                    Some(problem) => format!("error {problem}\n"),
                    None => match members.iter_mut().find(|m| m.rank == join.rank) {
                        Some(m) if matches!(m.role, Role::Worker(_)) && join.rank != 0 => {
                            m.addr = join.addr;
                            map_lines(&members)
                        }
                        _ => format!(
                            "error rank {} joined after the job started; only a worker's rank can \
                         be taken over by a new process (a server shard's table lives nowhere \
                         else: restart the job, from a checkpoint)\n",
                            join.rank
                        ),
                    },
                }
            }
        };
        let _ = (&stream).write_all(answer.as_bytes());
    }
}

/// The longest join line the coordinator reads (a real one is under 200
/// bytes): whatever connects to its port cannot make it buffer more.
const MAX_JOIN_LINE: usize = 1024;

/// Reads a process's join line from `stream` (waiting at most `timeout`,
/// reading at most [`MAX_JOIN_LINE`] bytes).
fn read_join(stream: &TcpStream, timeout: Duration) -> std::result::Result<Join, String> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(timeout));
    let mut line = Vec::new();
    BufReader::new(stream.take(MAX_JOIN_LINE as u64))
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?;
    parse_join_bytes(&line)
}

/// A join line as it arrived: at most [`MAX_JOIN_LINE`] bytes, ending in a
/// newline.
fn parse_join_bytes(line: &[u8]) -> std::result::Result<Join, String> {
    if !line.ends_with(b"\n") {
        return Err(if line.len() >= MAX_JOIN_LINE {
            format!("not a laggard join: no line break in its first {MAX_JOIN_LINE} bytes")
        } else {
            format!(
                "not a laggard join: the connection ended after {} bytes, before a line break",
                line.len()
            )
        });
    }
    let line = std::str::from_utf8(line)
        .map_err(|_| "not a laggard join: the line is not UTF-8".to_owned())?;
    Join::parse(line)
}

/// A connection to the coordinator whose join line is still arriving.
/// The coordinator reads every such connection a little at a time, so one
/// that sends nothing (a port scanner, a stray client) holds up no other.
struct Arriving {
    stream: TcpStream,
    line: Vec<u8>,
}

impl Arriving {
    /// Reads what has arrived without waiting: the join once its line is
    /// complete (or why it is not one), `None` while more may come.
    fn poll(&mut self) -> Option<std::result::Result<Join, String>> {
        let mut buf = [0u8; 256];
        loop {
            let want = buf.len().min(MAX_JOIN_LINE - self.line.len());
            match (&self.stream).read(&mut buf[..want]) {
                Ok(0) => return Some(parse_join_bytes(&self.line)),
                Ok(n) => {
                    let got = &buf[..n];
                    if let Some(end) = got.iter().position(|&b| b == b'\n') {
                        self.line.extend_from_slice(&got[..=end]);
                        return Some(parse_join_bytes(&self.line));
                    }
                    self.line.extend_from_slice(got);
                    if self.line.len() >= MAX_JOIN_LINE {
                        return Some(parse_join_bytes(&self.line));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}

/// The connections to the coordinator whose join lines are arriving.
struct Arrivals {
    waiting: Vec<Arriving>,
    /// How many it keeps at once; past that, the oldest is dropped (each
    /// holds a descriptor).
    cap: usize,
    /// Set when accepting failed because the process has no file
    /// descriptor left: the connections beyond wait unanswered.
    starved: Option<std::io::Error>,
}

impl Arrivals {
    fn new(world: usize) -> Self {
        Arrivals {
            waiting: Vec::new(),
            cap: (2 * world).max(16),
            starved: None,
        }
    }

    /// Takes the connections pending on `listener` (which must not
    /// block), then returns one whose join line is complete, or that
    /// failed, back in blocking mode; `None` if none is yet.
    fn next(
        &mut self,
        listener: &TcpListener,
    ) -> Option<(TcpStream, std::result::Result<Join, String>)> {
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if descriptors::out_of_descriptors(&e) {
                        self.starved = Some(e);
                    }
                    break;
                }
            };
            if stream.set_nonblocking(true).is_ok() {
                if self.waiting.len() == self.cap {
                    self.waiting.remove(0);
                }
                self.waiting.push(Arriving {
                    stream,
                    line: Vec::new(),
                });
            }
        }
        let (i, read) = self
            .waiting
            .iter_mut()
            .enumerate()
            .find_map(|(i, a)| a.poll().map(|read| (i, read)))?;
        let stream = self.waiting.swap_remove(i).stream;
        let _ = stream.set_nonblocking(false);
        Some((stream, read))
    }
}

/// Why `join` comes from another job than `ours`, if both have an id and
/// they differ.
fn other_job(join: &Join, ours: Option<&str>) -> Option<String> {
    match (join.job.as_deref(), ours) {
        (Some(theirs), Some(ours)) if theirs != ours => Some(format!(
            "this coordinator serves job {ours}, not job {theirs}: two jobs were given one \
             coordinator address (on a node they share, say); give each its own port \
             (LAGGARD_PORT, MASTER_PORT or LAGGARD_COORDINATOR)"
        )),
        _ => None,
    }
}

/// A job id as it goes on the wire: whitespace made `_`, at most
/// [`JOB_ID_MAX`] characters (a join line is bounded); `None` if empty (or
/// `-`, which means none there).
fn job_id(id: &str) -> Option<String> {
    let id: String = id
        .trim()
        .chars()
        .take(JOB_ID_MAX)
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    (!id.is_empty() && id != "-").then_some(id)
}

/// Why `join` does not belong to this job, if it does not.
fn check_join(join: &Join, world: usize, servers: usize, schema: u64) -> Option<String> {
    if join.world != world {
        Some(format!(
            "rank {} says the job has {} processes, rank 0 says {world}",
            join.rank, join.world
        ))
    } else if join.servers != servers {
        Some(format!(
            "rank {} says {} servers, rank 0 says {servers}",
            join.rank, join.servers
        ))
    } else if join.schema != schema {
        Some(format!(
            "rank {} built a different cluster spec (fingerprint {:#x}, rank 0 has \
             {schema:#x}): every process must declare the same tables",
            join.rank, join.schema
        ))
    } else if join.rank >= world {
        Some(format!("rank {} is outside a world of {world}", join.rank))
    } else {
        None
    }
}

/// The cluster map as the coordinator sends it.
fn map_lines(members: &[Member]) -> String {
    let mut map = String::new();
    for m in members {
        let (kind, index) = match m.role {
            Role::Server(s) => ("server", s),
            Role::Worker(w) => ("worker", w.0 as usize),
        };
        map.push_str(&format!("{kind} {index} {} {}\n", m.rank, m.addr));
    }
    map.push_str("end\n");
    map
}

/// Rank 0's side: collects `world` joins, checks them, and answers each
/// with the map or with the error that stopped the rendezvous. Returns
/// the map. Gives up at `deadline`, or at once when `stop` is set (rank
/// 0's own join failed).
fn coordinate(
    listener: &TcpListener,
    (world, servers, schema): (usize, usize, u64),
    job: Option<&str>,
    deadline: Instant,
    stop: &AtomicBool,
) -> std::result::Result<Vec<Member>, String> {
    let mut joined: Vec<Option<(TcpStream, Join)>> = (0..world).map(|_| None).collect();
    let mut extra = Vec::new();
    let mut arrivals = Arrivals::new(world);
    let mut error = None;
    let _ = listener.set_nonblocking(true);
    while error.is_none() && joined.iter().any(Option::is_none) {
        // Relaxed: the flag carries no data; the thread is joined after it.
        if stop.load(Ordering::Relaxed) {
            // Rank 0's own join failed (its error is in its own output):
            // the job cannot meet, so nobody waits for the deadline.
            error = Some(
                "rank 0 could not take part in its own rendezvous (see its error), so the job \
                 cannot start"
                    .into(),
            );
            break;
        }
        if Instant::now() >= deadline {
            let missing: Vec<usize> = (0..world).filter(|&r| joined[r].is_none()).collect();
            error = Some(format!(
                "only {} of {world} processes joined in time; missing ranks {missing:?}",
                world - missing.len()
            ));
            break;
        }
        let arrived = arrivals.next(listener);
        if let Some(e) = arrivals.starved.take() {
            // Every process holds a connection until the map goes out, so
            // a job this size cannot meet here; say why now, not at the
            // deadline as if ranks were missing.
            error = Some(format!(
                "rank 0 has no file descriptor left for the rendezvous, where it holds a \
                 connection to each of the job's {world} processes until all have joined: {}",
                descriptors::advice(&e)
            ));
            extra.extend(arrived.map(|(stream, _)| stream));
            break;
        }
        let Some((stream, read)) = arrived else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let join = match read {
            Ok(j) => j,
            Err(e) => {
                let _ = (&stream).write_all(format!("error {e}\n").as_bytes());
                continue;
            }
        };
        // Another job's process is told so and dropped; this job goes on.
        if let Some(why) = other_job(&join, job) {
            let _ = (&stream).write_all(format!("error {why}\n").as_bytes());
            continue;
        }
        let problem = check_join(&join, world, servers, schema).or_else(|| {
            joined[join.rank].as_ref().map(|(_, first)| {
                format!(
                    "rank {} is claimed by two processes, at {} and {}",
                    join.rank, first.addr, join.addr
                )
            })
        });
        match problem {
            Some(p) => {
                error = Some(p);
                extra.push(stream);
            }
            None => {
                let r = join.rank;
                joined[r] = Some((stream, join));
            }
        }
    }
    if let Some(e) = &error {
        let line = format!("error {e}\n");
        let mut told = 0;
        for s in joined.iter().flatten().map(|(s, _)| s).chain(&extra) {
            let _ = (&*s).write_all(line.as_bytes());
            told += 1;
        }
        // Processes still on their way are told too, for a little while,
        // rather than finding the coordinator gone.
        let grace = (Instant::now() + ERROR_GRACE).min(deadline);
        let tell = |s: TcpStream| {
            let _ = s.set_nonblocking(false);
            // Read its join first: closing on unread bytes would reset the
            // connection and lose the answer.
            let left = grace.saturating_duration_since(Instant::now());
            let _ = read_join(
                &s,
                left.clamp(Duration::from_millis(1), Duration::from_millis(200)),
            );
            let _ = (&s).write_all(line.as_bytes());
        };
        for a in arrivals.waiting {
            tell(a.stream);
            told += 1;
        }
        while told < world && Instant::now() < grace {
            match listener.accept() {
                Ok((s, _)) => {
                    tell(s);
                    told += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        return Err(e.clone());
    }
    let joins: Vec<Join> = joined.iter().flatten().map(|(_, j)| j.clone()).collect();
    let members = place(&joins, servers);
    let map = map_lines(&members);
    for (s, _) in joined.iter().flatten() {
        let _ = (&*s).write_all(map.as_bytes());
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(rank: usize, ip: [u8; 4]) -> Join {
        Join {
            rank,
            world: 6,
            servers: 2,
            schema: 7,
            addr: SocketAddr::from((ip, 1000 + rank as u16)),
            job: None,
        }
    }

    #[test]
    fn job_ids_go_on_the_wire_and_only_two_known_different_ones_clash() {
        let mut j = join(2, [10, 0, 0, 9]);
        assert_eq!(Join::parse(&j.line()).unwrap().job, None);
        j.job = job_id(" 1234.0 ");
        assert_eq!(
            Join::parse(&j.line()).unwrap().job.as_deref(),
            Some("1234.0")
        );
        assert_eq!(job_id("run id\t7").as_deref(), Some("run_id_7"));
        assert_eq!(job_id(" "), None);
        assert_eq!(job_id(&"x".repeat(1000)).map(|j| j.len()), Some(JOB_ID_MAX));
        assert_eq!(job_id("-"), None);
        assert!(other_job(&j, Some("1234.0")).is_none());
        assert!(other_job(&j, None).is_none());
        let why = other_job(&j, Some("99")).unwrap();
        assert!(why.contains("serves job 99, not job 1234.0"), "{why}");
        j.job = None;
        assert!(other_job(&j, Some("99")).is_none());
    }

    #[test]
    fn a_join_line_must_end_within_its_bound_and_be_text() {
        let j = join(2, [10, 0, 0, 9]);
        assert_eq!(parse_join_bytes(j.line().as_bytes()), Ok(j));
        let long = vec![b'a'; MAX_JOIN_LINE];
        let err = parse_join_bytes(&long).unwrap_err();
        assert!(
            err.contains("no line break in its first 1024 bytes"),
            "{err}"
        );
        let err = parse_join_bytes(b"laggard-join 1 2").unwrap_err();
        assert!(err.contains("ended after 16 bytes"), "{err}");
        let err = parse_join_bytes(b"laggard-join \xff\n").unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn joins_round_trip_and_garbage_is_refused() {
        let j = join(3, [10, 0, 0, 2]);
        assert_eq!(Join::parse(&j.line()), Ok(j));
        assert!(Join::parse("GET / HTTP/1.1").is_err());
        assert!(
            Join::parse("laggard-join 9 0 1 1 0x1 1.2.3.4:5")
                .unwrap_err()
                .contains("version")
        );
    }

    #[test]
    fn servers_are_spread_across_hosts() {
        // Ranks 0-2 on host a, 3-5 on host b.
        let joins: Vec<Join> = (0..6)
            .map(|r| join(r, if r < 3 { [10, 0, 0, 1] } else { [10, 0, 0, 2] }))
            .collect();
        let members = place(&joins, 2);
        let servers: Vec<usize> = members
            .iter()
            .filter(|m| matches!(m.role, Role::Server(_)))
            .map(|m| m.rank)
            .collect();
        assert_eq!(servers, [0, 3], "one server per host");
        let workers: Vec<(u32, usize)> = members
            .iter()
            .filter_map(|m| match m.role {
                Role::Worker(w) => Some((w.0, m.rank)),
                Role::Server(_) => None,
            })
            .collect();
        assert_eq!(workers, [(0, 1), (1, 2), (2, 4), (3, 5)]);
    }
}
