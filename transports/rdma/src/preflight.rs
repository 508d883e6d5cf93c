//! Before anything else: is there a device, is its port up, does it have a
//! usable GID (RoCE) or LID (InfiniBand), and may this process register the
//! memory it needs? Each failure says what to fix.

use std::fmt;
use std::sync::Arc;

use ibverbs_sys as ffi;
use laggard::{Error, Result};

use crate::config::RdmaConfig;
use crate::verbs::{self, Device, Path};

/// What [`preflight`] found: the device, port and address a transport
/// will use.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// The device name (as `ibv_devices` prints it).
    pub device: String,
    /// The port number.
    pub port: u8,
    /// `"Ethernet"` (RoCE) or `"InfiniBand"`.
    pub link_layer: &'static str,
    /// The GID table index used (RoCE), if any.
    pub gid_index: Option<u8>,
    /// The GID at that index (or all zeros).
    pub gid: [u8; 16],
    /// The port's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// The active MTU in bytes.
    pub mtu: u32,
    /// The memlock limit in bytes, `None` if unlimited or exempt (root).
    pub memlock: Option<u64>,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} port {} ({}, MTU {}",
            self.device, self.port, self.link_layer, self.mtu
        )?;
        match self.gid_index {
            Some(i) => write!(f, ", GID {i} {})", format_gid(&self.gid))?,
            None => write!(f, ", LID {})", self.lid)?,
        }
        match self.memlock {
            Some(m) => write!(f, ", memlock {} KiB", m >> 10),
            None => write!(f, ", memlock unlimited"),
        }
    }
}

/// A GID as IPv6 text (IPv4-mapped GIDs print as `::ffff:a.b.c.d`).
pub(crate) fn format_gid(gid: &[u8; 16]) -> String {
    std::net::Ipv6Addr::from(*gid).to_string()
}

fn problem(reason: String) -> Error {
    Error::Transport {
        reason: format!("RDMA preflight: {reason}"),
    }
}

fn mtu_bytes(mtu: ffi::ibv_mtu) -> u32 {
    128 << mtu.clamp(1, 5)
}

fn is_ipv4_mapped(gid: &[u8; 16]) -> bool {
    gid[..10].iter().all(|&b| b == 0) && gid[10] == 0xff && gid[11] == 0xff
}

/// The devices present, or the error a user can act on.
fn pick_device(cfg: &RdmaConfig) -> Result<String> {
    // libibverbs answers ENOSYS where the kernel has no verbs interface
    // at all (no ib_uverbs): as far as the user is concerned, no device.
    let (names, no_uverbs) = match verbs::device_names() {
        Ok(names) => (names, false),
        Err(e) if e.raw_os_error() == Some(38) => (Vec::new(), true),
        Err(e) => return Err(problem(format!("could not list RDMA devices: {e}"))),
    };
    let in_sysfs: Vec<String> = std::fs::read_dir("/sys/class/infiniband")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        if !in_sysfs.is_empty() {
            return Err(problem(format!(
                "the kernel has RDMA devices ({}) but libibverbs found none: install the \
                 user-space provider for them (Debian: ibverbs-providers) and check \
                 /etc/libibverbs.d",
                in_sysfs.join(", ")
            )));
        }
        let why = if no_uverbs {
            "the kernel has no RDMA verbs interface: module ib_uverbs is not loaded"
        } else {
            "ibv_get_device_list found none"
        };
        return Err(problem(format!(
            "this machine has no RDMA device ({why}). Use an InfiniBand or RoCE adapter, \
             or soft-RoCE on any Ethernet interface: \
             `modprobe rdma_rxe && rdma link add rxe0 type rxe netdev eth0`"
        )));
    }
    match &cfg.device {
        None => Ok(names[0].clone()),
        Some(want) if names.contains(want) => Ok(want.clone()),
        Some(want) => Err(problem(format!(
            "no RDMA device named {want:?}; this machine has {}",
            names.join(", ")
        ))),
    }
}

