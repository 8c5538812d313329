//! NDR 2.0 transfer syntax (little-endian, as this client always announces): what a request
//! writes and a response is read with. Alignment is relative to the start of the stub data.

use crate::RpcError;

/// A UUID as NDR lays it out (`data1` u32, `data2` u16, `data3` u16, 8 bytes), little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid(pub u32, pub u16, pub u16, pub [u8; 8]);

impl Uuid {
    /// From the usual text form `e3514235-4b06-11d1-ab04-00c04fc2dcd2`.
    pub const fn parse(text: &str) -> Uuid {
        let bytes = text.as_bytes();
        let mut digits = [0u8; 32];
        let (mut i, mut n) = (0, 0);
        while i < bytes.len() {
            let c = bytes[i];
            if c != b'-' {
                digits[n] = match c {
                    b'0'..=b'9' => c - b'0',
                    b'a'..=b'f' => c - b'a' + 10,
                    b'A'..=b'F' => c - b'A' + 10,
                    _ => panic!("not a UUID"),
                };
                n += 1;
            }
            i += 1;
        }
        assert!(n == 32, "not a UUID");
        let mut b = [0u8; 16];
        let mut k = 0;
        while k < 16 {
            b[k] = digits[2 * k] << 4 | digits[2 * k + 1];
            k += 1;
        }
        Uuid(
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_be_bytes([b[4], b[5]]),
            u16::from_be_bytes([b[6], b[7]]),
            [b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]],
        )
    }

    /// The 16 bytes on the wire.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&self.0.to_le_bytes());
        out[4..6].copy_from_slice(&self.1.to_le_bytes());
        out[6..8].copy_from_slice(&self.2.to_le_bytes());
        out[8..].copy_from_slice(&self.3);
        out
    }

    /// From 16 wire bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Uuid {
        let mut tail = [0u8; 8];
        tail.copy_from_slice(&bytes[8..]);
        Uuid(
            u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            u16::from_le_bytes([bytes[4], bytes[5]]),
            u16::from_le_bytes([bytes[6], bytes[7]]),
            tail,
        )
    }
}

impl std::fmt::Display for Uuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.3;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            self.0, self.1, self.2, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
        )
    }
}

/// Writes NDR.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    /// The bytes so far.
    pub bytes: Vec<u8>,
    next_referent: u32,
}

impl Writer {
    /// Pads to a multiple of `to`.
    pub fn align(&mut self, to: usize) {
        while !self.bytes.len().is_multiple_of(to) {
            self.bytes.push(0);
        }
    }
    /// A byte.
    pub fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }
    /// An aligned u16.
    pub fn u16(&mut self, value: u16) {
        self.align(2);
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }
    /// An aligned u32.
    pub fn u32(&mut self, value: u32) {
        self.align(4);
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }
    /// An aligned u64 (NDR hyper).
    pub fn u64(&mut self, value: u64) {
        self.align(8);
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }
    /// Raw bytes (no alignment).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }
    /// A UUID (aligned to 4).
    pub fn uuid(&mut self, uuid: Uuid) {
        self.align(4);
        self.raw(&uuid.to_bytes());
    }
    /// A non-null unique/full pointer's referent id.
    pub fn referent(&mut self) {
        self.next_referent += 4;
        let id = 0x0002_0000 + self.next_referent;
        self.u32(id);
    }
    /// A null pointer.
    pub fn null(&mut self) {
        self.u32(0);
    }
}

/// Reads NDR.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }
    fn short(&self, want: usize, what: &str) -> RpcError {
        RpcError::Malformed(format!("{what}: {want} bytes wanted at offset {}, {} left", self.at, self.bytes.len().saturating_sub(self.at)))
    }
    /// Skips to a multiple of `to`.
    pub fn align(&mut self, to: usize) -> Result<(), RpcError> {
        let aligned = self.at.div_ceil(to) * to;
        if aligned > self.bytes.len() {
            return Err(self.short(aligned - self.at, "alignment"));
        }
        self.at = aligned;
        Ok(())
    }
    /// `count` raw bytes.
    pub fn take(&mut self, count: usize, what: &str) -> Result<&'a [u8], RpcError> {
        let end = self.at.checked_add(count).filter(|end| *end <= self.bytes.len()).ok_or_else(|| self.short(count, what))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    /// A byte.
    pub fn u8(&mut self, what: &str) -> Result<u8, RpcError> {
        Ok(self.take(1, what)?[0])
    }
    /// An aligned u16.
    pub fn u16(&mut self, what: &str) -> Result<u16, RpcError> {
        self.align(2)?;
        let bytes = self.take(2, what)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }
    /// A u16 wherever it lies (byte streams inside NDR, such as protocol towers).
    pub fn u16_unaligned(&mut self, what: &str) -> Result<u16, RpcError> {
        let bytes = self.take(2, what)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }
    /// An aligned u32.
    pub fn u32(&mut self, what: &str) -> Result<u32, RpcError> {
        self.align(4)?;
        let bytes = self.take(4, what)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
    /// An aligned u64 (NDR hyper).
    pub fn u64(&mut self, what: &str) -> Result<u64, RpcError> {
        self.align(8)?;
        let bytes = self.take(8, what)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }
    /// A conformant array's count, refused above `limit` (a hostile count must not become a
    /// huge allocation).
    pub fn count(&mut self, limit: usize, what: &str) -> Result<usize, RpcError> {
        let count = self.u32(what)? as usize;
        if count > limit || count > self.remaining() {
            return Err(RpcError::Malformed(format!("{what}: a count of {count} with {} bytes left", self.remaining())));
        }
        Ok(count)
    }
    /// A UUID (aligned to 4).
    pub fn uuid(&mut self, what: &str) -> Result<Uuid, RpcError> {
        self.align(4)?;
        let bytes = self.take(16, what)?;
        let mut array = [0u8; 16];
        array.copy_from_slice(bytes);
        Ok(Uuid::from_bytes(array))
    }
    /// Where the reader is.
    pub fn position(&self) -> usize {
        self.at
    }
    /// What is left.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_read_and_write_in_ndr_order() {
        let drsuapi = Uuid::parse("e3514235-4b06-11d1-ab04-00c04fc2dcd2");
        assert_eq!(drsuapi.to_string(), "e3514235-4b06-11d1-ab04-00c04fc2dcd2");
        assert_eq!(drsuapi.to_bytes()[..4], [0x35, 0x42, 0x51, 0xe3], "data1 little-endian");
        assert_eq!(Uuid::from_bytes(drsuapi.to_bytes()), drsuapi);
    }

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        let mut reader = Reader::new(&[1, 2, 3]);
        assert_eq!(reader.u16("first").ok(), Some(0x0201));
        assert!(reader.u32("second").is_err());
        assert!(Reader::new(&[]).uuid("uuid").is_err());
    }
}
