//! Which shard owns a key: a value every participant can compute and agree on.

use std::ops::RangeInclusive;

use crate::error::{Error, Result, invalid};

/// How keys are spread over shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Contiguous blocks of the key range, one per shard (the default for
    /// dense tables: a shard holds one slice of the model).
    Range,
    /// Key `k` goes to shard `(k - first) % shards`: neighbouring keys land
    /// on different shards, spreading hot ranges.
    RoundRobin,
    /// A mixing hash of the key modulo the shard count (the default for
    /// sparse tables, whose keys are arbitrary ids). Sparse tables only.
    Hash,
}

/// A placement applied to a key space and a shard count: maps every key to
/// the shard that owns it, and (for dense tables) to its row inside it.
///
/// ```
/// use laggard::{Placement, ShardMap};
///
/// let map = ShardMap::new(Placement::Range, 4, 0..=99)?;
/// assert_eq!(map.shard_of(0)?, 0);
/// assert_eq!(map.shard_of(99)?, 3);
/// assert!(map.shard_of(100).is_err());
/// # Ok::<(), laggard::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    placement: Placement,
    shards: usize,
    first: u64,
    last: u64,
    /// Keys per shard under `Range` placement (the last shard may hold fewer).
    chunk: u128,
}

impl ShardMap {
    /// Most shards a table may have.
    pub const MAX_SHARDS: usize = 1 << 16;

    /// A map of the keys `keys` onto `shards` shards.
    pub fn new(placement: Placement, shards: usize, keys: RangeInclusive<u64>) -> Result<Self> {
        let (first, last) = keys.into_inner();
        if shards == 0 || shards > Self::MAX_SHARDS {
            return Err(invalid(
                "shard count",
                format!("{shards} is not in 1..={}", Self::MAX_SHARDS),
            ));
        }
        if first > last {
            return Err(invalid("key range", format!("{first}..={last} is empty")));
        }
        let span = u128::from(last - first) + 1;
        let chunk = span.div_ceil(shards as u128);
        Ok(ShardMap {
            placement,
            shards,
            first,
            last,
            chunk,
        })
    }

    /// The placement rule.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The keys this map covers.
    pub fn keys(&self) -> RangeInclusive<u64> {
        self.first..=self.last
    }

    /// The shard that owns `key`, or an error if `key` is outside the map's keys.
    #[inline]
    pub fn shard_of(&self, key: u64) -> Result<usize> {
        match self.placement {
            Placement::Hash => {
                self.offset(key)?;
                Ok((mix64(key) % self.shards as u64) as usize)
            }
            Placement::Range | Placement::RoundRobin => self.locate(key).map(|(shard, _)| shard),
        }
    }

    /// `key - first`, or an error if `key` is outside the map's keys.
    #[inline]
    fn offset(&self, key: u64) -> Result<u64> {
        if key < self.first || key > self.last {
            return Err(Error::KeyOutOfRange {
                key,
                first: self.first,
                last: self.last,
            });
        }
        Ok(key - self.first)
    }

    /// The shard that owns `key` and the row index of `key` inside it, for
    /// `Range` and `RoundRobin` placement (dense tables), in 64-bit
    /// arithmetic: this is on every dense push and pull.
    #[inline]
    pub(crate) fn locate(&self, key: u64) -> Result<(usize, u64)> {
        let offset = self.offset(key)?;
        if self.shards == 1 {
            return Ok((0, offset));
        }
        // With two or more shards the chunk is at most 2^63, so it fits.
        let n = self.shards as u64;
        Ok(match self.placement {
            Placement::Range => {
                let chunk = self.chunk as u64;
                ((offset / chunk) as usize, offset % chunk)
            }
            Placement::RoundRobin => ((offset % n) as usize, offset / n),
            Placement::Hash => unreachable!("dense tables reject Hash placement when built"),
        })
    }

    /// How many keys shard `shard` owns, for `Range` and `RoundRobin`.
    pub(crate) fn shard_len(&self, shard: usize) -> u128 {
        let span = u128::from(self.last - self.first) + 1;
        let shard = shard as u128;
        match self.placement {
            Placement::Range => span.saturating_sub(shard * self.chunk).min(self.chunk),
            Placement::RoundRobin => (span + self.shards as u128 - 1 - shard) / self.shards as u128,
            Placement::Hash => unreachable!("dense tables reject Hash placement when built"),
        }
    }

    /// The key of row `local` in shard `shard`, for `Range` and `RoundRobin`.
    pub(crate) fn key_at(&self, shard: usize, local: u64) -> u64 {
        match self.placement {
            Placement::Range => self.first + (shard as u128 * self.chunk) as u64 + local,
            Placement::RoundRobin => self.first + local * self.shards as u64 + shard as u64,
            Placement::Hash => unreachable!("dense tables reject Hash placement when built"),
        }
    }
}

/// A bijective 64-bit mixer (the splitmix64 finalizer): distinct keys get
/// distinct hashes, which the sparse table's trie relies on.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(all(test, not(laggard_loom)))]
mod tests {
    use super::*;

    fn check_dense_layout(placement: Placement, shards: usize, keys: RangeInclusive<u64>) {
        let map = ShardMap::new(placement, shards, keys.clone()).unwrap();
        let mut seen = vec![Vec::new(); shards];
        for key in keys {
            let shard = map.shard_of(key).unwrap();
            let (located, local) = map.locate(key).unwrap();
            assert_eq!(located, shard);
            assert_eq!(map.key_at(shard, local), key);
            seen[shard].push(local);
        }
        for (shard, locals) in seen.iter().enumerate() {
            assert_eq!(locals.len() as u128, map.shard_len(shard));
            let expected: Vec<u64> = (0..locals.len() as u64).collect();
            assert_eq!(
                locals, &expected,
                "rows of shard {shard} are dense and in order"
            );
        }
    }

    #[test]
    fn dense_placements_cover_every_key_once() {
        for shards in 1..=7 {
            check_dense_layout(Placement::Range, shards, 10..=29);
            check_dense_layout(Placement::RoundRobin, shards, 10..=29);
            check_dense_layout(Placement::Range, shards, 0..=2);
        }
    }

    #[test]
    fn full_key_space_does_not_overflow() {
        let map = ShardMap::new(Placement::Range, 3, 0..=u64::MAX).unwrap();
        assert_eq!(map.shard_of(u64::MAX).unwrap(), 2);
        let hash = ShardMap::new(Placement::Hash, 5, 0..=u64::MAX).unwrap();
        assert!(hash.shard_of(u64::MAX).unwrap() < 5);
    }

    #[test]
    fn bad_maps_are_errors() {
        assert!(ShardMap::new(Placement::Range, 0, 0..=9).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 5..=4;
        assert!(ShardMap::new(Placement::Range, 1, empty).is_err());
        assert!(ShardMap::new(Placement::Range, ShardMap::MAX_SHARDS + 1, 0..=9).is_err());
    }

    #[test]
    fn mix64_is_injective_on_a_sample() {
        let mut hashes: Vec<u64> = (0..10_000u64).map(mix64).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), 10_000);
    }
}
