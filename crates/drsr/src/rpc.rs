//! Connection-oriented DCE/RPC over TCP ([MS-RPCE], C706 chapter 12): the 16-byte common
//! header, `bind`/`bind_ack`, `request`/`response` (fragments reassembled) and `fault`.
//! With NTLM credentials the bind carries the NTLM NEGOTIATE/CHALLENGE exchange, an `auth3`
//! completes it, and every request and response is sealed (packet privacy, auth level 6): the
//! stub encrypted, the whole PDU signed.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ndr::{Reader, Uuid, Writer};
use crate::{RpcError, ntlm};

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
    /// The last leg of a three-leg authentication.
    Auth3 = 16,
}

/// `auth_type` of NTLMSSP (RPC_C_AUTHN_WINNT).
const AUTH_NTLMSSP: u8 = 10;
/// `auth_level` packet privacy (RPC_C_AUTHN_LEVEL_PKT_PRIVACY).
const AUTH_LEVEL_PRIVACY: u8 = 6;
/// The one security context this client opens.
const AUTH_CONTEXT_ID: u32 = 1;
/// Stub data is padded to this multiple before the auth trailer.
const AUTH_PAD: usize = 16;
/// An NTLM signature's length.
const SIGNATURE_LEN: usize = 16;

/// The 8-byte `sec_trailer` that precedes the auth value.
fn sec_trailer(pad: u8) -> [u8; 8] {
    let mut out = [AUTH_NTLMSSP, AUTH_LEVEL_PRIVACY, pad, 0, 0, 0, 0, 0];
    out[4..].copy_from_slice(&AUTH_CONTEXT_ID.to_le_bytes());
    out
}

/// The auth value at the end of a PDU body, after checking its `sec_trailer` says NTLMSSP at
/// packet privacy; returns (body before the trailer, pad length, auth value).
fn split_auth(pdu: &Pdu) -> Result<(&[u8], u8, &[u8]), RpcError> {
    let auth_length = usize::from(pdu.auth_length);
    let trailer_at = pdu
        .body
        .len()
        .checked_sub(auth_length + 8)
        .ok_or_else(|| RpcError::Malformed(format!("an auth length of {auth_length} in a {}-byte PDU body", pdu.body.len())))?;
    let trailer = &pdu.body[trailer_at..trailer_at + 8];
    if trailer[0] != AUTH_NTLMSSP || trailer[1] != AUTH_LEVEL_PRIVACY {
        return Err(RpcError::Malformed(format!(
            "auth type {} level {} where NTLMSSP at packet privacy was bound",
            trailer[0], trailer[1]
        )));
    }
    Ok((&pdu.body[..trailer_at], trailer[2], &pdu.body[trailer_at + 8..]))
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
    /// The 16 header bytes as received (a signature covers them).
    pub header: [u8; 16],
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
        header: bytes[..16].try_into().unwrap_or([0; 16]),
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
    session: Option<ntlm::Session>,
    /// What the server answered to the bind.
    pub bound: BindAck,
}

impl Connection {
    /// Connects to `addr` and binds `interface` (uuid, major, minor) without authentication.
    pub async fn bind(addr: std::net::SocketAddr, interface: (Uuid, u16, u16)) -> Result<Connection, RpcError> {
        let (mut connection, _) = Connection::open_bound(addr, interface, None).await?;
        connection.session = None;
        Ok(connection)
    }

    /// Connects to `addr`, binds `interface` authenticating with NTLM as `credentials`, and
    /// seals every call afterwards (packet privacy).
    pub async fn bind_ntlm(
        addr: std::net::SocketAddr,
        interface: (Uuid, u16, u16),
        credentials: &ntlm::Credentials,
    ) -> Result<Connection, RpcError> {
        let (mut connection, challenge) = Connection::open_bound(addr, interface, Some(&ntlm::negotiate())).await?;
        let challenge = challenge.ok_or_else(|| RpcError::Malformed("a bind_ack without the NTLM CHALLENGE".into()))?;
        let authenticated = ntlm::authenticate(credentials, &ntlm::parse_challenge(&challenge)?)?;
        let mut body = vec![0u8; 4]; // auth3's pad
        body.extend_from_slice(&sec_trailer(0));
        body.extend_from_slice(&authenticated.message);
        let auth_length =
            u16::try_from(authenticated.message.len()).map_err(|_| RpcError::Malformed("an oversized NTLM message".into()))?;
        let call_id = connection.call_id();
        connection.send(&pdu(PduType::Auth3, FIRST_FRAG | LAST_FRAG, call_id, &body, auth_length)?).await?;
        connection.session = Some(authenticated.session);
        Ok(connection)
    }

    /// The NTLM session key, on an authenticated connection.
    pub fn session_key(&self) -> Option<&[u8; 16]> {
        self.session.as_ref().map(ntlm::Session::session_key)
    }

