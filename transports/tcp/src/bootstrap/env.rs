//! Reading a process's place in the job from the launcher's environment.

use std::time::Duration;

use laggard::{Error, Result};

/// The default coordinator port when the launcher names only a host
/// (torchrun's default too).
pub const DEFAULT_PORT: u16 = 29500;
/// Under Slurm the coordinator listens on `DEFAULT_PORT` plus the job id
/// modulo this, so that jobs sharing their first node rarely meet on one
/// port.
const SLURM_PORT_SPREAD: u64 = 1000;

/// Which launcher's variables described the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `LAGGARD_*` variables only.
    Laggard,
    /// torchrun / torch.distributed: `RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
    /// `MASTER_PORT` (laggard meets on `MASTER_PORT + 1`: torchrun's own
    /// store holds `MASTER_PORT`).
    Torchrun,
    /// Slurm: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_JOB_NODELIST`.
    Slurm,
    /// Open MPI: `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`.
    OpenMpi,
}

/// What the environment says about this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) launcher: Launcher,
    pub(crate) rank: usize,
    pub(crate) world: usize,
    pub(crate) coordinator: String,
    pub(crate) servers: Option<usize>,
    pub(crate) host: Option<String>,
    pub(crate) timeout: Option<Duration>,
    /// The launcher's job id, or `LAGGARD_JOB_ID`.
    pub(crate) job: Option<String>,
}

fn parse<T: std::str::FromStr>(var: &str, value: &str) -> Result<T> {
    value.trim().parse().map_err(|_| Error::InvalidConfig {
        what: "launcher environment",
        reason: format!("{var}={value:?} is not a valid number"),
    })
}

/// Port variable `var`, if set: a number that is a TCP port.
fn port(get: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<Option<usize>> {
    let Some(value) = get(var) else {
        return Ok(None);
    };
    let port: usize = parse(var, &value)?;
    if port > usize::from(u16::MAX) {
        return Err(Error::InvalidConfig {
            what: "launcher environment",
            reason: format!("{var}={port} is not a TCP port (at most 65535)"),
        });
    }
    Ok(Some(port))
}

/// The first host of a Slurm node list: `node[03-05,9]` gives `node03`,
/// `a,b` gives `a`.
pub(crate) fn first_slurm_host(list: &str) -> Option<String> {
    let list = list.trim();
    let end = list.find([',', '[']).unwrap_or(list.len());
    let prefix = &list[..end];
    if list[end..].starts_with('[') {
        let inner = &list[end + 1..];
        let first = inner.split([',', '-', ']']).next()?;
        Some(format!("{prefix}{first}"))
    } else if prefix.is_empty() {
        None
    } else {
        Some(prefix.to_owned())
    }
}

/// `host` and `port` as one address: an IPv6 literal in brackets
/// (`fd00::1` and 29501 give `[fd00::1]:29501`; written bare, its last
/// group would read as the port).
fn host_port(host: &str, port: usize) -> String {
    let host = host.trim();
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A coordinator address with [`DEFAULT_PORT`] if it names no port:
/// `host`, `10.0.0.1`, `fd00::1` and `[fd00::1]` get it; `host:1` and
/// `[fd00::1]:1` keep theirs.
fn with_default_port(addr: &str) -> String {
    let addr = addr.trim();
    let bracketed = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']'));
    match bracketed {
        Some(v6) => host_port(v6, usize::from(DEFAULT_PORT)),
        None if addr.contains(':') && addr.parse::<std::net::Ipv6Addr>().is_err() => {
            addr.to_owned()
        }
        None => host_port(addr, usize::from(DEFAULT_PORT)),
    }
}

