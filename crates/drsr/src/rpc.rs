//! Connection-oriented DCE/RPC over TCP ([MS-RPCE], C706 chapter 12): the 16-byte common
//! header, `bind`/`bind_ack`, `request`/`response` (fragments reassembled) and `fault`.
//! Authentication (the auth verifier trailer) is added by the caller's security layer later;
//! this layer sends and receives PDUs.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::RpcError;
use crate::ndr::{Reader, Uuid, Writer};

/// NDR 2.0, the transfer syntax this client speaks.
pub const NDR: (Uuid, u32) = (Uuid::parse("8a885d04-1ceb-11c9-9fe8-08002b104860"), 2);

/// PDU types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PduType {
    /// A call.
    Request = 0,
    /// Its answer.
    Response = 2,
    /// A call failed.
    Fault = 3,
    /// Open an association.
    Bind = 11,
    /// The association is open.
    BindAck = 12,
    /// The association was refused.
    BindNak = 13,
}

const FIRST_FRAG: u8 = 0x01;
const LAST_FRAG: u8 = 0x02;
/// Largest fragment this client sends or accepts.
pub const MAX_FRAG: u16 = 4280;

/// One received PDU.
#[derive(Debug, Clone)]
pub struct Pdu {
    /// Its type (the raw byte).
    pub ptype: u8,
    /// pfc_flags.
    pub flags: u8,
    /// The call it belongs to.
    pub call_id: u32,
    /// Everything after the 16-byte header (body, then any auth trailer).
    pub body: Vec<u8>,
    /// auth_length.
    pub auth_length: u16,
}

/// The 16-byte common header followed by `body`.
pub fn pdu(ptype: PduType, flags: u8, call_id: u32, body: &[u8], auth_length: u16) -> Result<Vec<u8>, RpcError> {
    let length =
        u16::try_from(16 + body.len()).map_err(|_| RpcError::Malformed(format!("a PDU of {} bytes is too long", 16 + body.len())))?;
    let mut out = Vec::with_capacity(usize::from(length));
    out.extend_from_slice(&[5, 0, ptype as u8, flags, 0x10, 0, 0, 0]);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&auth_length.to_le_bytes());
    out.extend_from_slice(&call_id.to_le_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Parses a header; returns the PDU and how many bytes it took, or `None` when more are needed.
pub fn parse(bytes: &[u8]) -> Result<Option<(Pdu, usize)>, RpcError> {
    if bytes.len() < 16 {
        return Ok(None);
    }
    if bytes[0] != 5 || bytes[1] != 0 {
        return Err(RpcError::Malformed(format!("not DCE/RPC version 5.0 (got {}.{})", bytes[0], bytes[1])));
    }
    if bytes[4] & 0xF0 != 0x10 {
        return Err(RpcError::Malformed("the server answered in big-endian data representation, which this client does not read".into()));
    }
    let length = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    if length < 16 {
        return Err(RpcError::Malformed(format!("a fragment length of {length}")));
    }
    if bytes.len() < length {
        return Ok(None);
    }
    let pdu = Pdu {
        ptype: bytes[2],
        flags: bytes[3],
        auth_length: u16::from_le_bytes([bytes[10], bytes[11]]),
        call_id: u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
        body: bytes[16..length].to_vec(),
    };
    Ok(Some((pdu, length)))
}

/// A bind body: one presentation context for `interface` over NDR.
pub fn bind_body(interface: (Uuid, u16, u16), context_id: u16) -> Vec<u8> {
    let mut w = Writer::default();
    w.u16(MAX_FRAG);
    w.u16(MAX_FRAG);
    w.u32(0); // new association group
    w.u8(1); // one context
    w.u8(0);
    w.u16(0);
    w.u16(context_id);
    w.u8(1); // one transfer syntax
    w.u8(0);
    w.uuid(interface.0);
    w.u16(interface.1);
    w.u16(interface.2);
    w.uuid(NDR.0);
    w.u32(NDR.1);
    w.bytes
}

/// What a `bind_ack` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindAck {
    /// The largest fragment the server sends.
    pub max_recv: u16,
    /// The association group.
    pub assoc_group: u32,
    /// The secondary address (the server's port, as text).
    pub secondary_address: String,
    /// The result for the one context: 0 accepted.
    pub result: u16,
    /// Why not, when refused.
    pub reason: u16,
}

/// Reads a `bind_ack` body.
pub fn parse_bind_ack(body: &[u8]) -> Result<BindAck, RpcError> {
    let mut r = Reader::new(body);
    let _max_xmit = r.u16("max_xmit_frag")?;
    let max_recv = r.u16("max_recv_frag")?;
    let assoc_group = r.u32("assoc_group_id")?;
    let address_length = usize::from(r.u16("sec_addr length")?);
    let address = r.take(address_length, "sec_addr")?;
    let secondary_address = String::from_utf8_lossy(address.strip_suffix(&[0]).unwrap_or(address)).into_owned();
    r.align(4)?;
    let results = r.u8("n_results")?;
    r.take(3, "reserved")?;
    if results == 0 {
        return Err(RpcError::Malformed("a bind_ack without results".into()));
    }
    let result = r.u16("result")?;
    let reason = r.u16("reason")?;
    Ok(BindAck { max_recv, assoc_group, secondary_address, result, reason })
}

