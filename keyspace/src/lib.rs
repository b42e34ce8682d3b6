//! Which shard owns a targeting key: a stable hash any client can compute.
//!
//! This crate is the one contract nodes and clients must agree on byte for byte, so it has no
//! dependencies and lives apart from both: the actors, the cluster's shard map and the client all
//! call [`shard_of`], and a change here moves every user to another shard.

/// The number of shards a cluster has unless configured otherwise.
pub const DEFAULT_SHARDS: u32 = 256;

/// FNV-1a (64-bit) of the key's UTF-8 bytes, reduced modulo the shard count. Chosen because it is
/// a few lines in any language, so clients and every node agree without sharing code; shard
/// placement on nodes (consistent hashing) is the cluster's shard map, a separate step.
pub fn shard_of(targeting_key: &str, shards: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = targeting_key
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    // The remainder is below `shards`, a u32.
    #[allow(clippy::cast_possible_truncation)]
    let shard = (hash % u64::from(shards.max(1))) as u32;
    shard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_stable_and_spreads_keys() {
        // Pinned values: changing the function would move every user to another shard.
        assert_eq!(shard_of("", 256), (0xcbf2_9ce4_8422_2325u64 % 256) as u32);
        assert_eq!(shard_of("user-1", 256), shard_of("user-1", 256));
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[shard_of(&format!("user-{i}"), 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(shard_of("anything", 0), 0, "zero shards is treated as one");
    }
}
