//! The leaked-credential list: the public Pwned Passwords NTLM file ("ordered by hash"): one
//! line per leaked NT hash, `<32 upper-case hex digits>:<times seen>`, sorted by hash. It holds
//! close to a billion lines, so it is searched where it lies — a binary search over byte
//! offsets, each probe reading one line — never loaded.
//!
//! [`LeakedList::range`] answers a k-anonymity query: every suffix under a 5-digit prefix, so a
//! caller that knows a hash learns whether it leaked while the list's holder learns only the
//! prefix (one in a million of the hash space).
//!
//! The list is read through any `Read + Seek` (the caller opens the file), so this crate stays
//! free of file handling.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

use crate::NtHash;

/// Why the list cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LeakedError {
    /// Reading the list.
    #[error("leaked-hash list {name}: {source}")]
    Io {
        /// The list's name (its file).
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line that is not `<32 hex>:<count>`.
    #[error("leaked-hash list {name}: the line at byte {offset} is not <32 hex digits>:<count>")]
    Format {
        /// The list's name (its file).
        name: String,
        /// Where.
        offset: u64,
    },
    /// A k-anonymity prefix that is not 5 hex digits.
    #[error("a range prefix is 5 hex digits, not {0:?}")]
    Prefix(String),
}

/// A list read through `R`.
pub struct LeakedList<R> {
    name: String,
    source: RefCell<R>,
    len: u64,
}

/// One parsed line.
struct Line {
    hash: String,
    count: u64,
}

impl<R: Read + Seek> LeakedList<R> {
    /// A list read through `source` (sorted by hash, as published); `name` names it in errors.
    pub fn new(name: &str, mut source: R) -> Result<LeakedList<R>, LeakedError> {
        let len = source.seek(SeekFrom::End(0)).map_err(|err| LeakedError::Io { name: name.to_string(), source: err })?;
        Ok(LeakedList { name: name.to_string(), source: RefCell::new(source), len })
    }

    fn io(&self, source: std::io::Error) -> LeakedError {
        LeakedError::Io { name: self.name.clone(), source }
    }

    /// The first whole line starting at or after `offset`, and where the next one starts.
    fn line_from(&self, offset: u64) -> Result<Option<(Line, u64)>, LeakedError> {
        let mut borrowed = self.source.borrow_mut();
        let file = &mut *borrowed;
        let mut start = offset;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset - 1)).map_err(|err| self.io(err))?;
            let mut previous = [0u8; 1];
            file.read_exact(&mut previous).map_err(|err| self.io(err))?;
            if previous[0] != b'\n' {
                // Inside a line: the next one starts after its end.
                let mut skipped = Vec::new();
                start += BufReader::with_capacity(128, &mut *file).read_until(b'\n', &mut skipped).map_err(|err| self.io(err))? as u64;
            }
        }
        file.seek(SeekFrom::Start(start)).map_err(|err| self.io(err))?;
        let mut text = String::new();
        let read = BufReader::with_capacity(128, &mut *file).read_line(&mut text).map_err(|err| self.io(err))?;
        // The end, or blank lines that end the file.
        if read == 0 || (text.trim().is_empty() && start + read as u64 >= self.len) {
            return Ok(None);
        }
        let line = parse(text.trim_end()).ok_or_else(|| LeakedError::Format { name: self.name.clone(), offset: start })?;
        Ok(Some((line, start + read as u64)))
    }

    /// The offset of the first line whose hash is not below `key` (`len` when none is).
    fn lower_bound(&self, key: &str) -> Result<u64, LeakedError> {
        // Invariant: every line starting before `low` is below `key`; the line at or after
        // `high` is not (or there is none).
        let (mut low, mut high) = (0u64, self.len);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.line_from(middle)? {
                // The first line starting at or after `middle` starts at `next - len(line)`.
                Some((line, next)) if line.hash.as_str() < key => low = next,
                _ => high = middle,
            }
        }
        // `low` is now a line start (or the end) with every earlier line below the key.
        Ok(low)
    }

    /// How often `hash` was seen in leaks, if it is on the list.
    pub fn count(&self, hash: &NtHash) -> Result<Option<u64>, LeakedError> {
        let key = hash.to_hex();
        let at = self.lower_bound(&key)?;
        Ok(match self.line_from(at)? {
            Some((line, _)) if line.hash == *key => Some(line.count),
            _ => None,
        })
    }

    /// Every (suffix of 27 hex digits, count) under a 5-digit prefix, in order.
    pub fn range(&self, prefix: &str) -> Result<Vec<(String, u64)>, LeakedError> {
        if prefix.len() != 5 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(LeakedError::Prefix(prefix.to_string()));
        }
        let prefix = prefix.to_ascii_uppercase();
        let mut at = self.lower_bound(&prefix)?;
        let mut out = Vec::new();
        while let Some((line, next)) = self.line_from(at)? {
            if !line.hash.starts_with(&prefix) {
                break;
            }
            out.push((line.hash[5..].to_string(), line.count));
            at = next;
        }
        Ok(out)
    }
}

