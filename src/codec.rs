//! A minimal length-prefixed binary codec for records Tessera persists.
//!
//! Hand-written rather than serde-derived so that every on-disk byte is
//! spelled out, versioned, and fuzzable; a reader never panics and never
//! allocates more than the input's length.

/// The bytes did not decode. Carries only where, never what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed encoding at byte {offset}")]
pub struct DecodeError {
    /// Offset of the field that failed.
    pub offset: usize,
}

/// Appends fields to a buffer.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// Big-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Big-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Raw bytes of a length both sides know.
    pub fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }

    /// Bytes prefixed by a u32 length. Lengths above u32::MAX are truncated
    /// to an empty field; no persisted field comes near that.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        match u32::try_from(v.len()) {
            Ok(len) => {
                self.u32(len);
                self.0.extend_from_slice(v);
            }
            Err(_) => {
                self.u32(0);
            }
        }
        self
    }

    /// A UTF-8 string prefixed by a u32 length.
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads fields from a buffer, failing cleanly on any shortfall.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn err(&self) -> DecodeError {
        DecodeError { offset: self.pos }
    }

    /// Raw bytes of a known length.
    pub fn fixed(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(len).ok_or_else(|| self.err())?;
        let out = self.buf.get(self.pos..end).ok_or_else(|| self.err())?;
        self.pos = end;
        Ok(out)
    }

    /// A fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let at = self.err();
        self.fixed(N)?.try_into().map_err(|_| at)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.fixed(1)?[0])
    }

    /// Big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.fixed(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Big-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.fixed(8)?);
        Ok(u64::from_be_bytes(a))
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u32()?).map_err(|_| self.err())?;
        self.fixed(len)
    }

    /// Length-prefixed UTF-8.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.err();
        std::str::from_utf8(self.bytes()?).map_err(|_| at)
    }

    /// A 0/1 flag; any other value is malformed.
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError {
                offset: self.pos - 1,
            }),
        }
    }

    /// Fails unless every byte was consumed.
    pub fn end(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.err())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_shortfalls() {
        let mut w = Writer::new();
        w.u8(7)
            .u32(9)
            .u64(11)
            .str("hé")
            .bytes(&[1, 2])
            .fixed(&[5])
            .u8(1);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 9);
        assert_eq!(r.u64().unwrap(), 11);
        assert_eq!(r.str().unwrap(), "hé");
        assert_eq!(r.bytes().unwrap(), &[1, 2]);
        assert_eq!(r.fixed(1).unwrap(), &[5]);
        assert!(r.bool().unwrap());
        r.end().unwrap();
        for cut in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..cut]);
            let ok = (|| -> Result<(), DecodeError> {
                r.u8()?;
                r.u32()?;
                r.u64()?;
                r.str()?;
                r.bytes()?;
                r.fixed(1)?;
                r.bool()?;
                Ok(())
            })();
            assert!(ok.is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn huge_length_prefix_fails_without_allocating() {
        let mut r = Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF, 1]);
        assert!(r.bytes().is_err());
    }
}