/// An open association over TCP, bound to one interface (context 0).
pub struct Connection {
    stream: TcpStream,
    next_call: u32,
    buffer: Vec<u8>,
    /// What the server answered to the bind.
    pub bound: BindAck,
}

impl Connection {
    /// Connects to `addr` and binds `interface` (uuid, major, minor) without authentication.
    pub async fn bind(addr: std::net::SocketAddr, interface: (Uuid, u16, u16)) -> Result<Connection, RpcError> {
        let stream = TcpStream::connect(addr).await.map_err(|err| RpcError::Io(format!("connect to {addr}: {err}")))?;
        stream.set_nodelay(true).map_err(|err| RpcError::Io(err.to_string()))?;
        let mut connection = Connection {
            stream,
            next_call: 1,
            buffer: Vec::new(),
            bound: BindAck { max_recv: 0, assoc_group: 0, secondary_address: String::new(), result: 0, reason: 0 },
        };
        let call_id = connection.call_id();
        let bind = pdu(PduType::Bind, FIRST_FRAG | LAST_FRAG, call_id, &bind_body(interface, 0), 0)?;
        connection.send(&bind).await?;
        let answer = connection.receive().await?;
        match answer.ptype {
            t if t == PduType::BindAck as u8 => {
                let ack = parse_bind_ack(&answer.body)?;
                if ack.result != 0 {
                    return Err(RpcError::Refused(format!(
                        "the server refused interface {} (result {}, reason {})",
                        interface.0, ack.result, ack.reason
                    )));
                }
                connection.bound = ack;
                Ok(connection)
            }
            t if t == PduType::BindNak as u8 => {
                let reason = Reader::new(&answer.body).u16("reject reason").unwrap_or(0);
                Err(RpcError::Refused(format!("bind_nak (reason {reason})")))
            }
            other => Err(RpcError::Malformed(format!("PDU type {other} in answer to a bind"))),
        }
    }

    fn call_id(&mut self) -> u32 {
        let id = self.next_call;
        self.next_call += 1;
        id
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), RpcError> {
        self.stream.write_all(bytes).await.map_err(|err| RpcError::Io(format!("send: {err}")))
    }

    async fn receive(&mut self) -> Result<Pdu, RpcError> {
        loop {
            if let Some((pdu, used)) = parse(&self.buffer)? {
                self.buffer.drain(..used);
                return Ok(pdu);
            }
            let mut chunk = [0u8; 8192];
            let read = self.stream.read(&mut chunk).await.map_err(|err| RpcError::Io(format!("receive: {err}")))?;
            if read == 0 {
                return Err(RpcError::Io("the server closed the connection".into()));
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// Calls `opnum` with NDR `stub` data; returns the response's stub data (all fragments).
    pub async fn call(&mut self, opnum: u16, stub: &[u8]) -> Result<Vec<u8>, RpcError> {
        let call_id = self.call_id();
        // Request fragments: 24 bytes of header and request fields each.
        let room = usize::from(MAX_FRAG) - 24;
        let chunks: Vec<&[u8]> = if stub.is_empty() { vec![&[][..]] } else { stub.chunks(room).collect() };
        for (index, chunk) in chunks.iter().enumerate() {
            let mut flags = 0;
            if index == 0 {
                flags |= FIRST_FRAG;
            }
            if index + 1 == chunks.len() {
                flags |= LAST_FRAG;
            }
            let mut body = Writer::default();
            body.u32(stub.len() as u32);
            body.u16(0); // context 0
            body.u16(opnum);
            body.raw(chunk);
            let request = pdu(PduType::Request, flags, call_id, &body.bytes, 0)?;
            self.send(&request).await?;
        }
        let mut out = Vec::new();
        loop {
            let answer = self.receive().await?;
            if answer.call_id != call_id {
                return Err(RpcError::Malformed(format!("an answer for call {} while waiting for {call_id}", answer.call_id)));
            }
            if answer.ptype == PduType::Fault as u8 {
                let mut r = Reader::new(&answer.body);
                r.take(8, "fault header")?;
                let status = r.u32("fault status")?;
                return Err(RpcError::Fault(status));
            }
            if answer.ptype != PduType::Response as u8 {
                return Err(RpcError::Malformed(format!("PDU type {} in answer to a request", answer.ptype)));
            }
            let stub_end = answer.body.len() - usize::from(answer.auth_length).min(answer.body.len());
            if stub_end < 8 {
                return Err(RpcError::Malformed("a response shorter than its header".into()));
            }
            out.extend_from_slice(&answer.body[8..stub_end]);
            if answer.flags & LAST_FRAG != 0 {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_partial_input_waits() {
        let bytes = pdu(PduType::Request, FIRST_FRAG | LAST_FRAG, 7, &[1, 2, 3], 0).ok().unwrap_or_default();
        assert_eq!(bytes.len(), 19);
        assert_eq!(&bytes[..4], &[5, 0, 0, 3]);
        let (parsed, used) = parse(&bytes).ok().flatten().unwrap_or_else(|| panic!("parses"));
        assert_eq!((parsed.call_id, parsed.body.as_slice(), used), (7, &[1u8, 2, 3][..], 19));
        assert!(matches!(parse(&bytes[..18]), Ok(None)), "more bytes needed");
        let mut wrong = bytes.clone();
        wrong[0] = 4;
        assert!(parse(&wrong).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse(&bytes);
            let _ = parse_bind_ack(&bytes);
        }
    }
}
