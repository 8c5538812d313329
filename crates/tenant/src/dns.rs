//! Just enough DNS to verify a domain: one TXT query over UDP to a configured resolver, and a
//! bounds-checked reading of the answer (a malformed answer is an error, never a panic).

use std::net::SocketAddr;
use std::time::Duration;

/// Why the TXT records could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// No answer in time, or the network failed.
    #[error("the DNS resolver {0} did not answer: {1}")]
    Unreachable(SocketAddr, String),
    /// The answer is not a DNS message we can read.
    #[error("malformed DNS answer: {0}")]
    Malformed(&'static str),
    /// The resolver failed the query (SERVFAIL, REFUSED …).
    #[error("the DNS resolver answered with error code {0}")]
    Failed(u8),
    /// The name is not a DNS name.
    #[error("{0:?} is not a domain name")]
    BadName(String),
}

/// The TXT records of `name` (each record's strings joined), as `resolver` answers.
pub async fn txt_records(resolver: SocketAddr, name: &str, timeout: Duration) -> Result<Vec<String>, DnsError> {
    let id = u16::from_be_bytes([crate::crypto::random_bytes(1)[0], crate::crypto::random_bytes(1)[0]]);
    let query = build_query(id, name)?;
    let bind: SocketAddr = if resolver.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|err| DnsError::Unreachable(resolver, err.to_string()))?;
    socket.send_to(&query, resolver).await.map_err(|err| DnsError::Unreachable(resolver, err.to_string()))?;
    let mut buffer = vec![0u8; 4096];
    let received = tokio::time::timeout(timeout, socket.recv_from(&mut buffer))
        .await
        .map_err(|_| DnsError::Unreachable(resolver, format!("no answer within {} s", timeout.as_secs())))?
        .map_err(|err| DnsError::Unreachable(resolver, err.to_string()))?;
    parse_txt_answer(id, &buffer[..received.0])
}

/// A standard query (recursion desired) for the TXT records of `name`.
pub fn build_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut out = Vec::with_capacity(32 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(DnsError::BadName(name.to_string()));
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 || !label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_') {
            return Err(DnsError::BadName(name.to_string()));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(&[0, 0, 16, 0, 1]);
    Ok(out)
}

fn u16_at(message: &[u8], at: usize) -> Result<u16, DnsError> {
    message.get(at..at + 2).map(|bytes| u16::from_be_bytes([bytes[0], bytes[1]])).ok_or(DnsError::Malformed("message ends early"))
}

/// Skips a (possibly compressed) name starting at `at`; returns the offset after it.
fn skip_name(message: &[u8], mut at: usize) -> Result<usize, DnsError> {
    for _ in 0..128 {
        let length = *message.get(at).ok_or(DnsError::Malformed("name runs past the end"))?;
        match length {
            0 => return Ok(at + 1),
            length if length & 0xc0 == 0xc0 => {
                message.get(at + 1).ok_or(DnsError::Malformed("pointer runs past the end"))?;
                return Ok(at + 2);
            }
            length if length & 0xc0 != 0 => return Err(DnsError::Malformed("unknown label type")),
            length => at += 1 + usize::from(length),
        }
    }
    Err(DnsError::Malformed("name has too many labels"))
}

/// Reads the TXT records out of an answer to query `id`.
pub fn parse_txt_answer(id: u16, message: &[u8]) -> Result<Vec<String>, DnsError> {
    if message.len() < 12 {
        return Err(DnsError::Malformed("shorter than a header"));
    }
    if u16_at(message, 0)? != id {
        return Err(DnsError::Malformed("answer to another query"));
    }
    let flags = u16_at(message, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::Malformed("not a response"));
    }
    match (flags & 0x000f) as u8 {
        0 => {}
        3 => return Ok(Vec::new()),
        code => return Err(DnsError::Failed(code)),
    }
    let (questions, answers) = (u16_at(message, 4)?, u16_at(message, 6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4;
    }
    let mut records = Vec::new();
    for _ in 0..answers {
        at = skip_name(message, at)?;
        let kind = u16_at(message, at)?;
        let length = usize::from(u16_at(message, at + 8)?);
        let data = message.get(at + 10..at + 10 + length).ok_or(DnsError::Malformed("record data runs past the end"))?;
        at += 10 + length;
        if kind != 16 {
            continue;
        }
        let mut text = Vec::new();
        let mut cursor = 0;
        while cursor < data.len() {
            let piece = usize::from(data[cursor]);
            let bytes = data.get(cursor + 1..cursor + 1 + piece).ok_or(DnsError::Malformed("TXT string runs past its record"))?;
            text.extend_from_slice(bytes);
            cursor += 1 + piece;
        }
        records.push(String::from_utf8_lossy(&text).into_owned());
    }
    Ok(records)
}

/// The first nameserver in `/etc/resolv.conf`, port 53.
pub fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .find_map(|address| address.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reads_a_real_answer_shape() {
        // dnsmasq's answer for contoso.example TXT "MS=ms12345678" (a compressed name).
        let answer = b"\x124\x85\x80\x00\x01\x00\x01\x00\x00\x00\x00\x07contoso\x07example\x00\x00\x10\x00\x01\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x00\x00\x0e\rMS=ms12345678";
        assert_eq!(parse_txt_answer(0x1234, answer), Ok(vec!["MS=ms12345678".to_string()]));
        assert_eq!(parse_txt_answer(0x9999, answer), Err(DnsError::Malformed("answer to another query")));
        let query = build_query(0x1234, "contoso.example").unwrap();
        assert_eq!(&query[12..], b"\x07contoso\x07example\x00\x00\x10\x00\x01");
        assert!(build_query(1, "a..b").is_err() && build_query(1, "bad name").is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_are_an_answer_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_txt_answer(u16::from_be_bytes([bytes.first().copied().unwrap_or(0), bytes.get(1).copied().unwrap_or(0)]), &bytes);
        }
    }
}
