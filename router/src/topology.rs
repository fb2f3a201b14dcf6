//! Where items and users live: a stable hash onto a fixed number of virtual
//! shards, and an assignment of virtual shards to physical shards.
//!
//! The hash never changes, so growing the cluster means reassigning some
//! virtual shards (and moving only their items) instead of rehashing every
//! item, as with Qdrant's and Cassandra's many-small-ranges designs.

use xxhash_rust::xxh3::xxh3_64;

/// Default number of virtual shards. 256 allows growth to dozens of physical
/// shards with at most a few percent imbalance, while the table stays tiny.
pub const DEFAULT_VIRTUAL_SHARDS: u32 = 256;

/// The mapping from keys to physical shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// `assignment[v]` is the physical shard of virtual shard `v`.
    assignment: Vec<u32>,
    shards: u32,
}

/// Why a topology is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("a cluster needs at least one shard")]
    NoShards,
    #[error("{virtual_shards} virtual shards cannot cover {shards} shards")]
    TooFewVirtualShards { virtual_shards: u32, shards: u32 },
    #[error("virtual shard {vshard} is assigned to shard {shard}, but there are only {shards}")]
    Unknown { vshard: u32, shard: u32, shards: u32 },
}

impl Topology {
    /// Virtual shard `v` goes to physical shard `v mod shards`.
    pub fn uniform(virtual_shards: u32, shards: u32) -> Result<Self, TopologyError> {
        if shards == 0 {
            return Err(TopologyError::NoShards);
        }
        if virtual_shards < shards {
            return Err(TopologyError::TooFewVirtualShards { virtual_shards, shards });
        }
        Ok(Self { assignment: (0..virtual_shards).map(|v| v % shards).collect(), shards })
    }

    /// An explicit assignment (e.g. after moves recorded in configuration).
    pub fn from_assignment(assignment: Vec<u32>, shards: u32) -> Result<Self, TopologyError> {
        if shards == 0 {
            return Err(TopologyError::NoShards);
        }
        if let Some((v, &s)) = assignment.iter().enumerate().find(|(_, &s)| s >= shards) {
            return Err(TopologyError::Unknown { vshard: v as u32, shard: s, shards });
        }
        Ok(Self { assignment, shards })
    }

    pub fn virtual_shards(&self) -> u32 {
        self.assignment.len() as u32
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The virtual shard of a key (item id or user id). xxh3 is specified
    /// and stable across versions and platforms, unlike std's SipHash keys.
    pub fn vshard(&self, key: &str) -> u32 {
        (xxh3_64(key.as_bytes()) % self.assignment.len() as u64) as u32
    }

    /// The physical shard that owns a key.
    pub fn shard_of(&self, key: &str) -> u32 {
        self.assignment[self.vshard(key) as usize]
    }

    /// Virtual shards per physical shard.
    pub fn load(&self) -> Vec<u32> {
        let mut load = vec![0; self.shards as usize];
        for &s in &self.assignment {
            load[s as usize] += 1;
        }
        load
    }

    /// The topology after adding shards: the fewest virtual shards move, each
    /// from the currently most loaded shard to a new one.
    pub fn grow(&self, new_shards: u32) -> Result<Self, TopologyError> {
        if new_shards < self.shards {
            return Err(TopologyError::TooFewVirtualShards {
                virtual_shards: self.virtual_shards(),
                shards: new_shards,
            });
        }
        if self.virtual_shards() < new_shards {
            return Err(TopologyError::TooFewVirtualShards {
                virtual_shards: self.virtual_shards(),
                shards: new_shards,
            });
        }
        let mut next = Self { assignment: self.assignment.clone(), shards: new_shards };
        let target = self.virtual_shards() / new_shards;
        for new in self.shards..new_shards {
            for _ in 0..target {
                let load = next.load();
                let donor = (0..self.shards).max_by_key(|&s| load[s as usize]).unwrap_or(0);
                // Move the donor's highest-numbered virtual shard.
                if let Some(v) = next.assignment.iter().rposition(|&s| s == donor) {
                    next.assignment[v] = new;
                }
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_is_stable() {
        // xxh3 is a fixed, published function: these values must never change,
        // or every stored item would land on the wrong shard after an upgrade.
        assert_eq!(xxh3_64(b""), 0x2D06800538D394C2);
        let t = Topology::uniform(256, 2).unwrap();
        assert_eq!(t.vshard("item-42"), (xxh3_64(b"item-42") % 256) as u32);
        assert_eq!(t.shard_of("item-42"), t.vshard("item-42") % 2);
    }

    #[test]
    fn keys_spread_evenly() {
        let t = Topology::uniform(256, 4).unwrap();
        let mut counts = [0u32; 4];
        for i in 0..40_000 {
            counts[t.shard_of(&format!("sku-{i}")) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn growing_moves_only_reassigned_virtual_shards() {
        let before = Topology::uniform(256, 2).unwrap();
        let after = before.grow(3).unwrap();
        assert_eq!(after.load().iter().sum::<u32>(), 256);
        assert!(after.load().iter().all(|&l| (84..=86).contains(&l)), "{:?}", after.load());
        let mut moved = 0;
        for i in 0..30_000 {
            let key = format!("sku-{i}");
            let (a, b) = (before.shard_of(&key), after.shard_of(&key));
            if a != b {
                moved += 1;
                assert_eq!(b, 2, "items only move to the new shard");
            }
        }
        // About a third of the items move, not all of them.
        assert!((8_500..11_500).contains(&moved), "moved {moved}");
    }

    #[test]
    fn invalid_topologies_are_rejected() {
        assert_eq!(Topology::uniform(256, 0), Err(TopologyError::NoShards));
        assert!(Topology::uniform(2, 3).is_err());
        assert!(Topology::from_assignment(vec![0, 1, 2], 2).is_err());
    }
}
