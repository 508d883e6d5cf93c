//! Which parts of a transport's stash are free ([`StashPool`]).

/// The free ranges of a stash: a region of transport memory that an
/// endpoint lends in blocks ([`Endpoint::stash`](super::Endpoint::stash)),
/// kept by the endpoint that lends them.
///
/// Blocks are few and long (pending push rows of 64 KiB and more, given
/// back roughly in the order they were taken, when their pushes are
/// acknowledged), so a first-fit list of free ranges serves. Every block
/// starts at a multiple of the pool's alignment and takes whole units of
/// it.
///
/// ```
/// use laggard::transport::StashPool;
///
/// let mut pool = StashPool::new(1024, 64);
/// let a = pool.take(100).unwrap(); // bytes 0..128
/// let b = pool.take(900);          // only 896 bytes are left
/// assert_eq!((a, b), (0, None));
/// pool.give_back(a, 100);
/// assert_eq!(pool.take(1024), Some(0));
/// ```
#[derive(Debug)]
pub struct StashPool {
    /// `(start, end)`, sorted, disjoint and never touching (touching
    /// ranges are merged).
    free: Vec<(u64, u64)>,
    align: u64,
}

impl StashPool {
    /// A pool with all of `size` bytes free, handing out blocks aligned to
    /// `align` bytes (a power of two; a cache line suits memory that
    /// different processes or a device write).
    ///
    /// # Panics
    /// If `align` is not a power of two.
    pub fn new(size: u64, align: u64) -> Self {
        assert!(
            align.is_power_of_two(),
            "a stash's alignment must be a power of two, not {align}"
        );
        StashPool {
            free: if size > 0 {
                vec![(0, size)]
            } else {
                Vec::new()
            },
            align,
        }
    }

    /// Bytes a block of `len` bytes takes: whole alignment units, at least
    /// one.
    fn block_len(&self, len: u64) -> u64 {
        len.max(1).next_multiple_of(self.align)
    }

    /// The start of a free block of `len` bytes, now taken, or `None` if
    /// no free range is long enough.
    pub fn take(&mut self, len: u64) -> Option<u64> {
        let need = self.block_len(len);
        let i = self.free.iter().position(|&(s, e)| e - s >= need)?;
        let (start, end) = self.free[i];
        if end - start == need {
            self.free.remove(i);
        } else {
            self.free[i].0 = start + need;
        }
        Some(start)
    }

    /// Gives back the block of `len` bytes at `start` that
    /// [`take`](Self::take) returned. Each block goes back once: a block
    /// given back twice, or one the pool did not hand out, would let later
    /// blocks overlap (debug builds panic on it). A transport gives a block
    /// back when the value that holds it is dropped.
    pub fn give_back(&mut self, start: u64, len: u64) {
        let end = start + self.block_len(len);
        let i = self.free.partition_point(|&(s, _)| s < start);
        debug_assert!(
            i == 0 || self.free[i - 1].1 <= start,
            "block given back twice"
        );
        debug_assert!(
            i == self.free.len() || end <= self.free[i].0,
            "block given back twice"
        );
        let joins_prev = i > 0 && self.free[i - 1].1 == start;
        let joins_next = i < self.free.len() && self.free[i].0 == end;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.free[i - 1].1 = self.free[i].1;
                self.free.remove(i);
            }
            (true, false) => self.free[i - 1].1 = end,
            (false, true) => self.free[i].0 = start,
            (false, false) => self.free.insert(i, (start, end)),
        }
    }

    /// Free bytes in all.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALIGN: u64 = 64;

    fn block_len(len: u64) -> u64 {
        len.max(1).next_multiple_of(ALIGN)
    }

    #[test]
    fn blocks_are_aligned_and_come_back_whole() {
        let mut pool = StashPool::new(1024, ALIGN);
        let a = pool.take(100).unwrap();
        let b = pool.take(64).unwrap();
        let c = pool.take(1).unwrap();
        assert_eq!((a, b, c), (0, 128, 192));
        assert_eq!(pool.take(1024), None);
        pool.give_back(b, 64);
        // First fit: the hole left by `b` takes a block that fits it.
        assert_eq!(pool.take(10), Some(128));
        pool.give_back(128, 10);
        pool.give_back(a, 100);
        pool.give_back(c, 1);
        assert_eq!(pool.take(1024), Some(0));
        assert_eq!(StashPool::new(0, ALIGN).take(1), None);
    }

    proptest! {
        /// Against a model of which bytes are taken: blocks never overlap
        /// or leave the stash, a block is found whenever a long enough run
        /// of free lines exists, and everything given back is free again.
        #[test]
        fn matches_a_byte_map(ops in prop::collection::vec((any::<bool>(), 1u64..700, any::<prop::sample::Index>()), 1..200)) {
            const SIZE: u64 = 4096;
            let mut pool = StashPool::new(SIZE, ALIGN);
            let mut used = vec![false; (SIZE / ALIGN) as usize];
            let mut held: Vec<(u64, u64)> = Vec::new();
            for (take, len, pick) in ops {
                if take || held.is_empty() {
                    let lines = block_len(len) / ALIGN;
                    let fits = used
                        .windows(lines as usize)
                        .any(|w| w.iter().all(|u| !u));
                    match pool.take(len) {
                        Some(start) => {
                            prop_assert_eq!(start % ALIGN, 0);
                            prop_assert!(start + block_len(len) <= SIZE);
                            let first = (start / ALIGN) as usize;
                            for u in &mut used[first..first + lines as usize] {
                                prop_assert!(!*u, "overlapping blocks");
                                *u = true;
                            }
                            held.push((start, len));
                        }
                        None => prop_assert!(!fits, "a free run of {} lines was missed", lines),
                    }
                } else {
                    let (start, len) = held.swap_remove(pick.index(held.len()));
                    pool.give_back(start, len);
                    let first = (start / ALIGN) as usize;
                    for u in &mut used[first..first + (block_len(len) / ALIGN) as usize] {
                        *u = false;
                    }
                }
            }
            for (start, len) in held.drain(..) {
                pool.give_back(start, len);
            }
            prop_assert_eq!(pool.free_bytes(), SIZE);
            prop_assert_eq!(pool.take(SIZE), Some(0));
        }
    }
}
