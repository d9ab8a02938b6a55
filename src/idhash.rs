//! A hasher for the daemon's big maps keyed by integers it did not choose: node ids and
//! (st_dev, st_ino). std's SipHash resists keys chosen to collide, which these are not
//! (a user can only create files, and the filesystem picks their inode numbers), and
//! costs several times more per lookup; a scan does two or three lookups per entry.
//!
//! Each integer is multiplied by an odd constant: a bijection on the low bits the table
//! indexes by (a run of inode numbers fills distinct buckets), with well mixed high bits
//! for the tags the table compares first.

use std::hash::{BuildHasherDefault, Hasher};

/// An odd constant with well spread bits (2^64 / golden ratio).
const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by integer keys; any other key still hashes, only slower.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(23) ^ n).wrapping_mul(K);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// `HashMap<K, V, IdBuild>` for integer keys.
pub type IdBuild = BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::hash::BuildHasher;

    #[test]
    fn sequential_and_paired_keys_spread_over_the_low_bits() {
        let b = IdBuild::default();
        // Inode numbers in a run, as a filesystem hands them out: the low 12 bits a table
        // of 4096 buckets indexes by must all differ.
        let low: HashSet<u64> = (1_000_000u64..1_004_096)
            .map(|i| b.hash_one(i) & 0xfff)
            .collect();
        assert_eq!(low.len(), 4096);
        // (dev, ino) pairs of two devices do not collide.
        let pairs: HashSet<u64> = (0u64..10_000)
            .flat_map(|i| [b.hash_one((2049u64, i)), b.hash_one((64770u64, i))])
            .collect();
        assert_eq!(pairs.len(), 20_000);
        let mut m: HashMap<(u64, u64), u32, IdBuild> = HashMap::default();
        m.insert((1, 2), 3);
        assert_eq!(m.get(&(1, 2)), Some(&3));
        assert_eq!(m.get(&(2, 1)), None);
    }
}