    async fn open_bound(
        addr: std::net::SocketAddr,
        interface: (Uuid, u16, u16),
        token: Option<&[u8]>,
    ) -> Result<(Connection, Option<Vec<u8>>), RpcError> {
        let stream = TcpStream::connect(addr).await.map_err(|err| RpcError::Io(format!("connect to {addr}: {err}")))?;
        stream.set_nodelay(true).map_err(|err| RpcError::Io(err.to_string()))?;
        let mut connection = Connection {
            stream,
            next_call: 1,
            buffer: Vec::new(),
            session: None,
            bound: BindAck { max_recv: 0, assoc_group: 0, secondary_address: String::new(), result: 0, reason: 0 },
        };
        let call_id = connection.call_id();
        let mut body = bind_body(interface, 0);
        let mut auth_length = 0;
        if let Some(token) = token {
            body.extend_from_slice(&sec_trailer(0));
            body.extend_from_slice(token);
            auth_length = u16::try_from(token.len()).map_err(|_| RpcError::Malformed("an oversized auth token".into()))?;
        }
        let bind = pdu(PduType::Bind, FIRST_FRAG | LAST_FRAG, call_id, &body, auth_length)?;
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
                let challenge = if token.is_some() && answer.auth_length > 0 { Some(split_auth(&answer)?.2.to_vec()) } else { None };
                Ok((connection, challenge))
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
        let max_frag = usize::from(self.bound.max_recv.clamp(1024, MAX_FRAG));
        // Each fragment: 24 bytes of header and request fields, then (sealed) the stub chunk,
        // its pad, the sec_trailer and the signature.
        let room = match self.session {
            Some(_) => (max_frag - 24 - 8 - SIGNATURE_LEN) / AUTH_PAD * AUTH_PAD,
            None => max_frag - 24,
        };
        let chunks: Vec<&[u8]> = if stub.is_empty() { vec![&[][..]] } else { stub.chunks(room).collect() };
        let mut remaining = stub.len();
        for (index, chunk) in chunks.iter().enumerate() {
            let mut flags = 0;
            if index == 0 {
                flags |= FIRST_FRAG;
            }
            if index + 1 == chunks.len() {
                flags |= LAST_FRAG;
            }
            let mut body = Writer::default();
            body.u32(remaining as u32);
            body.u16(0); // context 0
            body.u16(opnum);
            body.raw(chunk);
            remaining -= chunk.len();
            let request = match self.session.as_mut() {
                None => pdu(PduType::Request, flags, call_id, &body.bytes, 0)?,
                Some(session) => {
                    let pad = (AUTH_PAD - chunk.len() % AUTH_PAD) % AUTH_PAD;
                    body.raw(&vec![0; pad]);
                    body.raw(&sec_trailer(pad as u8));
                    // The signature covers the whole PDU up to itself, with the length fields
                    // counting it; the stub and its pad are then encrypted.
                    body.raw(&[0; SIGNATURE_LEN]);
                    let mut bytes = pdu(PduType::Request, flags, call_id, &body.bytes, SIGNATURE_LEN as u16)?;
                    let signed_end = bytes.len() - SIGNATURE_LEN;
                    let signed = bytes[..signed_end].to_vec();
                    let data_end = signed_end - 8;
                    let signature = session.seal(&mut bytes[24..data_end], &signed);
                    bytes[signed_end..].copy_from_slice(&signature);
                    bytes
                }
            };
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
            match self.session.as_mut() {
                None => {
                    let stub_end = answer.body.len() - usize::from(answer.auth_length).min(answer.body.len());
                    if stub_end < 8 {
                        return Err(RpcError::Malformed("a response shorter than its header".into()));
                    }
                    out.extend_from_slice(&answer.body[8..stub_end]);
                }
                Some(session) => {
                    let (before_trailer, pad, signature) = split_auth(&answer)?;
                    let data_end = before_trailer.len();
                    if data_end < 8 || usize::from(pad) > data_end - 8 {
                        return Err(RpcError::Malformed("a sealed response shorter than its header and pad".into()));
                    }
                    let signature = signature.to_vec();
                    let mut body = answer.body.clone();
                    let header = answer.header;
                    let signed_end = body.len() - signature.len();
                    let (data, rest) = body.split_at_mut(data_end);
                    let trailer = &rest[..signed_end - data_end];
                    session.unseal(&mut data[8..], &signature, |plain| {
                        let mut signed = Vec::with_capacity(16 + signed_end);
                        signed.extend_from_slice(&header);
                        signed.extend_from_slice(&answer.body[..8]);
                        signed.extend_from_slice(plain);
                        signed.extend_from_slice(trailer);
                        signed
                    })?;
                    out.extend_from_slice(&body[8..data_end - usize::from(pad)]);
                }
            }
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
