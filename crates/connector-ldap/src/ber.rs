//! The few BER shapes our controls need (DirSync, paged results, RFC 4533 content
//! synchronization: SEQUENCEs of INTEGER, ENUMERATED, BOOLEAN, OCTET STRING and SET OF OCTET
//! STRING), written and read by hand so that a malformed control value from a server is an
//! error, never a panic.

/// Universal tag numbers we use.
const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const ENUMERATED: u8 = 0x0a;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;

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
    /// An ENUMERATED.
    Enumerated(i64),
    /// A BOOLEAN.
    Boolean(bool),
    /// A SET OF OCTET STRING.
    BytesSet(Vec<Vec<u8>>),
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
    tagged_sequence(SEQUENCE, items)
}

/// Encodes `items` as a constructed value with tag `tag` (SEQUENCE, or a context tag).
fn tagged_sequence(tag: u8, items: &[Item]) -> Vec<u8> {
    let mut content = Vec::new();
    for item in items {
        match item {
            Item::Integer(value) => push_tlv(&mut content, INTEGER, &integer_bytes(*value)),
            Item::Bytes(bytes) => push_tlv(&mut content, OCTET_STRING, bytes),
            Item::Enumerated(value) => push_tlv(&mut content, ENUMERATED, &integer_bytes(*value)),
            Item::Boolean(value) => push_tlv(&mut content, BOOLEAN, &[if *value { 0xff } else { 0x00 }]),
            Item::BytesSet(values) => {
                let mut set = Vec::new();
                for value in values {
                    push_tlv(&mut set, OCTET_STRING, value);
                }
                push_tlv(&mut content, SET, &set);
            }
        }
    }
    let mut out = Vec::with_capacity(content.len() + 6);
    push_tlv(&mut out, tag, &content);
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

/// Decodes `SEQUENCE { INTEGER | ENUMERATED | BOOLEAN | OCTET STRING | SET OF OCTET STRING ... }`
/// into its items; trailing bytes are an error.
pub fn read_sequence(input: &[u8]) -> Result<Vec<Item>, BerError> {
    let (tag, items) = read_tagged(input)?;
    if tag != SEQUENCE {
        return Err(BerError("expected a SEQUENCE"));
    }
    Ok(items)
}

/// Decodes one constructed value (any tag) holding the items [`read_sequence`] knows; returns
/// its tag. A primitive value (such as `[0] OCTET STRING`) comes back as one [`Item::Bytes`].
pub fn read_tagged(input: &[u8]) -> Result<(u8, Vec<Item>), BerError> {
    let (tag, mut content, rest) = read_tlv(input)?;
    if !rest.is_empty() {
        return Err(BerError("bytes after the value"));
    }
    if tag & 0x20 == 0 {
        return Ok((tag, vec![Item::Bytes(content.to_vec())]));
    }
    let mut items = Vec::new();
    while !content.is_empty() {
        let (tag, value, rest) = read_tlv(content)?;
        content = rest;
        items.push(match tag {
            INTEGER => Item::Integer(integer(value)?),
            ENUMERATED => Item::Enumerated(integer(value)?),
            BOOLEAN => match value {
                [byte] => Item::Boolean(*byte != 0),
                _ => return Err(BerError("BOOLEAN of the wrong size")),
            },
            OCTET_STRING => Item::Bytes(value.to_vec()),
            SET => {
                let mut values = Vec::new();
                let mut set = value;
                while !set.is_empty() {
                    let (tag, value, rest) = read_tlv(set)?;
                    if tag != OCTET_STRING {
                        return Err(BerError("a SET element is not an OCTET STRING"));
                    }
                    values.push(value.to_vec());
                    set = rest;
                }
                Item::BytesSet(values)
            }
            _ => return Err(BerError("unexpected element in the SEQUENCE")),
        });
    }
    Ok((tag, items))
}

fn integer(value: &[u8]) -> Result<i64, BerError> {
    if value.is_empty() || value.len() > 8 {
        return Err(BerError("INTEGER of unsupported size"));
    }
    let negative = value[0] & 0x80 != 0;
    let start = if negative { -1i64 } else { 0 };
    Ok(value.iter().fold(start, |acc, &byte| (acc << 8) | i64::from(byte)))
}

/// RFC 4533 content synchronization: the request control value, the entry state and done
/// controls, and the Sync Info intermediate message.
pub mod sync {
    use super::{BerError, Item, read_sequence, read_tagged, sequence};

    /// `SEQUENCE { mode ENUMERATED, cookie OCTET STRING OPTIONAL, reloadHint BOOLEAN DEFAULT FALSE }`;
    /// mode 1 is refreshOnly.
    pub fn request(cookie: Option<&[u8]>) -> Vec<u8> {
        let mut items = vec![Item::Enumerated(1)];
        if let Some(cookie) = cookie {
            items.push(Item::Bytes(cookie.to_vec()));
        }
        sequence(&items)
    }

    /// An entry's state (Sync State control).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum State {
        /// Unchanged, still in the content (present phase).
        Present,
        /// New to the content.
        Add,
        /// Changed (possibly renamed).
        Modify,
        /// Left the content (deleted, or no longer matches).
        Delete,
    }

    /// A cookie, when a message carries one.
    pub type Cookie = Option<Vec<u8>>;

    /// The Sync State control of an entry: its state, entryUUID and maybe a cookie.
    pub fn state(value: &[u8]) -> Result<(State, Vec<u8>, Cookie), BerError> {
        let mut items = read_sequence(value)?.into_iter();
        let state = match items.next() {
            Some(Item::Enumerated(0)) => State::Present,
            Some(Item::Enumerated(1)) => State::Add,
            Some(Item::Enumerated(2)) => State::Modify,
            Some(Item::Enumerated(3)) => State::Delete,
            _ => return Err(BerError("sync state: no known state")),
        };
        let Some(Item::Bytes(uuid)) = items.next() else { return Err(BerError("sync state: no entryUUID")) };
        let cookie = match items.next() {
            None => None,
            Some(Item::Bytes(cookie)) => Some(cookie),
            Some(_) => return Err(BerError("sync state: cookie is not an OCTET STRING")),
        };
        if items.next().is_some() {
            return Err(BerError("sync state: extra elements"));
        }
        Ok((state, uuid, cookie))
    }

    /// The Sync Done control: the new cookie, and whether the refresh named deletes explicitly
    /// (true) or sent the present entries (false: everything not named is gone).
    pub fn done(value: &[u8]) -> Result<(Option<Vec<u8>>, bool), BerError> {
        let (cookie, flag, _) = cookie_flag(read_sequence(value)?, false)?;
        Ok((cookie, flag))
    }

    /// A Sync Info message.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Info {
        /// `[0] newcookie`.
        NewCookie(Vec<u8>),
        /// `[1] refreshDelete` / `[2] refreshPresent`: the end of a phase.
        PhaseDone {
            /// True for the delete phase.
            deletes: bool,
            /// A cookie, if given.
            cookie: Option<Vec<u8>>,
            /// refreshDone.
            done: bool,
        },
        /// `[3] syncIdSet`: many entries at once, present or (with `deletes`) deleted.
        IdSet {
            /// A cookie, if given.
            cookie: Option<Vec<u8>>,
            /// refreshDeletes: the UUIDs are deleted (else present).
            deletes: bool,
            /// The entryUUIDs.
            uuids: Vec<Vec<u8>>,
        },
    }

    /// Reads a Sync Info message value.
    pub fn info(value: &[u8]) -> Result<Info, BerError> {
        let (tag, items) = read_tagged(value)?;
        match tag {
            0x80 => match items.as_slice() {
                [Item::Bytes(cookie)] => Ok(Info::NewCookie(cookie.clone())),
                _ => Err(BerError("sync info: bad newcookie")),
            },
            0xa1 | 0xa2 => {
                let (cookie, done, _) = cookie_flag(items, true)?;
                Ok(Info::PhaseDone { deletes: tag == 0xa1, cookie, done })
            }
            0xa3 => {
                let (cookie, deletes, rest) = cookie_flag(items, false)?;
                match rest {
                    Some(Item::BytesSet(uuids)) => Ok(Info::IdSet { cookie, deletes, uuids }),
                    _ => Err(BerError("sync info: syncIdSet without syncUUIDs")),
                }
            }
            _ => Err(BerError("sync info: unknown choice")),
        }
    }

    /// `cookie OCTET STRING OPTIONAL, flag BOOLEAN DEFAULT <default>` and what follows.
    fn cookie_flag(items: Vec<Item>, default: bool) -> Result<(Cookie, bool, Option<Item>), BerError> {
        let mut items = items.into_iter().peekable();
        let cookie = match items.peek() {
            Some(Item::Bytes(_)) => match items.next() {
                Some(Item::Bytes(cookie)) => Some(cookie),
                _ => None,
            },
            _ => None,
        };
        let flag = match items.peek() {
            Some(Item::Boolean(flag)) => {
                let flag = *flag;
                items.next();
                flag
            }
            _ => default,
        };
        let rest = items.next();
        if items.next().is_some() {
            return Err(BerError("sync message: extra elements"));
        }
        Ok((cookie, flag, rest))
    }

    /// Builds a Sync Info value (tests).
    #[cfg(test)]
    pub fn encode_info(info: &Info) -> Vec<u8> {
        let with_cookie = |cookie: &Option<Vec<u8>>, mut rest: Vec<Item>| {
            let mut items: Vec<Item> = cookie.iter().cloned().map(Item::Bytes).collect();
            items.append(&mut rest);
            items
        };
        match info {
            Info::NewCookie(cookie) => {
                let mut out = vec![0x80];
                super::push_len(&mut out, cookie.len());
                out.extend_from_slice(cookie);
                out
            }
            Info::PhaseDone { deletes, cookie, done } => {
                super::tagged_sequence(if *deletes { 0xa1 } else { 0xa2 }, &with_cookie(cookie, vec![Item::Boolean(*done)]))
            }
            Info::IdSet { cookie, deletes, uuids } => {
                super::tagged_sequence(0xa3, &with_cookie(cookie, vec![Item::Boolean(*deletes), Item::BytesSet(uuids.clone())]))
            }
        }
    }
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
        assert_eq!(read_sequence(&[0x30, 0x00, 0x00]), Err(BerError("bytes after the value")));
    }

    #[test]
    fn sync_messages() {
        // refreshOnly without and with a cookie (RFC 4533 section 2.2).
        assert_eq!(sync::request(None), [0x30, 0x03, 0x0a, 0x01, 0x01]);
        assert_eq!(sync::request(Some(b"c")), [0x30, 0x06, 0x0a, 0x01, 0x01, 0x04, 0x01, b'c']);
        let state = sequence(&[Item::Enumerated(3), Item::Bytes(vec![1; 16])]);
        assert_eq!(sync::state(&state), Ok((sync::State::Delete, vec![1; 16], None)));
        assert!(sync::state(&sequence(&[Item::Enumerated(9), Item::Bytes(vec![])])).is_err());
        assert_eq!(sync::done(&sequence(&[Item::Bytes(b"k".to_vec()), Item::Boolean(true)])), Ok((Some(b"k".to_vec()), true)));
        assert_eq!(sync::done(&sequence(&[])), Ok((None, false)));
        // A refreshDelete with refreshDone left at its default (TRUE).
        assert_eq!(
            sync::info(&[0xa1, 0x03, 0x04, 0x01, b'z']),
            Ok(sync::Info::PhaseDone { deletes: true, cookie: Some(b"z".to_vec()), done: true })
        );
        assert!(sync::info(&[0xa4, 0x00]).is_err());
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
            let _ = sync::info(&bytes);
            let _ = sync::state(&bytes);
            let _ = sync::done(&bytes);
        }

        #[test]
        fn sync_info_round_trip(
            choice in 0..4u8,
            cookie in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
            flag in any::<bool>(),
            uuids in prop::collection::vec(prop::collection::vec(any::<u8>(), 16), 0..5),
        ) {
            let info = match choice {
                0 => sync::Info::NewCookie(cookie.unwrap_or_default()),
                1 | 2 => sync::Info::PhaseDone { deletes: choice == 1, cookie, done: flag },
                _ => sync::Info::IdSet { cookie, deletes: flag, uuids },
            };
            prop_assert_eq!(sync::info(&sync::encode_info(&info)), Ok(info));
        }
    }
}
