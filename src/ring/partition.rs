//! `partition(key) = CRC16-XMODEM(hashtag(key)) mod 16384`, exactly Redis Cluster's slot
//! function, so cluster-aware Redis clients route keys as they expect.

/// The fixed number of partitions (Redis Cluster hash slots).
pub const PARTITIONS: u16 = 16384;

/// The part of `key` that is hashed: the bytes between the first `{` and the next `}`
/// when that span is non-empty, else the whole key (Redis Cluster's hash tags).
pub fn hashtag(key: &[u8]) -> &[u8] {
    if let Some(open) = memchr::memchr(b'{', key) {
        if let Some(len) = memchr::memchr(b'}', &key[open + 1..]) {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The partition (hash slot) of `key`.
pub fn partition_of(key: &[u8]) -> u16 {
    crc16_xmodem(hashtag(key)) % PARTITIONS
}

/// CRC16-XMODEM (polynomial 0x1021, initial value 0, no reflection), the checksum Redis
/// Cluster hashes keys with; by hand with a table built at compile time, since every
/// command computes it (the general crate runs an initialisation loop per call).
///
/// Two bytes per step: the CRC is linear, so feeding bytes `a, b` to the register `crc`
/// gives `CRC16_TABLE_2[x >> 8] ^ CRC16_TABLE[x & 0xff]` with `x = crc ^ (a b)`: the
/// high half of `x` is followed by one more byte, the low half by none.
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    let mut pairs = data.chunks_exact(2);
    for pair in &mut pairs {
        let x = crc ^ u16::from_be_bytes([pair[0], pair[1]]);
        crc = CRC16_TABLE_2[usize::from(x >> 8)] ^ CRC16_TABLE[usize::from(x & 0xff)];
    }
    for &b in pairs.remainder() {
        crc = (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)];
    }
    crc
}

/// `CRC16_TABLE_2[i]`: the CRC of the byte `i` followed by a zero byte.
const CRC16_TABLE_2: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let one = CRC16_TABLE[i];
        table[i] = (one << 8) ^ CRC16_TABLE[(one >> 8) as usize];
        i += 1;
    }
    table
};

/// `CRC16_TABLE[i]`: the CRC of the byte `i` alone.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_vector_from_the_cluster_spec() {
        // The Redis Cluster specification gives CRC16("123456789") = 0x31C3.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(crc16_xmodem(b""), 0);
    }

    proptest::proptest! {
        #[test]
        fn crc16_matches_the_crc16_crate(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            proptest::prop_assert_eq!(crc16_xmodem(&data), crc16::State::<crc16::XMODEM>::calculate(&data));
        }
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
