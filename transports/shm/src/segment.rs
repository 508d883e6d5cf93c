//! Shared-memory segments: files under the segment directory (`/dev/shm`,
//! which is what `shm_open` uses on Linux), mapped shared.
//!
//! A segment is created under a temporary name, initialised, and then
//! linked under its real name, so nobody ever opens a half-written one.
//! Opening checks ownership (our user, mode 0600) and the header before
//! any of its memory is used.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};

use memmap2::{MmapOptions, MmapRaw};

use crate::layout::{HEADER_LEN, Header, Invalid, Owner};

/// A mapped segment. The mapping lives as long as this value, whatever
/// happens to the file's name.
///
/// A segment's file is sparse: memory for its pages is taken when they are
/// first written. On a full file system (a container's 64 MiB `/dev/shm`,
/// say) that write would raise SIGBUS and kill the process, so whoever
/// writes a region first reserves it ([`reserve`](Self::reserve)), which
/// fails with an error instead.
#[derive(Debug)]
pub struct Segment {
    map: MmapRaw,
    len: usize,
    /// Kept to reserve regions as they come into use.
    file: File,
}

impl Segment {
    /// Creates the segment `path` of `header.total` bytes (zeroed), with
    /// mode 0600, reserves its first `fixed` bytes (see
    /// [`reserve`](Self::reserve)), writes `header`, and only then makes
    /// the name visible. Fails with `AlreadyExists` if the name is taken,
    /// and with `StorageFull` if the file system has no room for `fixed`.
    pub fn create(path: &Path, header: &Header, fixed: u64) -> io::Result<Segment> {
        let tmp = path.with_file_name(format!(
            ".{}.{}{TEMP_SUFFIX}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("segment"),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let made = (|| {
            file.set_len(header.total)?;
            let seg = Segment::map(file, header.total)?;
            seg.reserve(0, fixed.min(header.total))?;
            let mut bytes = [0u8; HEADER_LEN];
            header.encode(&mut bytes);
            // SAFETY: the mapping is at least HEADER_LEN bytes (total was
            // checked by the caller's layout) and nobody else can see the
            // file yet: it is still under its private temporary name.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), seg.ptr(0), HEADER_LEN) };
            std::fs::hard_link(&tmp, path)?;
            Ok(seg)
        })();
        let _ = std::fs::remove_file(&tmp);
        made
    }

    /// Opens and checks the segment `path`: owned by us, mode 0600, and a
    /// header that [`Header::decode`] accepts.
    pub fn open(path: &Path) -> Result<(Segment, Header), OpenError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(OpenError::Io)?;
        let meta = file.metadata().map_err(OpenError::Io)?;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(OpenError::Invalid(Invalid(format!(
                "owned by uid {}, not by us (uid {me}): a foreign segment",
                meta.uid()
            ))));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(OpenError::Invalid(Invalid(format!(
                "mode {:o} lets other users in; laggard segments are 0600",
                meta.mode() & 0o777
            ))));
        }
        let len = meta.len();
        if len < HEADER_LEN as u64 {
            return Err(OpenError::Invalid(Invalid(format!(
                "{len} bytes is too short for a laggard segment (truncated?)"
            ))));
        }
        let seg = Segment::map(file, len).map_err(OpenError::Io)?;
        let mut bytes = [0u8; HEADER_LEN];
        // SAFETY: the mapping holds at least HEADER_LEN bytes (checked
        // above); the header was written before the name was linked.
        unsafe { std::ptr::copy_nonoverlapping(seg.ptr(0), bytes.as_mut_ptr(), HEADER_LEN) };
        let header = Header::decode(&bytes, len).map_err(OpenError::Invalid)?;
        Ok((seg, header))
    }

    fn map(file: File, len: u64) -> io::Result<Segment> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        Ok(Segment { map, len, file })
    }

    /// Takes the file system's memory for bytes `off..off + len` now, so
    /// that writing them later cannot fault: `StorageFull` if there is no
    /// room. On a file system that cannot reserve (not tmpfs) this does
    /// nothing, and a full one still faults on the write, as any mapping of
    /// a sparse file does.
    pub fn reserve(&self, off: u64, len: u64) -> io::Result<()> {
        use rustix::io::Errno;
        if len == 0 {
            return Ok(());
        }
        loop {
            match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), off, len) {
                Ok(()) | Err(Errno::OPNOTSUPP | Errno::NOSYS) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A pointer to byte `off`. Callers keep their accesses in bounds.
    pub fn ptr(&self, off: usize) -> *mut u8 {
        debug_assert!(off <= self.len);
        self.map.as_mut_ptr().wrapping_add(off)
    }

    /// The shared word at `off`.
    ///
    /// # Panics
    /// If `off` is out of bounds or not 4-aligned (a layout bug, never
    /// data: offsets come from `layout` constants).
    pub fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(
            off % 4 == 0 && off + 4 <= self.len,
            "word {off} outside the segment"
        );
        // SAFETY: in bounds and aligned (asserted; mappings are page
        // aligned); the mapping lives as long as `self`; shared words are
        // only ever accessed atomically.
        unsafe { &*(self.ptr(off) as *const AtomicU32) }
    }

    /// The shared words from `off`, `count` of them (see [`Self::u32_at`]).
    pub fn u64s_at(&self, off: usize, count: usize) -> &[AtomicU64] {
        assert!(
            off % 8 == 0
                && count
                    .checked_mul(8)
                    .and_then(|b| b.checked_add(off))
                    .is_some_and(|e| e <= self.len),
            "words {off}+{count} outside the segment"
        );
        // SAFETY: in bounds and aligned (asserted); the mapping lives as
        // long as `self`; AtomicU64 has u64's layout.
        unsafe { std::slice::from_raw_parts(self.ptr(off) as *const AtomicU64, count) }
    }

    /// Reads `len` bytes at `off` into a new vector.
    pub fn read_bytes(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(
            off + len <= self.len,
            "bytes {off}+{len} outside the segment"
        );
        let mut out = vec![0u8; len];
        // SAFETY: in bounds (asserted). The bytes are a name its writer
        // published before setting the slot's state with Release, which
        // the caller read with Acquire.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(off), out.as_mut_ptr(), len) };
        out
    }

    /// Writes `bytes` at `off`.
    pub fn write_bytes(&self, off: usize, bytes: &[u8]) {
        assert!(
            off + bytes.len() <= self.len,
            "bytes {off}+{} outside the segment",
            bytes.len()
        );
        // SAFETY: in bounds (asserted). The caller owns the region by
        // protocol (a slot it claimed); a Release store publishes it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(off), bytes.len()) };
    }
}