fn parse(text: &str) -> Option<Line> {
    let (hash, count) = text.split_once(':')?;
    if hash.len() != 32 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(Line { hash: hash.to_ascii_uppercase(), count: count.trim().parse().ok()? })
}

/// Whether `hash` is among the (suffix, count) pairs of its prefix's range.
pub fn in_range(hash: &NtHash, range: &[(String, u64)]) -> Option<u64> {
    let hex = hash.to_hex();
    range.iter().find(|(suffix, _)| suffix.eq_ignore_ascii_case(&hex[5..])).map(|(_, count)| *count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(lines: &[String]) -> LeakedList<std::io::Cursor<Vec<u8>>> {
        let text = lines.join("\r\n") + "\r\n";
        LeakedList::new("pwned-ntlm.txt", std::io::Cursor::new(text.into_bytes())).expect("open")
    }

    #[test]
    fn finds_what_is_there_and_nothing_else() {
        let passwords = ["password", "123456", "Str0ng!Pass.1", "letmein", "qwerty"];
        let mut lines: Vec<String> =
            passwords.iter().enumerate().map(|(n, password)| format!("{}:{}", &*NtHash::of_password(password).to_hex(), n + 1)).collect();
        lines.sort();
        let list = list(&lines);
        for (n, password) in passwords.iter().enumerate() {
            assert_eq!(list.count(&NtHash::of_password(password)).expect("search"), Some(n as u64 + 1), "{password}");
        }
        assert_eq!(list.count(&NtHash::of_password("not leaked")).expect("search"), None);
        let hash = NtHash::of_password("letmein");
        let range = list.range(&hash.to_hex()[..5]).expect("range");
        assert_eq!(in_range(&hash, &range), Some(4));
        assert!(list.range("xyz").is_err() && list.range("0000").is_err());
    }

    #[test]
    fn a_line_that_is_not_a_hash_is_named() {
        let list = list(&["00000000000000000000000000000000:1".into(), "not a line".into()]);
        let err = list.count(&NtHash::from_bytes([0xFF; 16])).expect_err("bad line");
        assert!(err.to_string().contains("is not <32 hex digits>:<count>"), "{err}");
    }

    proptest::proptest! {
        /// Against a sorted list of random hashes, the on-disk search agrees with a scan.
        #[test]
        fn binary_search_agrees_with_a_scan(
            hashes in proptest::collection::btree_set(proptest::array::uniform16(proptest::num::u8::ANY), 0..200),
            probe in proptest::array::uniform16(proptest::num::u8::ANY),
        ) {
            let lines: Vec<String> = hashes.iter().map(|bytes| format!("{}:7", &*NtHash::from_bytes(*bytes).to_hex())).collect();
            let list = list(&lines);
            for bytes in hashes.iter().take(20) {
                proptest::prop_assert_eq!(list.count(&NtHash::from_bytes(*bytes)).expect("search"), Some(7));
            }
            let expected = hashes.contains(&probe).then_some(7);
            proptest::prop_assert_eq!(list.count(&NtHash::from_bytes(probe)).expect("search"), expected);
            let prefix = NtHash::from_bytes(probe).to_hex()[..5].to_string();
            let scanned = hashes.iter().filter(|bytes| NtHash::from_bytes(**bytes).to_hex().starts_with(&prefix)).count();
            proptest::prop_assert_eq!(list.range(&prefix).expect("range").len(), scanned);
        }
    }
}
