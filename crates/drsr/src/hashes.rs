//! Reading NT hashes from a domain controller as Entra Connect does: the endpoint mapper gives
//! DRSUAPI's port, NTLM with packet privacy authenticates the replication account, `DRSBind`,
//! then `DRSGetNCChanges` over the domain naming context for a few attributes (unicodePwd among
//! them), page by page, from a watermark so later passes get only what changed.

use std::net::IpAddr;

use zeroize::Zeroizing;

use crate::drsuapi::{self, ChangesRequest, Cursor, Drs, UsnVector, attid, options};
use crate::ndr::Uuid;
use crate::{RpcError, epm, ntlm, rpc, secrets};

/// This client's DSA id in binds and requests (any GUID other than zeros; constant so a DC's
/// logs show Isthmus).
const CLIENT_DSA: Uuid = Uuid::parse("6b1c4f0e-2a57-4a8e-9d3f-1c5e7a9b0d21");

/// The control access right "Replicating Directory Changes".
pub const GET_CHANGES: &str = "Replicating Directory Changes (DS-Replication-Get-Changes, 1131f6aa-9c07-11d1-f79f-00c04fc2dcd2)";
/// The control access right "Replicating Directory Changes All".
pub const GET_CHANGES_ALL: &str =
    "Replicating Directory Changes All (DS-Replication-Get-Changes-All, 1131f6ad-9c07-11d1-f79f-00c04fc2dcd2)";

/// Windows errors a DC answers with.
const ERROR_ACCESS_DENIED: u32 = 5;
const ERROR_DS_DRA_ACCESS_DENIED: u32 = 8453;
const ERROR_DS_DRA_BAD_NC: u32 = 8440;
const ERROR_LOGON_FAILURE: u32 = 0x0000_052e;
/// nca_s_fault_access_denied / RPC access denied as fault statuses.
const FAULT_ACCESS_DENIED: u32 = 0x0000_0005;
const NCA_SECURITY_FAILURE: u32 = 0x1c01_0014;
/// nca_proto_error: what Samba answers the first call with after a failed NTLM AUTHENTICATE.
const NCA_PROTO_ERROR: u32 = 0x1c01_000b;

/// Why reading hashes failed, in words an administrator can act on.
#[derive(Debug, thiserror::Error)]
pub enum HashSyncError {
    /// The DC refused the account's credentials.
    #[error(
        "the domain controller refused the replication account's credentials (user name, domain or password is wrong, or the account is disabled or locked out)"
    )]
    Logon,
    /// The DC refused replication: the account lacks a replication right on the domain root
    /// (a DC does not say which; `connector_ldap::replication_account` reads the DACL to tell).
    #[error(
        "the domain controller refused to replicate {naming_context} to the replication account: it needs {GET_CHANGES} and {GET_CHANGES_ALL} on the domain root, as Entra Connect's AD DS connector account has them"
    )]
    AccessDenied {
        /// The domain root.
        naming_context: String,
    },
    /// The naming context is not one the DC holds.
    #[error("the domain controller holds no naming context {0}")]
    BadNamingContext(String),
    /// Anything else on the wire.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// A secret did not decrypt.
    #[error("{0}")]
    Secret(#[from] secrets::SecretError),
}

/// Where the next pass continues: the DC's invocation id, its USN position and the
/// up-to-dateness vector. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    /// The DC (its invocation id) the position belongs to; another DC starts over.
    pub invocation_id: Uuid,
    /// Its USN position.
    pub position: UsnVector,
    /// What has been seen from every DC.
    pub cursors: Vec<Cursor>,
}

impl Watermark {
    /// A one-line text form for a store.
    pub fn to_text(&self) -> String {
        let p = self.position;
        let mut out = format!("v1;{};{};{};{}", self.invocation_id, p.high_obj_update, p.reserved, p.high_prop_update);
        for cursor in &self.cursors {
            out.push_str(&format!(";{}={}", cursor.dsa, cursor.usn));
        }
        out
    }

    /// Reads [`Watermark::to_text`]'s form.
    pub fn from_text(text: &str) -> Option<Watermark> {
        let mut parts = text.split(';');
        if parts.next()? != "v1" {
            return None;
        }
        let invocation_id = parse_uuid(parts.next()?)?;
        let position = UsnVector {
            high_obj_update: parts.next()?.parse().ok()?,
            reserved: parts.next()?.parse().ok()?,
            high_prop_update: parts.next()?.parse().ok()?,
        };
        let cursors = parts
            .map(|part| {
                let (dsa, usn) = part.split_once('=')?;
                Some(Cursor { dsa: parse_uuid(dsa)?, usn: usn.parse().ok()? })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Watermark { invocation_id, position, cursors })
    }
}

fn parse_uuid(text: &str) -> Option<Uuid> {
    let ok = text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| if [8, 13, 18, 23].contains(&i) { b == b'-' } else { b.is_ascii_hexdigit() });
    ok.then(|| Uuid::parse(text))
}

/// One account the pass saw with a password.
pub struct AccountHash {
    /// objectGUID, as AD stores it (the connector space's anchor).
    pub guid: [u8; 16],
    /// Its DN.
    pub dn: String,
    /// The relative id.
    pub rid: u32,
    /// userAccountControl, when sent.
    pub user_account_control: Option<u32>,
    /// The NT hash.
    pub nt_hash: Zeroizing<[u8; 16]>,
}

impl std::fmt::Debug for AccountHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountHash").field("dn", &self.dn).field("rid", &self.rid).finish_non_exhaustive()
    }
}

