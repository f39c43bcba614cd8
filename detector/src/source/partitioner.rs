//! The producers' key partitioners (`spec.source.kafka.partitioner`): which partition of `n` a
//! record key lands on, computed as the Kafka clients compute it, so a detector knows where a
//! key goes when a topic's partition count changes.
//!
//! - `Murmur2`: the Java client's `BuiltInPartitioner` for keyed records,
//!   `toPositive(murmur2(key)) % n` with seed `0x9747b28c` (`Utils.murmur2`), which librdkafka's
//!   `murmur2` and `murmur2_random` partitioners reproduce.
//! - `Crc32`: librdkafka's `consistent` / `consistent_random` (its default): `crc32(key) % n`
//!   (zlib's CRC-32).
//!
//! `tests` checks both against librdkafka itself (a producer with each partitioner, real
//! broker): `detector/tests/kafka_repartition.rs`.

use vigil_api::v1alpha1::KeyPartitioner;

/// The partition of `partitions` that `key` goes to under `partitioner`; `0` for a count below 1.
pub fn partition_of(partitioner: KeyPartitioner, key: &[u8], partitions: i32) -> i32 {
    let Ok(n) = u32::try_from(partitions) else {
        return 0;
    };
    if n == 0 {
        return 0;
    }
    let h = match partitioner {
        KeyPartitioner::Murmur2 => murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff,
        KeyPartitioner::Crc32 => crc32fast::hash(key),
    };
    // h % n < n <= i32::MAX
    (h % n) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_clients_published_values() {
        // Kafka's `UtilsTest.testMurmur2`: murmur2("21") = -973932308, murmur2("foobar") =
        // -790332482, murmur2("a-little-bit-long-string") = -985981536 (signed 32-bit).
        for (key, signed) in [
            ("21", -973_932_308_i32),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
        ] {
            let expected = (signed as u32 & 0x7fff_ffff) % 1000;
            assert_eq!(
                partition_of(KeyPartitioner::Murmur2, key.as_bytes(), 1000) as u32,
                expected,
                "{key}"
            );
        }
    }

    #[test]
    fn crc32_is_zlibs() {
        // CRC-32 check value (RFC 3720 B.4 / the "123456789" catalogue value): 0xCBF43926.
        assert_eq!(
            partition_of(KeyPartitioner::Crc32, b"123456789", i32::MAX),
            (0xCBF4_3926_u32 % i32::MAX as u32) as i32
        );
    }

    #[test]
    fn every_key_lands_in_range() {
        for n in [1, 2, 3, 4, 7, 8, 1000] {
            for k in 0..200 {
                let key = format!("key-{k}");
                for p in [KeyPartitioner::Murmur2, KeyPartitioner::Crc32] {
                    let q = partition_of(p, key.as_bytes(), n);
                    assert!((0..n).contains(&q));
                }
            }
        }
        assert_eq!(partition_of(KeyPartitioner::Murmur2, b"x", 0), 0);
    }
}
