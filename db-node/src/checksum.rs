//! A fast non-cryptographic 64-bit checksum for pages (four independent lanes of
//! xor-multiply-rotate, then a murmur-style finalizer). It detects torn and corrupted pages; it
//! is not meant to resist an adversary.

const K: [u64; 4] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0x85EB_CA77_C2B2_AE63,
];

#[inline(always)]
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// Hash `data`, continuing from `seed` (so regions can be chained).
pub fn hash(data: &[u8], seed: u64) -> u64 {
    let mut h = [seed ^ K[0], seed ^ K[1], seed ^ K[2], seed ^ K[3]];
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        for (i, lane) in h.iter_mut().enumerate() {
            *lane = ((*lane ^ word(&c[i * 8..])).wrapping_mul(K[i])).rotate_left(29);
        }
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(8);
    let mut i = 0;
    for w in &mut words {
        h[i] = ((h[i] ^ word(w)).wrapping_mul(K[i])).rotate_left(29);
        i += 1;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut w = [0u8; 8];
        w[..tail.len()].copy_from_slice(tail);
        h[i] = ((h[i] ^ u64::from_le_bytes(w)).wrapping_mul(K[i])).rotate_left(29);
    }
    let mut x = h[0] ^ h[1].rotate_left(17) ^ h[2].rotate_left(31) ^ h[3].rotate_left(47);
    x ^= data.len() as u64;
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::hash;

    #[test]
    fn every_single_byte_change_is_detected() {
        let base: Vec<u8> = (0..200u32).map(|i| (i * 7) as u8).collect();
        let h = hash(&base, 1);
        for i in 0..base.len() {
            let mut c = base.clone();
            c[i] ^= 0x10;
            assert_ne!(hash(&c, 1), h, "byte {i}");
        }
        assert_ne!(hash(&base[..199], 1), h);
        assert_ne!(hash(&base, 2), h);
    }
}
