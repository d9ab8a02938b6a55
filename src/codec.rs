//! Building blocks of the daemon's own binary files (the cache index, the metadata
//! snapshot): little-endian fields, a reader that fails instead of panicking on short
//! input, and the FNV-1a checksum that seals a whole file. A file that does not decode is
//! ignored by its reader: these files only ever save time.

/// FNV-1a, 64 bits: a checksum against truncation and bit rot, and a short stable name
/// for a path (the control socket's file name). Not for anything adversarial.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in bytes {
        h ^= *x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Appends little-endian fields to a buffer.
#[derive(Default)]
pub struct Writer {
    pub out: Vec<u8>,
}

impl Writer {
    pub fn new(magic: &[u8]) -> Writer {
        Writer {
            out: magic.to_vec(),
        }
    }

    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// A u32 length, then the bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.out.extend_from_slice(b);
    }

    /// Seals the file: the FNV-1a of everything written so far.
    pub fn finish(mut self) -> Vec<u8> {
        let sum = fnv1a64(&self.out);
        self.u64(sum);
        self.out
    }
}

/// Reads little-endian fields; every read is `None` past the end.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the magic and the checksum of a sealed file and reads what is between.
    pub fn open(data: &'a [u8], magic: &[u8]) -> Option<Reader<'a>> {
        let summed = data.len().checked_sub(8)?;
        let sum = u64::from_le_bytes(data[summed..].try_into().ok()?);
        if !data.starts_with(magic) || summed < magic.len() || fnv1a64(&data[..summed]) != sum {
            return None;
        }
        Some(Reader {
            rest: &data[magic.len()..summed],
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Some(a)
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A u32 length, then that many bytes.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn sealed_round_trip_and_damage() {
        let mut w = Writer::new(b"MAGIC\n");
        w.u8(7);
        w.u32(70_000);
        w.u64(u64::MAX);
        w.i64(-5);
        w.bytes(b"name");
        let data = w.finish();
        let mut r = Reader::open(&data, b"MAGIC\n").expect("sealed");
        assert_eq!(r.u8(), Some(7));
        assert_eq!(r.u32(), Some(70_000));
        assert_eq!(r.u64(), Some(u64::MAX));
        assert_eq!(r.i64(), Some(-5));
        assert_eq!(r.bytes(), Some(&b"name"[..]));
        assert!(r.is_empty());
        assert_eq!(r.u8(), None);
        for cut in 0..data.len() {
            assert!(
                Reader::open(&data[..cut], b"MAGIC\n").is_none(),
                "cut {cut}"
            );
        }
        let mut flipped = data.clone();
        flipped[8] ^= 1;
        assert!(Reader::open(&flipped, b"MAGIC\n").is_none());
        assert!(Reader::open(&data, b"OTHER\n").is_none());
    }
}
