//! A cheap hash for maps keyed by integer ids: connection ids
//! ([`PeerId`](crate::transport::PeerId)) and row keys.
//!
//! The standard library's default hasher (SipHash) resists inputs chosen to
//! collide, and pays about 20 ns per key for it. Maps on the message path
//! (a worker's pending rows, a transport's connections) hash a key or two
//! per message, which made SipHash a noticeable share of a small message's
//! round trip. Their keys come from the process itself (the ids an endpoint
//! hands out, the keys a worker pushes), so that resistance buys nothing
//! there. Maps whose keys arrive from the network keep SipHash.
//!
//! The hash is a folded multiply: the 128-bit product of the key with an
//! odd constant, high half XOR low half. Every output bit depends on every
//! input bit, so both the low bits (which pick a bucket) and the high bits
//! (which `HashMap` compares first) spread, for sequential keys and for
//! keys that are multiples of a power of two alike.
//!
//! ```
//! use laggard::idhash::IdMap;
//!
//! let mut rows: IdMap<u64, &str> = IdMap::default();
//! rows.insert(7, "seven");
//! assert_eq!(rows.get(&7), Some(&"seven"));
//! ```

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A `HashSet` with [`IdHasher`].
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// The golden-ratio constant (odd), the multiplier of the fold.
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// A hasher for integer ids: one folded multiply per word written. Not for
/// keys an adversary picks (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher {
    state: u64,
}

impl IdHasher {
    fn mix(&mut self, word: u64) {
        let product =
            u128::from((self.state ^ word).wrapping_add(MULTIPLIER)) * u128::from(MULTIPLIER);
        self.state = (product >> 64) as u64 ^ product as u64;
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
            self.mix(word);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length goes in too, so "a" and "a\0" differ.
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

#[cfg(all(test, not(laggard_loom)))]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn hash(n: u64) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(n)
    }

    /// Sequential keys and keys that are multiples of a large power of two
    /// spread over the low bits (buckets) and the top seven bits (the
    /// `HashMap` control bytes): no bucket or tag holds more than a few
    /// times its share.
    #[test]
    fn sequential_and_strided_keys_spread_over_low_and_high_bits() {
        for stride in [1u64, 8, 1 << 20, 1 << 40] {
            let mut low = [0u32; 256];
            let mut top = [0u32; 128];
            for i in 0..65_536u64 {
                let h = hash(i * stride);
                low[(h & 255) as usize] += 1;
                top[(h >> 57) as usize] += 1;
            }
            // 256 and 512 expected per slot.
            let worst_low = low.iter().max().unwrap();
            let worst_top = top.iter().max().unwrap();
            assert!(
                *worst_low < 256 * 2,
                "stride {stride}: a bucket got {worst_low}"
            );
            assert!(
                *worst_top < 512 * 2,
                "stride {stride}: a tag got {worst_top}"
            );
        }
    }

    #[test]
    fn byte_strings_of_different_lengths_differ() {
        let build = BuildHasherDefault::<IdHasher>::default();
        assert_ne!(
            build.hash_one(b"a".as_slice()),
            build.hash_one(b"a\0".as_slice())
        );
        let mut map: IdMap<String, u32> = IdMap::default();
        for i in 0..1000 {
            map.insert(format!("peer-{i}"), i);
        }
        assert!((0..1000).all(|i| map[&format!("peer-{i}")] == i));
    }
}