/// Opens the device the settings name and checks everything the transport
/// needs, returning the open device and how to address peers.
pub(crate) fn open(cfg: &RdmaConfig) -> Result<(Arc<Device>, Path, DeviceInfo)> {
    cfg.validate()?;
    let name = pick_device(cfg)?;
    let dev = Device::open(&name)
        .map_err(|e| problem(format!("could not open RDMA device {name}: {e}")))?;
    let attr = dev.port(cfg.port).map_err(|e| {
        problem(format!(
            "could not query port {} of {name} (does the port exist?): {e}",
            cfg.port
        ))
    })?;
    if attr.state != ffi::ibv_port_state::IBV_PORT_ACTIVE {
        let state = match attr.state {
            ffi::ibv_port_state::IBV_PORT_DOWN => "DOWN",
            ffi::ibv_port_state::IBV_PORT_INIT => "INIT",
            ffi::ibv_port_state::IBV_PORT_ARMED => "ARMED",
            _ => "not active",
        };
        return Err(problem(format!(
            "port {} of {name} is {state}: bring its network interface up (`ip link set <iface> up`), \
             check the cable, or on InfiniBand start a subnet manager (opensm)",
            cfg.port
        )));
    }
    let ethernet = attr.link_layer == ffi::IBV_LINK_LAYER_ETHERNET as u8;
    let (gid_index, gid) = if ethernet {
        let entries: Vec<ffi::ibv_gid_entry> = (0..attr.gid_tbl_len.max(0) as u32)
            .filter_map(|i| dev.gid(cfg.port, i))
            .collect();
        // SAFETY (not unsafe): reading the raw bytes of a plain union.
        let raw = |e: &ffi::ibv_gid_entry| {
            // SAFETY: both union variants are plain bytes of the same size.
            unsafe { e.gid.raw }
        };
        let chosen = match cfg.gid_index {
            Some(i) => entries.iter().find(|e| e.gid_index == i as u32).ok_or_else(|| {
                problem(format!(
                    "GID index {i} of {name} port {} is not in use (the table has {} entries in use)",
                    cfg.port,
                    entries.len()
                ))
            })?,
            None => entries
                .iter()
                .find(|e| e.gid_type == ffi::IBV_GID_TYPE_ROCE_V2 && is_ipv4_mapped(&raw(e)))
                .or_else(|| entries.iter().find(|e| e.gid_type == ffi::IBV_GID_TYPE_ROCE_V2))
                .or_else(|| entries.first())
                .ok_or_else(|| {
                    problem(format!(
                        "{name} port {} has no usable GID: RoCE needs an IP address on the \
                         device's network interface (`ip addr add ... dev <iface>`)",
                        cfg.port
                    ))
                })?,
        };
        (Some(chosen.gid_index as u8), raw(chosen))
    } else {
        if attr.lid == 0 {
            return Err(problem(format!(
                "{name} port {} is InfiniBand but has no LID: is a subnet manager (opensm) running?",
                cfg.port
            )));
        }
        (None, [0; 16])
    };
    let memlock = memlock_limit();
    if let Some(limit) = memlock {
        let need = cfg.registered_per_connection();
        if limit < need {
            return Err(problem(format!(
                "the memlock limit is {} KiB but each connection registers {} KiB: raise it \
                 (`ulimit -l unlimited`, `memlock` in /etc/security/limits.conf, LimitMEMLOCK= \
                 for a systemd service, --ulimit memlock=-1 for a container) or lower \
                 RdmaConfig::ring_bytes",
                limit >> 10,
                need >> 10
            )));
        }
    }
    let path = Path {
        port: cfg.port,
        gid_index,
        mtu: attr.active_mtu,
    };
    let info = DeviceInfo {
        device: name,
        port: cfg.port,
        link_layer: if ethernet { "Ethernet" } else { "InfiniBand" },
        gid_index,
        gid,
        lid: attr.lid,
        mtu: mtu_bytes(attr.active_mtu),
        memlock,
    };
    Ok((dev, path, info))
}

/// The memlock limit that applies to this process, `None` if unlimited or
/// if the process may lock any amount (root).
fn memlock_limit() -> Option<u64> {
    if rustix::process::geteuid().is_root() {
        return None;
    }
    rustix::process::getrlimit(rustix::process::Resource::Memlock).current
}

/// Runs the checks a transport runs before its first endpoint: a device
/// exists (the one [`RdmaConfig::device`] names, or any), its port is
/// active, it has a usable GID (RoCE) or LID (InfiniBand), and the memlock
/// limit covers one connection's registered memory. The error says what to
/// fix.
///
/// ```no_run
/// match laggard_rdma::preflight(&laggard_rdma::RdmaConfig::default()) {
///     Ok(info) => println!("RDMA ready: {info}"),
///     Err(e) => eprintln!("{e}"),
/// }
/// ```
pub fn preflight(cfg: &RdmaConfig) -> Result<DeviceInfo> {
    open(cfg).map(|(_, _, info)| info)
}
