//! `partition(key) = CRC16-XMODEM(hashtag(key)) mod 16384`, exactly Redis Cluster's slot
//! function, so cluster-aware Redis clients route keys as they expect.

/// The fixed number of partitions (Redis Cluster hash slots).
pub const PARTITIONS: u16 = 16384;

/// The part of `key` that is hashed: the bytes between the first `{` and the next `}`
/// when that span is non-empty, else the whole key (Redis Cluster's hash tags).
pub fn hashtag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The partition (hash slot) of `key`.
pub fn partition_of(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hashtag(key)) % PARTITIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_vector_from_the_cluster_spec() {
        // The Redis Cluster specification gives CRC16("123456789") = 0x31C3.
        assert_eq!(crc16::State::<crc16::XMODEM>::calculate(b"123456789"), 0x31C3);
    }

    #[test]
    fn known_slots() {
        // Values as answered by `CLUSTER KEYSLOT` on redis-server.
        assert_eq!(partition_of(b"foo"), 12182);
        assert_eq!(partition_of(b"bar"), 5061);
        assert_eq!(partition_of(b""), 0);
    }

    #[test]
    fn hash_tags() {
        assert_eq!(partition_of(b"{user1000}.following"), partition_of(b"user1000"));
        assert_eq!(partition_of(b"{user1000}.followers"), partition_of(b"user1000"));
        assert_eq!(hashtag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hashtag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hashtag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hashtag(b"{"), b"{");
    }
}
