//! The few BER shapes our controls need (SEQUENCE of INTEGER and OCTET STRING), written and read
//! by hand so that a malformed control value from a server is an error, never a panic.

/// Universal tag numbers we use.
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const SEQUENCE: u8 = 0x30;

/// A malformed BER value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed BER: {0}")]
pub struct BerError(pub &'static str);

/// One element of a SEQUENCE we write or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An INTEGER.
    Integer(i64),
    /// An OCTET STRING.
    Bytes(Vec<u8>),
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|&&byte| byte == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    push_len(out, content.len());
    out.extend_from_slice(content);
}

/// Minimal two's-complement bytes of `value`.
fn integer_bytes(value: i64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (first, next) = (bytes[start], bytes[start + 1]);
        let redundant = (first == 0x00 && next & 0x80 == 0) || (first == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    bytes[start..].to_vec()
}

/// Encodes `SEQUENCE { items }`.
pub fn sequence(items: &[Item]) -> Vec<u8> {
    let mut content = Vec::new();
    for item in items {
        match item {
            Item::Integer(value) => push_tlv(&mut content, INTEGER, &integer_bytes(*value)),
            Item::Bytes(bytes) => push_tlv(&mut content, OCTET_STRING, bytes),
        }
    }
    let mut out = Vec::with_capacity(content.len() + 6);
    push_tlv(&mut out, SEQUENCE, &content);
    out
}

/// Reads one tag-length-value; returns the tag, the content and what follows.
fn read_tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), BerError> {
    let (&tag, rest) = input.split_first().ok_or(BerError("value ends before a tag"))?;
    let (&first, mut rest) = rest.split_first().ok_or(BerError("value ends before a length"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return Err(BerError("unsupported length form"));
        }
        if rest.len() < count {
            return Err(BerError("value ends inside a length"));
        }
        let (len_bytes, after) = rest.split_at(count);
        rest = after;
        len_bytes.iter().fold(0usize, |len, &byte| (len << 8) | usize::from(byte))
    };
    if rest.len() < len {
        return Err(BerError("length runs past the end of the value"));
    }
    let (content, rest) = rest.split_at(len);
    Ok((tag, content, rest))
}

/// Decodes `SEQUENCE { INTEGER | OCTET STRING ... }` into its items; trailing bytes are an error.
pub fn read_sequence(input: &[u8]) -> Result<Vec<Item>, BerError> {
    let (tag, mut content, rest) = read_tlv(input)?;
    if tag != SEQUENCE {
        return Err(BerError("expected a SEQUENCE"));
    }
    if !rest.is_empty() {
        return Err(BerError("bytes after the SEQUENCE"));
    }
    let mut items = Vec::new();
    while !content.is_empty() {
        let (tag, value, rest) = read_tlv(content)?;
        content = rest;
        items.push(match tag {
            INTEGER => {
                if value.is_empty() || value.len() > 8 {
                    return Err(BerError("INTEGER of unsupported size"));
                }
                let negative = value[0] & 0x80 != 0;
                let start = if negative { -1i64 } else { 0 };
                Item::Integer(value.iter().fold(start, |acc, &byte| (acc << 8) | i64::from(byte)))
            }
            OCTET_STRING => Item::Bytes(value.to_vec()),
            _ => return Err(BerError("unexpected element in the SEQUENCE")),
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_encodings() {
        // DirSync request with the incremental-values flag as AD reads it (a 32-bit pattern).
        let request = sequence(&[Item::Integer(i64::from(0x8000_0000u32 as i32)), Item::Integer(0), Item::Bytes(vec![])]);
        assert_eq!(request, [0x30, 0x0b, 0x02, 0x04, 0x80, 0x00, 0x00, 0x00, 0x02, 0x01, 0x00, 0x04, 0x00]);
        assert_eq!(sequence(&[Item::Integer(128)]), [0x30, 0x04, 0x02, 0x02, 0x00, 0x80]);
        let long = sequence(&[Item::Bytes(vec![7; 300])]);
        assert_eq!(&long[..6], &[0x30, 0x82, 0x01, 0x30, 0x04, 0x82]);
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [&[][..], &[0x30], &[0x30, 0x05, 0x02], &[0x04, 0x00], &[0x30, 0x02, 0x01, 0x00], &[0x30, 0x85, 1, 1, 1, 1, 1]] {
            assert!(read_sequence(bad).is_err(), "{bad:?}");
        }
        assert_eq!(read_sequence(&[0x30, 0x00, 0x00]), Err(BerError("bytes after the SEQUENCE")));
    }

    proptest! {
        #[test]
        fn round_trip(items in prop::collection::vec(prop_oneof![
            any::<i64>().prop_map(Item::Integer),
            prop::collection::vec(any::<u8>(), 0..400).prop_map(Item::Bytes),
        ], 0..5)) {
            prop_assert_eq!(read_sequence(&sequence(&items)), Ok(items));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = read_sequence(&bytes);
        }
    }
}