/// The result of a pass.
#[derive(Debug)]
pub struct HashPass {
    /// Accounts whose unicodePwd came (all on a full pass; changed ones on an incremental one).
    pub accounts: Vec<AccountHash>,
    /// Objects the DC sent in all (with or without a password).
    pub objects: usize,
    /// Where the next pass continues.
    pub watermark: Watermark,
}

/// Reads the NT hashes of `naming_context` from the DC at `host`, as `credentials`, from
/// `since` (everything when `None`, or when the DC is not the one the watermark came from).
/// `on_page` hears the running count of objects after each reply.
pub async fn read_hashes(
    host: IpAddr,
    credentials: &ntlm::Credentials,
    naming_context: &str,
    since: Option<&Watermark>,
    on_page: &mut (dyn FnMut(usize) + Send),
) -> Result<HashPass, HashSyncError> {
    let endpoint = epm::map(host, crate::DRSUAPI).await?;
    let connection = rpc::Connection::bind_ntlm(endpoint, crate::DRSUAPI, credentials).await?;
    let mut drs = match Drs::bind(connection, CLIENT_DSA).await {
        Err(RpcError::Fault(FAULT_ACCESS_DENIED | NCA_SECURITY_FAILURE | NCA_PROTO_ERROR | ERROR_LOGON_FAILURE)) | Err(RpcError::Io(_)) => {
            return Err(HashSyncError::Logon);
        }
        other => other?,
    };
    let session_key = Zeroizing::new(*drs.session_key().ok_or_else(|| RpcError::Refused("no NTLM session key".into()))?);
    let mut request = ChangesRequest {
        client_dsa: CLIENT_DSA,
        invocation_id: Uuid(0, 0, 0, [0; 8]),
        naming_context: naming_context.to_string(),
        from: UsnVector::default(),
        up_to_date: Vec::new(),
        flags: options::WRIT_REP | options::INIT_SYNC | options::PER_SYNC,
        max_objects: 1000,
        max_bytes: 8 << 20,
        attributes: vec![attid::OBJECT_CLASS, attid::USER_ACCOUNT_CONTROL, attid::UNICODE_PWD, attid::OBJECT_SID],
    };
    match since {
        Some(watermark) => {
            request.invocation_id = watermark.invocation_id;
            request.from = watermark.position;
            request.up_to_date = watermark.cursors.clone();
        }
        None => request.flags |= options::NEVER_SYNCED,
    }
    let standard = drsuapi::default_prefixes();
    let wanted = |reply_prefixes: &[drsuapi::Prefix], id: u32, ours: u32| {
        drsuapi::oid_of(reply_prefixes, id).is_some_and(|oid| Some(oid) == drsuapi::oid_of(&standard, ours))
    };
    let mut accounts = Vec::new();
    let mut objects = 0;
    let mut first = true;
    loop {
        let reply = drs.get_nc_changes(&request).await?;
        match if reply.status != 0 { reply.status } else { reply.error } {
            0 => {}
            ERROR_DS_DRA_ACCESS_DENIED | ERROR_ACCESS_DENIED => {
                return Err(HashSyncError::AccessDenied { naming_context: naming_context.to_string() });
            }
            ERROR_DS_DRA_BAD_NC => return Err(HashSyncError::BadNamingContext(naming_context.to_string())),
            other => return Err(RpcError::Fault(other).into()),
        }
        if first && since.is_some_and(|watermark| watermark.invocation_id != reply.invocation_id) {
            // Another DC (or a restored one) answered: its USNs mean nothing here. Start over.
            request.invocation_id = reply.invocation_id;
            request.from = UsnVector::default();
            request.up_to_date.clear();
            request.flags |= options::NEVER_SYNCED;
            first = false;
            accounts.clear();
            objects = 0;
            continue;
        }
        first = false;
        objects += reply.objects.len();
        for object in &reply.objects {
            let mut password = None;
            let mut uac = None;
            for (id, values) in &object.attributes {
                if wanted(&reply.prefixes, *id, attid::UNICODE_PWD) {
                    password = values.first();
                } else if wanted(&reply.prefixes, *id, attid::USER_ACCOUNT_CONTROL) {
                    uac = values.first().and_then(|value| value.get(..4)).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
            }
            let (Some(value), Some(rid), Some(guid)) = (password, object.name.rid(), object.name.guid) else { continue };
            let nt_hash = secrets::nt_hash(&session_key, rid, value)?;
            accounts.push(AccountHash { guid: guid.to_bytes(), dn: object.name.dn.clone(), rid, user_account_control: uac, nt_hash });
        }
        on_page(objects);
        if !reply.more {
            let watermark = Watermark { invocation_id: reply.invocation_id, position: reply.to, cursors: reply.cursors };
            drs.unbind().await.ok();
            return Ok(HashPass { accounts, objects, watermark });
        }
        request.invocation_id = reply.invocation_id;
        request.from = reply.to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_round_trip_as_text_and_bad_text_is_refused() {
        let watermark = Watermark {
            invocation_id: Uuid::parse("75b07d05-dca0-4498-9b0b-c8ced1e62710"),
            position: UsnVector { high_obj_update: 3992, reserved: 0, high_prop_update: 3990 },
            cursors: vec![Cursor { dsa: Uuid::parse("75b07d05-dca0-4498-9b0b-c8ced1e62710"), usn: 3992 }],
        };
        let text = watermark.to_text();
        assert_eq!(Watermark::from_text(&text), Some(watermark));
        for bad in [
            "",
            "v2;x",
            "v1;not-a-uuid;1;2;3",
            "v1;75b07d05-dca0-4498-9b0b-c8ced1e62710;1;2",
            "v1;75b07d05-dca0-4498-9b0b-c8ced1e62710;1;2;3;x=1",
        ] {
            assert_eq!(Watermark::from_text(bad), None, "{bad}");
        }
    }
}
