//! A client of Active Directory replication ([MS-DRSR]) over connection-oriented DCE/RPC on TCP
//! ([MS-RPCE]), written from the public specifications, for password hash sync: Entra Connect
//! reads users' NT hashes with `IDL_DRSGetNCChanges`, as a domain controller would, with an
//! account holding only the two replication rights.
//!
//! Built so far: NDR encoding (`ndr`), DCE/RPC PDUs, binds and calls over TCP (`rpc`), and the
//! endpoint mapper (`epm`) that says on which port DRSUAPI listens. Next: NTLM authentication
//! with packet privacy, `DRSBind`, `DRSGetNCChanges` with the secrets flag and the decryption of
//! the returned `unicodePwd`.
//!
//! Knows no store, no engine and no tenant.

pub mod drsuapi;
pub mod epm;
pub mod hashes;
pub mod ndr;
pub mod ntlm;
pub mod rpc;
pub mod secrets;

/// The DRSUAPI interface (MS-DRSR), version 4.0.
pub const DRSUAPI: (ndr::Uuid, u16, u16) = (ndr::Uuid::parse("e3514235-4b06-11d1-ab04-00c04fc2dcd2"), 4, 0);

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The network.
    #[error("RPC transport: {0}")]
    Io(String),
    /// The server sent something this client cannot read.
    #[error("malformed RPC data: {0}")]
    Malformed(String),
    /// The server refused (a bind_nak, a refused context, no endpoint).
    #[error("refused: {0}")]
    Refused(String),
    /// A fault PDU or a non-zero status, with its code (e.g. 0x00000005 access denied).
    #[error("RPC fault 0x{0:08x}")]
    Fault(u32),
}