/// Why [`Segment::open`] failed.
#[derive(Debug)]
pub enum OpenError {
    /// The file could not be opened or mapped (`NotFound`: not there).
    Io(io::Error),
    /// It is not a usable laggard segment.
    Invalid(Invalid),
}

impl Owner {
    /// This process.
    pub fn current() -> io::Result<Owner> {
        let pid = std::process::id();
        Ok(Owner {
            pid,
            start: start_time(pid)?,
            pidns: pid_namespace(),
        })
    }

    /// Whether this owner runs in another PID namespace than `me` (another
    /// container sharing the directory, say), where its pid says nothing:
    /// [`is_alive`](Self::is_alive) cannot tell whether it runs. False if
    /// either namespace is not known.
    pub fn elsewhere(&self, me: &Owner) -> bool {
        self.pidns != 0 && me.pidns != 0 && self.pidns != me.pidns
    }

    /// Whether this process is still running: its pid exists and started
    /// when it did (so a recycled pid does not count).
    pub fn is_alive(&self) -> bool {
        match start_time(self.pid) {
            Ok(start) => start == self.start,
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        }
    }
}

/// This process's PID namespace, as the inode number in the link
/// `/proc/self/ns/pid` (`pid:[4026531836]`); 0 if it cannot be read.
/// Namespace inodes are 32-bit numbers (procfs allocates them so).
fn pid_namespace() -> u32 {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|link| {
            let link = link.to_str()?.strip_prefix("pid:[")?.strip_suffix(']')?;
            link.parse().ok()
        })
        .unwrap_or(0)
}

fn start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Field 2 (the command) is in parentheses and may hold spaces; the
    // fields after it start with field 3, and the start time is field 22.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(22 - 3))
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/<pid>/stat"))
}

const TEMP_SUFFIX: &str = ".tmp";

/// The pid that made the temporary file `name` (`.<segment>.<pid>.tmp`)
/// while creating a segment of the cluster with `prefix`, if it is one.
pub fn temp_file_owner(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_suffix(TEMP_SUFFIX)?;
    if !rest.starts_with(prefix) {
        return None;
    }
    rest.rsplit_once('.')?.1.parse().ok()
}

/// Whether a process with this pid exists (of any age).
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The file name prefix of every laggard segment, of any cluster.
pub const PREFIX: &str = "laggard-";

/// The file name prefix of every segment of `cluster`.
pub fn cluster_prefix(cluster: &str) -> String {
    format!("{PREFIX}{cluster}-")
}

/// The mailbox path of endpoint `name`: unusual characters are escaped so
/// any name maps to one file name and back.
pub fn mailbox_path(dir: &Path, cluster: &str, name: &str) -> PathBuf {
    let mut file = cluster_prefix(cluster);
    file.push_str("ep-");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            file.push(b as char);
        } else {
            file.push_str(&format!("%{b:02x}"));
        }
    }
    dir.join(file)
}

/// The file name of a new connection segment.
pub fn connection_file(cluster: &str, owner: Owner, nonce: u64, serial: u64) -> String {
    format!(
        "{}conn-{}-{nonce:x}-{serial}",
        cluster_prefix(cluster),
        owner.pid,
    )
}