/// Reads the placement from variables looked up with `get`. `LAGGARD_*`
/// variables override whatever a launcher set.
pub(crate) fn placement(get: &dyn Fn(&str) -> Option<String>) -> Result<Placement> {
    let missing = |what: &str| Error::InvalidConfig {
        what: "launcher environment",
        reason: format!(
            "{what}; run under torchrun, Slurm (srun) or Open MPI (mpirun), or set \
             LAGGARD_RANK, LAGGARD_WORLD_SIZE, LAGGARD_COORDINATOR (host:port) and \
             LAGGARD_SERVERS"
        ),
    };
    let num = |var: &str| get(var).map(|v| parse::<usize>(var, &v)).transpose();
    let (launcher, rank, world, host, job) = if let (Some(r), Some(w)) =
        (num("RANK")?, num("WORLD_SIZE")?)
    {
        // torchrun's agent serves its own store on MASTER_PORT at that
        // host, so the rendezvous takes the next port.
        let master = port(get, "MASTER_PORT")?.unwrap_or(usize::from(DEFAULT_PORT));
        if master == usize::from(u16::MAX) {
            return Err(Error::InvalidConfig {
                what: "launcher environment",
                reason: format!(
                    "MASTER_PORT={master}: laggard meets on the port after torchrun's, and \
                     there is none; give torchrun a lower --master-port, or set \
                     LAGGARD_COORDINATOR (host:port)"
                ),
            });
        }
        let port = master + 1;
        let coord = get("MASTER_ADDR").map(|a| host_port(&a, port));
        let job = get("TORCHELASTIC_RUN_ID");
        (Launcher::Torchrun, Some(r), Some(w), coord, job)
    } else if let (Some(r), Some(w)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
        let host = get("SLURM_JOB_NODELIST")
            .or_else(|| get("SLURM_NODELIST"))
            .and_then(|l| first_slurm_host(&l));
        let job_id = get("SLURM_JOB_ID");
        // Jobs sharing their first node meet on different ports unless
        // their ids end alike (then the coordinator tells them apart).
        let spread = job_id
            .as_deref()
            .and_then(|id| id.trim().parse::<u64>().ok())
            .map_or(0, |id| (id % SLURM_PORT_SPREAD) as usize);
        let port = port(get, "LAGGARD_PORT")?.unwrap_or(usize::from(DEFAULT_PORT) + spread);
        let job = job_id.map(|id| match get("SLURM_STEP_ID") {
            Some(step) => format!("{id}.{step}"),
            None => id,
        });
        (
            Launcher::Slurm,
            Some(r),
            Some(w),
            host.map(|h| host_port(&h, port)),
            job,
        )
    } else if let (Some(r), Some(w)) = (num("OMPI_COMM_WORLD_RANK")?, num("OMPI_COMM_WORLD_SIZE")?)
    {
        // Open MPI names no rendezvous host; MASTER_ADDR or
        // LAGGARD_COORDINATOR must.
        let port = port(get, "MASTER_PORT")?.unwrap_or(usize::from(DEFAULT_PORT));
        let coord = get("MASTER_ADDR").map(|a| host_port(&a, port));
        let job = get("PMIX_NAMESPACE");
        (Launcher::OpenMpi, Some(r), Some(w), coord, job)
    } else {
        (Launcher::Laggard, None, None, None, None)
    };
    let job = get("LAGGARD_JOB_ID")
        .or(job)
        .and_then(|id| super::job_id(&id));
    let rank = num("LAGGARD_RANK")?
        .or(rank)
        .ok_or_else(|| missing("no rank is set"))?;
    let world = num("LAGGARD_WORLD_SIZE")?
        .or(world)
        .ok_or_else(|| missing("no world size is set"))?;
    let coordinator = get("LAGGARD_COORDINATOR")
        .or(host)
        .ok_or_else(|| missing("no coordinator address is set"))?;
    let coordinator = with_default_port(&coordinator);
    let timeout = num("LAGGARD_TIMEOUT_MS")?.map(|ms| Duration::from_millis(ms as u64));
    Ok(Placement {
        launcher,
        rank,
        world,
        coordinator,
        servers: num("LAGGARD_SERVERS")?,
        host: get("LAGGARD_HOST"),
        timeout,
        job,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Placement> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        placement(&|k| map.get(k).cloned())
    }

    #[test]
    fn job_ids_and_slurm_ports_come_from_the_launcher() {
        let slurm = |extra: &[(&'static str, &'static str)]| {
            let mut vars = vec![
                ("SLURM_PROCID", "1"),
                ("SLURM_NTASKS", "4"),
                ("SLURM_JOB_NODELIST", "gpu[07-09]"),
            ];
            vars.extend_from_slice(extra);
            from(&vars).unwrap()
        };
        let p = slurm(&[("SLURM_JOB_ID", "123456"), ("SLURM_STEP_ID", "0")]);
        assert_eq!(p.job.as_deref(), Some("123456.0"));
        // Two jobs on one first node: ports apart by their ids.
        assert_eq!(p.coordinator, "gpu07:29956");
        assert_eq!(
            slurm(&[("SLURM_JOB_ID", "123457")]).coordinator,
            "gpu07:29957"
        );
        let p = slurm(&[("SLURM_JOB_ID", "123456"), ("LAGGARD_PORT", "40000")]);
        assert_eq!(p.coordinator, "gpu07:40000");
        assert_eq!(slurm(&[]).job, None);
        let p = slurm(&[("SLURM_JOB_ID", "123456"), ("LAGGARD_JOB_ID", "mine")]);
        assert_eq!(p.job.as_deref(), Some("mine"));
        let p = from(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("TORCHELASTIC_RUN_ID", "sweep 7"),
        ])
        .unwrap();
        assert_eq!(p.job.as_deref(), Some("sweep_7"));
    }

    #[test]
    fn torchrun() {
        let p = from(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap();
        assert_eq!(p.launcher, Launcher::Torchrun);
        assert_eq!((p.rank, p.world), (3, 8));
        // MASTER_PORT itself is torchrun's store; laggard meets on the next.
        assert_eq!(p.coordinator, "10.0.0.1:1235");
    }

    #[test]
    fn ports_past_65535_are_refused_by_name() {
        // They used to become "127.0.0.1:65536 does not resolve".
        let torchrun = |port| {
            from(&[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "10.0.0.1"),
                ("MASTER_PORT", port),
            ])
        };
        assert_eq!(torchrun("65534").unwrap().coordinator, "10.0.0.1:65535");
        let err = torchrun("65535").unwrap_err().to_string();
        assert!(
            err.contains("MASTER_PORT=65535: laggard meets on the port after torchrun's"),
            "{err}"
        );
        let err = torchrun("70000").unwrap_err().to_string();
        assert!(err.contains("MASTER_PORT=70000 is not a TCP port"), "{err}");
        let err = from(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_JOB_NODELIST", "n1"),
            ("LAGGARD_PORT", "65536"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("LAGGARD_PORT=65536 is not a TCP port"),
            "{err}"
        );
    }

    #[test]
    fn ipv6_addresses_get_brackets_and_a_port() {
        let p = from(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "fd00::1"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap();
        assert_eq!(p.coordinator, "[fd00::1]:1235");
        for (given, meant) in [
            ("fd00::1", "[fd00::1]:29500"),
            ("[fd00::1]", "[fd00::1]:29500"),
            ("[fd00::1]:7", "[fd00::1]:7"),
            ("head", "head:29500"),
            ("head:7", "head:7"),
            ("10.0.0.1", "10.0.0.1:29500"),
        ] {
            let p = from(&[
                ("LAGGARD_RANK", "0"),
                ("LAGGARD_WORLD_SIZE", "2"),
                ("LAGGARD_COORDINATOR", given),
            ])
            .unwrap();
            assert_eq!(p.coordinator, meant, "{given}");
            // IP literals parse as socket addresses (no lookup).
            let literal = !given.starts_with("head");
            assert_eq!(
                meant.parse::<std::net::SocketAddr>().is_ok(),
                literal,
                "{meant}"
            );
        }
    }

    #[test]
    fn slurm_takes_the_first_host_of_the_job() {
        let p = from(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "6"),
            ("SLURM_JOB_NODELIST", "gpu[07-09,12]"),
        ])
        .unwrap();
        assert_eq!(p.launcher, Launcher::Slurm);
        assert_eq!((p.rank, p.world), (5, 6));
        assert_eq!(p.coordinator, format!("gpu07:{DEFAULT_PORT}"));
        assert_eq!(first_slurm_host("a,b").as_deref(), Some("a"));
        assert_eq!(first_slurm_host("single").as_deref(), Some("single"));
        assert_eq!(first_slurm_host("").as_deref(), None);
    }

    #[test]
    fn open_mpi_needs_a_coordinator() {
        let err =
            from(&[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "4")]).unwrap_err();
        assert!(err.to_string().contains("coordinator"), "{err}");
        let p = from(&[
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("LAGGARD_COORDINATOR", "head:7000"),
        ])
        .unwrap();
        assert_eq!(p.launcher, Launcher::OpenMpi);
        assert_eq!((p.rank, p.world), (2, 4));
        assert_eq!(p.coordinator, "head:7000");
    }

    #[test]
    fn laggard_variables_override_the_launcher() {
        let p = from(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("LAGGARD_RANK", "1"),
            ("LAGGARD_SERVERS", "2"),
            ("LAGGARD_TIMEOUT_MS", "1500"),
            ("LAGGARD_HOST", "10.0.0.9"),
        ])
        .unwrap();
        assert_eq!((p.rank, p.world), (1, 8));
        assert_eq!(p.coordinator, format!("10.0.0.1:{}", DEFAULT_PORT + 1));
        assert_eq!(p.servers, Some(2));
        assert_eq!(p.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(p.host.as_deref(), Some("10.0.0.9"));
    }

    #[test]
    fn nothing_set_or_garbage_is_a_clear_error() {
        let err = from(&[]).unwrap_err();
        assert!(err.to_string().contains("LAGGARD_RANK"), "{err}");
        let err = from(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(err.to_string().contains("RANK=\"x\""), "{err}");
    }
}
