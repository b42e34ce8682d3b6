//! MurmurHash3, x86 32-bit variant, fed incrementally so fractional bucketing can hash its CBOR
//! encoding as it is produced, without building the bytes in a buffer first.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[derive(Debug, Clone)]
pub(crate) struct Murmur3 {
    h: u32,
    tail: [u8; 4],
    tail_len: usize,
    total: usize,
}

impl Murmur3 {
    pub(crate) fn new(seed: u32) -> Murmur3 {
        Murmur3 {
            h: seed,
            tail: [0; 4],
            tail_len: 0,
            total: 0,
        }
    }

    fn mix_block(&mut self, k: u32) {
        let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        self.h = (self.h ^ k)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }

    pub(crate) fn write(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len();
        if self.tail_len > 0 {
            let take = (4 - self.tail_len).min(bytes.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&bytes[..take]);
            self.tail_len += take;
            bytes = &bytes[take..];
            if self.tail_len < 4 {
                return;
            }
            self.mix_block(u32::from_le_bytes(self.tail));
            self.tail_len = 0;
        }
        let mut chunks = bytes.chunks_exact(4);
        for chunk in &mut chunks {
            self.mix_block(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
        }
        let rest = chunks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    pub(crate) fn finish(&self) -> u32 {
        let mut h = self.h;
        if self.tail_len > 0 {
            let mut k = 0u32;
            for (i, b) in self.tail[..self.tail_len].iter().enumerate() {
                k |= u32::from(*b) << (8 * i);
            }
            h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        }
        // The length is mixed in modulo 2^32, as the reference implementation does.
        #[allow(clippy::cast_possible_truncation)]
        let len = self.total as u32;
        h ^= len;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

pub(crate) fn hash(bytes: &[u8]) -> u32 {
    let mut m = Murmur3::new(0);
    m.write(bytes);
    m.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_vectors() {
        // Vectors from the reference implementation (seed 0) and flagd's hash edge-case keys.
        assert_eq!(hash(b""), 0);
        assert_eq!(hash(b"hello"), 0x248b_fa47);
        assert_eq!(
            hash(b"The quick brown fox jumps over the lazy dog"),
            0x2e4f_f723
        );
        assert_eq!(hash(b"ejOoVL"), 0);
        assert_eq!(hash(b"bY9fO-"), 1);
        assert_eq!(hash(b"SI7p-"), 0x7fff_ffff);
        assert_eq!(hash(b"6LvT0"), 0x8000_0000);
        assert_eq!(hash(b"ceQdGm"), 0xffff_ffff);
    }

    #[test]
    fn incremental_writes_hash_like_one_write() {
        let text = b"fractional-flag-shorthandjon@company.com";
        for split_a in 0..text.len() {
            for split_b in split_a..text.len() {
                let mut m = Murmur3::new(0);
                m.write(&text[..split_a]);
                m.write(&text[split_a..split_b]);
                m.write(&text[split_b..]);
                assert_eq!(m.finish(), hash(text), "splits {split_a}/{split_b}");
            }
        }
    }
}
