//! The DRSUAPI calls a replication client needs ([MS-DRSR] 4.1): `IDL_DRSBind`,
//! `IDL_DRSGetNCChanges` (request version 8, reply version 6, uncompressed) and
//! `IDL_DRSUnbind`, as NDR over a sealed [`Connection`].
//!
//! Pointers follow NDR's rule: a structure's scalars come first with a referent id per
//! non-null pointer, then the referents in member order, each followed by its own referents.
//! The reply's object list is a linked list whose `pNextEntInf` is its first member, so the
//! scalars of all entries come first, one after the other, and their other referents follow in
//! reverse order; [`read_objects`] reads it without recursion.

use crate::RpcError;
use crate::ndr::{Reader, Uuid, Writer};
use crate::rpc::Connection;

/// `DRS_EXTENSIONS_INT.dwFlags` bits this client announces ([MS-DRSR] 5.39).
pub mod ext {
    /// Unused; set.
    pub const BASE: u32 = 0x0000_0001;
    /// DRS_MSG_REPADD_V2.
    pub const ASYNCREPL: u32 = 0x0000_0002;
    /// IDL_DRSRemoveDsServer/Domain.
    pub const REMOVEAPI: u32 = 0x0000_0004;
    /// DRS_MSG_MOVEREQ_V2.
    pub const MOVEREQ_V2: u32 = 0x0000_0008;
    /// Restore-USN optimization (needed with GETCHGREQ_V5 and later).
    pub const RESTORE_USN_OPTIMIZATION: u32 = 0x0000_0040;
    /// Instance type not required on modifications; set.
    pub const INSTANCE_TYPE_NOT_REQ_ON_MOD: u32 = 0x0000_1000;
    /// 128-bit encryption of secrets on the wire (salted MD5 + RC4 + CRC32). Without it a DC
    /// sends no secrets.
    pub const STRONG_ENCRYPTION: u32 = 0x0000_8000;
    /// Unused; set.
    pub const POST_BETA3: u32 = 0x0008_0000;
    /// DRS_MSG_GETCHGREQ_V5.
    pub const GETCHGREQ_V5: u32 = 0x0010_0000;
    /// DRS_MSG_GETCHGREQ_V6.
    pub const GETCHGREQ_V6: u32 = 0x0040_0000;
    /// DRS_MSG_GETCHGREQ_V8.
    pub const GETCHGREQ_V8: u32 = 0x0100_0000;
    /// DRS_MSG_GETCHGREPLY_V5.
    pub const GETCHGREPLY_V5: u32 = 0x0200_0000;
    /// DRS_MSG_GETCHGREPLY_V6.
    pub const GETCHGREPLY_V6: u32 = 0x0400_0000;
}

/// `ulFlags` of a GetNCChanges request (DRS_OPTIONS, [MS-DRSR] 5.41).
pub mod options {
    /// The client holds a writable replica: full attribute values, secrets included when the
    /// caller holds "Replicating Directory Changes All".
    pub const WRIT_REP: u32 = 0x0000_0010;
    /// Replication at start-up.
    pub const INIT_SYNC: u32 = 0x0000_0020;
    /// Periodic replication.
    pub const PER_SYNC: u32 = 0x0000_0040;
    /// The replica was never synchronized.
    pub const NEVER_SYNCED: u32 = 0x0020_0000;
}

/// Opnums.
const OP_BIND: u16 = 0;
const OP_UNBIND: u16 = 1;
const OP_GET_NC_CHANGES: u16 = 3;

/// Largest counts accepted from a reply (objects, attributes, values, bytes of one value).
const LIMIT: usize = 1 << 20;

/// An OID prefix table entry: index and BER-encoded prefix ([MS-DRSR] 5.16.4).
pub type Prefix = (u32, Vec<u8>);

/// The prefixes this client's attribute ids use: the first entries of the standard table.
pub fn default_prefixes() -> Vec<Prefix> {
    vec![
        (0, vec![0x55, 0x04]),                                     // 2.5.4
        (8, vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x14, 0x01, 0x02]), // 1.2.840.113556.1.2
        (9, vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x14, 0x01, 0x04]), // 1.2.840.113556.1.4
    ]
}

/// Attribute ids under [`default_prefixes`].
pub mod attid {
    /// objectClass (2.5.4.0).
    pub const OBJECT_CLASS: u32 = 0x0000_0000;
    /// userAccountControl (1.2.840.113556.1.4.8).
    pub const USER_ACCOUNT_CONTROL: u32 = 0x0009_0008;
    /// unicodePwd (1.2.840.113556.1.4.90): the NT hash, a secret.
    pub const UNICODE_PWD: u32 = 0x0009_005a;
    /// pwdLastSet (1.2.840.113556.1.4.96).
    pub const PWD_LAST_SET: u32 = 0x0009_0060;
    /// objectSid (1.2.840.113556.1.4.146).
    pub const OBJECT_SID: u32 = 0x0009_0092;
    /// sAMAccountName (1.2.840.113556.1.4.221).
    pub const SAM_ACCOUNT_NAME: u32 = 0x0009_00dd;
    /// userPrincipalName (1.2.840.113556.1.4.656).
    pub const USER_PRINCIPAL_NAME: u32 = 0x0009_0290;
}

/// The OID bytes `attid` stands for under `prefixes` ([MS-DRSR] 5.16.4), `None` when its prefix
/// index is not in the table.
pub fn oid_of(prefixes: &[Prefix], attid: u32) -> Option<Vec<u8>> {
    let (index, low) = (attid >> 16, attid & 0xffff);
    let (_, prefix) = prefixes.iter().find(|(ndx, _)| *ndx == index)?;
    let mut oid = prefix.clone();
    let low = low & 0x7fff;
    if low < 128 {
        oid.push(low as u8);
    } else {
        oid.push(((low >> 7) as u8 & 0x7f) | 0x80);
        oid.push(low as u8 & 0x7f);
    }
    Some(oid)
}

/// A DSNAME: an object's GUID, SID and DN (any may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsName {
    /// objectGUID.
    pub guid: Option<Uuid>,
    /// objectSid (binary), empty when none.
    pub sid: Vec<u8>,
    /// The distinguished name.
    pub dn: String,
}

impl DsName {
    /// The relative id: the last sub-authority of the SID.
    pub fn rid(&self) -> Option<u32> {
        let tail = self.sid.len().checked_sub(4).filter(|_| self.sid.len() >= 12)?;
        Some(u32::from_le_bytes([self.sid[tail], self.sid[tail + 1], self.sid[tail + 2], self.sid[tail + 3]]))
    }
}

/// Writes a DSNAME referent (a conformant structure: the count first).
fn write_dsname(w: &mut Writer, dn: &str) {
    let chars: Vec<u16> = dn.encode_utf16().collect();
    let name_len = chars.len() as u32;
    w.u32(name_len + 1); // conformance
    w.u32(4 + 4 + 16 + 28 + 4 + 2 * (name_len + 1)); // structLen
    w.u32(0); // SidLen
    w.raw(&[0; 16]); // Guid
    w.raw(&[0; 28]); // Sid
    w.u32(name_len);
    for c in chars {
        w.u16(c);
    }
    w.u16(0);
}

fn read_dsname(r: &mut Reader<'_>) -> Result<DsName, RpcError> {
    let chars = r.count(LIMIT, "DSNAME size")?;
    let _struct_len = r.u32("DSNAME structLen")?;
    let sid_len = r.u32("DSNAME SidLen")? as usize;
    let guid = r.uuid("DSNAME Guid")?;
    let sid = r.take(28, "DSNAME Sid")?;
    let name_len = r.u32("DSNAME NameLen")? as usize;
    if name_len + 1 != chars || sid_len > 28 {
        return Err(RpcError::Malformed(format!("a DSNAME with NameLen {name_len}, {chars} characters and SidLen {sid_len}")));
    }
    let mut units = Vec::with_capacity(chars);
    for _ in 0..chars {
        units.push(r.u16("DSNAME StringName")?);
    }
    units.pop();
    let dn = String::from_utf16(&units).map_err(|_| RpcError::Malformed("a DSNAME whose name is not UTF-16".into()))?;
    let guid = (guid != Uuid(0, 0, 0, [0; 8])).then_some(guid);
    Ok(DsName { guid, sid: sid[..sid_len].to_vec(), dn })
}

/// A position in a DC's update sequence (USN_VECTOR).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsnVector {
    /// usnHighObjUpdate.
    pub high_obj_update: u64,
    /// usnReserved.
    pub reserved: u64,
    /// usnHighPropUpdate.
    pub high_prop_update: u64,
}

/// What the client has seen from one DC (UPTODATE_CURSOR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The DC's invocation id.
    pub dsa: Uuid,
    /// The highest USN of it applied.
    pub usn: u64,
}

/// One GetNCChanges request (V8).
#[derive(Debug, Clone)]
pub struct ChangesRequest {
    /// This client's id (a GUID of its own).
    pub client_dsa: Uuid,
    /// The server's invocation id, or zeros on the first request.
    pub invocation_id: Uuid,
    /// The naming context's DN.
    pub naming_context: String,
    /// Where to continue from.
    pub from: UsnVector,
    /// Updates already seen (may be empty).
    pub up_to_date: Vec<Cursor>,
    /// DRS_OPTIONS.
    pub flags: u32,
    /// Objects per reply, approximately.
    pub max_objects: u32,
    /// Bytes per reply, approximately.
    pub max_bytes: u32,
    /// The attributes wanted (sorted here); empty for all.
    pub attributes: Vec<u32>,
}

/// An attribute id (under the reply's prefix table) and its values.
pub type Attribute = (u32, Vec<Vec<u8>>);

/// One replicated object: its name and the attribute values sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedObject {
    /// GUID, SID and DN.
    pub name: DsName,
    /// (attribute id under the reply's prefix table, values).
    pub attributes: Vec<Attribute>,
}

/// A GetNCChanges reply (V6).
#[derive(Debug, Clone)]
pub struct ChangesReply {
    /// The server's invocation id.
    pub invocation_id: Uuid,
    /// Where to continue from next.
    pub to: UsnVector,
    /// The server's up-to-dateness vector (on the last reply of a cycle).
    pub cursors: Vec<Cursor>,
    /// The server's prefix table (the attribute ids below use it).
    pub prefixes: Vec<Prefix>,
    /// The objects.
    pub objects: Vec<ReplicatedObject>,
    /// More replies follow.
    pub more: bool,
    /// A non-zero Windows error when the server stopped (dwDRSError).
    pub error: u32,
    /// The call's return value (a Windows error; 0 success).
    pub status: u32,
}

/// Encodes the `IDL_DRSGetNCChanges` request stub.
pub fn encode_get_nc_changes(handle: &[u8; 20], request: &ChangesRequest) -> Vec<u8> {
    let mut attributes = request.attributes.clone();
    attributes.sort_unstable();
    attributes.dedup();
    // The table ends with the schemaInfo entry (0xFF, revision, invocation id) that a DC reads
    // as such, not as a prefix; this client has no schema of its own, so it sends zeros.
    let mut prefixes = default_prefixes();
    let mut schema_info = vec![0xff];
    schema_info.extend_from_slice(&[0; 20]);
    prefixes.push((0, schema_info));
    let mut w = Writer::default();
    w.raw(handle);
    w.u32(8); // dwInVersion
    w.u32(8); // union discriminant
    // DRS_MSG_GETCHGREQ_V8 (aligned to 8: it holds hypers).
    w.align(8);
    w.uuid(request.client_dsa);
    w.uuid(request.invocation_id);
    w.referent(); // pNC
    w.u64(request.from.high_obj_update);
    w.u64(request.from.reserved);
    w.u64(request.from.high_prop_update);
    if request.up_to_date.is_empty() {
        w.null();
    } else {
        w.referent();
    }
    w.u32(request.flags);
    w.u32(request.max_objects);
    w.u32(request.max_bytes);
    w.u32(0); // ulExtendedOp
    w.u64(0); // liFsmoInfo
    if attributes.is_empty() {
        w.null();
    } else {
        w.referent();
    }
    w.null(); // pPartialAttrSetEx
    w.u32(prefixes.len() as u32);
    w.referent(); // pPrefixEntry
    // Referents, in member order.
    write_dsname(&mut w, &request.naming_context);
    if !request.up_to_date.is_empty() {
        w.u32(request.up_to_date.len() as u32); // conformance
        w.align(8);
        w.u32(1); // dwVersion
        w.u32(0);
        w.u32(request.up_to_date.len() as u32);
        w.u32(0);
        for cursor in &request.up_to_date {
            w.align(8);
            w.uuid(cursor.dsa);
            w.u64(cursor.usn);
        }
    }
    if !attributes.is_empty() {
        w.u32(attributes.len() as u32); // conformance
        w.u32(1); // dwVersion
        w.u32(0);
        w.u32(attributes.len() as u32);
        for attribute in &attributes {
            w.u32(*attribute);
        }
    }
    w.u32(prefixes.len() as u32);
    for (index, prefix) in &prefixes {
        w.u32(*index);
        w.u32(prefix.len() as u32);
        w.referent();
    }
    for (_, prefix) in &prefixes {
        w.u32(prefix.len() as u32);
        w.raw(prefix);
    }
    w.bytes
}

fn read_pointer(r: &mut Reader<'_>, what: &str) -> Result<bool, RpcError> {
    Ok(r.u32(what)? != 0)
}

fn read_prefixes(r: &mut Reader<'_>, count: usize) -> Result<Vec<Prefix>, RpcError> {
    let size = r.count(LIMIT, "prefix table size")?;
    if size != count {
        return Err(RpcError::Malformed(format!("a prefix table of {size} entries said to hold {count}")));
    }
    let mut scalars = Vec::with_capacity(size);
    for _ in 0..size {
        let index = r.u32("prefix ndx")?;
        let length = r.u32("prefix length")? as usize;
        let present = read_pointer(r, "prefix elements")?;
        scalars.push((index, length, present));
    }
    let mut out = Vec::with_capacity(size);
    for (index, length, present) in scalars {
        let bytes = if present {
            let n = r.count(LIMIT, "prefix bytes")?;
            if n != length {
                return Err(RpcError::Malformed("a prefix whose length disagrees with its array".into()));
            }
            r.take(n, "prefix")?.to_vec()
        } else {
            Vec::new()
        };
        out.push((index, bytes));
    }
    Ok(out)
}

/// Scalars of one REPLENTINFLIST entry.
struct EntryScalars {
    next: bool,
    name: bool,
    attr_count: usize,
    attrs: bool,
    parent_guid: bool,
    metadata: bool,
}

/// Reads the object list at the reader (the referent of `pObjects`).
pub fn read_objects(r: &mut Reader<'_>) -> Result<Vec<ReplicatedObject>, RpcError> {
    let mut entries = Vec::new();
    loop {
        let next = read_pointer(r, "pNextEntInf")?;
        let name = read_pointer(r, "pName")?;
        let _flags = r.u32("ulFlags")?;
        let attr_count = r.u32("attrCount")? as usize;
        let attrs = read_pointer(r, "pAttr")?;
        let _is_nc_prefix = r.u32("fIsNCPrefix")?;
        let parent_guid = read_pointer(r, "pParentGuid")?;
        let metadata = read_pointer(r, "pMetaDataExt")?;
        if attr_count > LIMIT || entries.len() >= LIMIT {
            return Err(RpcError::Malformed("an object list beyond this client's limits".into()));
        }
        entries.push(EntryScalars { next, name, attr_count, attrs, parent_guid, metadata });
        if !next {
            break;
        }
    }
    let mut objects = Vec::with_capacity(entries.len());
    for entry in entries.iter().rev() {
        let _ = entry.next;
        let name = if entry.name { read_dsname(r)? } else { DsName::default() };
        let attributes = if entry.attrs { read_attributes(r, entry.attr_count)? } else { Vec::new() };
        if entry.parent_guid {
            r.uuid("pParentGuid")?;
        }
        if entry.metadata {
            let size = r.count(LIMIT, "metadata size")?;
            r.align(8)?;
            let props = r.u32("cNumProps")? as usize;
            if props != size {
                return Err(RpcError::Malformed("a metadata vector whose count disagrees with its array".into()));
            }
            for _ in 0..size {
                r.align(8)?;
                r.u32("dwVersion")?;
                r.u64("timeChanged")?;
                r.uuid("uuidDsaOriginating")?;
                r.u64("usnOriginating")?;
            }
        }
        objects.push(ReplicatedObject { name, attributes });
    }
    objects.reverse();
    Ok(objects)
}

fn read_attributes(r: &mut Reader<'_>, count: usize) -> Result<Vec<Attribute>, RpcError> {
    let size = r.count(LIMIT, "ATTR array size")?;
    if size != count {
        return Err(RpcError::Malformed(format!("{size} attributes where attrCount says {count}")));
    }
    let mut scalars = Vec::with_capacity(size);
    for _ in 0..size {
        let attid = r.u32("attrTyp")?;
        let values = r.u32("valCount")? as usize;
        let present = read_pointer(r, "pAVal")?;
        scalars.push((attid, values, present));
    }
    let mut out = Vec::with_capacity(size);
    for (attid, count, present) in scalars {
        let mut values = Vec::new();
        if present {
            let size = r.count(LIMIT, "ATTRVAL array size")?;
            if size != count {
                return Err(RpcError::Malformed(format!("{size} values where valCount says {count}")));
            }
            let mut lengths = Vec::with_capacity(size);
            for _ in 0..size {
                let length = r.u32("valLen")? as usize;
                lengths.push((length, read_pointer(r, "pVal")?));
            }
            for (length, present) in lengths {
                if present {
                    let n = r.count(LIMIT, "value size")?;
                    if n != length {
                        return Err(RpcError::Malformed("a value whose length disagrees with its array".into()));
                    }
                    values.push(r.take(n, "value")?.to_vec());
                } else {
                    values.push(Vec::new());
                }
            }
        }
        out.push((attid, values));
    }
    Ok(out)
}

/// Decodes the `IDL_DRSGetNCChanges` response stub.
pub fn decode_get_nc_changes(stub: &[u8]) -> Result<ChangesReply, RpcError> {
    // The return value ends the stub, after every referent.
    let status = match stub.len().checked_sub(4).map(|at| &stub[at..]) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => return Err(RpcError::Malformed("a GetNCChanges reply without its return value".into())),
    };
    let mut r = Reader::new(stub);
    let version = r.u32("pdwOutVersion")?;
    let arm = r.u32("reply union discriminant")?;
    if version != 6 || arm != 6 {
        return Err(RpcError::Malformed(format!("a GetNCChanges reply of version {version}; this client reads version 6")));
    }
    r.align(8)?;
    let _dsa = r.uuid("uuidDsaObjSrc")?;
    let invocation_id = r.uuid("uuidInvocIdSrc")?;
    let nc = read_pointer(&mut r, "pNC")?;
    let _from = (r.u64("usnvecFrom")?, r.u64("usnvecFrom")?, r.u64("usnvecFrom")?);
    let to = UsnVector { high_obj_update: r.u64("usnvecTo")?, reserved: r.u64("usnvecTo")?, high_prop_update: r.u64("usnvecTo")? };
    let utd = read_pointer(&mut r, "pUpToDateVecSrc")?;
    let prefix_count = r.u32("PrefixCount")? as usize;
    let prefix_entries = read_pointer(&mut r, "pPrefixEntry")?;
    let _extended_ret = r.u32("ulExtendedRet")?;
    let object_count = r.u32("cNumObjects")?;
    let _bytes = r.u32("cNumBytes")?;
    let objects_present = read_pointer(&mut r, "pObjects")?;
    let more = r.u32("fMoreData")? != 0;
    let _nc_objects = r.u32("cNumNcSizeObjects")?;
    let _nc_values = r.u32("cNumNcSizeValues")?;
    let _values = r.u32("cNumValues")?;
    let _values_present = read_pointer(&mut r, "rgValues")?;
    let error = r.u32("dwDRSError")?;
    if nc {
        read_dsname(&mut r)?;
    }
    let mut cursors = Vec::new();
    if utd {
        let size = r.count(LIMIT, "cursor array size")?;
        r.align(8)?;
        let _version = r.u32("dwVersion")?;
        r.u32("dwReserved1")?;
        let count = r.u32("cNumCursors")? as usize;
        r.u32("dwReserved2")?;
        if count != size {
            return Err(RpcError::Malformed("an up-to-dateness vector whose count disagrees with its array".into()));
        }
        for _ in 0..count {
            r.align(8)?;
            let dsa = r.uuid("cursor uuidDsa")?;
            let usn = r.u64("cursor usnHighPropUpdate")?;
            let _time = r.u64("cursor timeLastSyncSuccess")?;
            cursors.push(Cursor { dsa, usn });
        }
    }
    let prefixes = if prefix_entries { read_prefixes(&mut r, prefix_count)? } else { Vec::new() };
    let objects = if objects_present { read_objects(&mut r)? } else { Vec::new() };
    if objects.len() != object_count as usize {
        return Err(RpcError::Malformed(format!("{} objects where cNumObjects says {object_count}", objects.len())));
    }
    // Linked values (rgValues) follow; this client asks for none it reads.
    Ok(ChangesReply { invocation_id, to, cursors, prefixes, objects, more, error, status })
}

/// A bound DRSUAPI session over a sealed connection.
pub struct Drs {
    connection: Connection,
    handle: [u8; 20],
    /// The server's DRS_EXTENSIONS_INT flags.
    pub server_flags: u32,
}

impl Drs {
    /// `IDL_DRSBind` on `connection`, announcing this client's capabilities.
    pub async fn bind(mut connection: Connection, client_dsa: Uuid) -> Result<Drs, RpcError> {
        let flags = ext::BASE
            | ext::ASYNCREPL
            | ext::REMOVEAPI
            | ext::MOVEREQ_V2
            | ext::RESTORE_USN_OPTIMIZATION
            | ext::INSTANCE_TYPE_NOT_REQ_ON_MOD
            | ext::STRONG_ENCRYPTION
            | ext::POST_BETA3
            | ext::GETCHGREQ_V5
            | ext::GETCHGREQ_V6
            | ext::GETCHGREQ_V8
            | ext::GETCHGREPLY_V5
            | ext::GETCHGREPLY_V6;
        let mut w = Writer::default();
        w.referent();
        w.uuid(client_dsa);
        w.referent();
        // DRS_EXTENSIONS { cb; rgb[cb] }: rgb is DRS_EXTENSIONS_INT after its cb.
        let mut rgb = Vec::with_capacity(48);
        rgb.extend_from_slice(&flags.to_le_bytes());
        rgb.extend_from_slice(&[0; 16]); // SiteObjGuid
        rgb.extend_from_slice(&0u32.to_le_bytes()); // Pid
        rgb.extend_from_slice(&0u32.to_le_bytes()); // dwReplEpoch
        rgb.extend_from_slice(&0u32.to_le_bytes()); // dwFlagsExt
        rgb.extend_from_slice(&[0; 16]); // ConfigObjGUID
        rgb.extend_from_slice(&0u32.to_le_bytes()); // dwExtCaps
        w.u32(rgb.len() as u32);
        w.u32(rgb.len() as u32);
        w.raw(&rgb);
        let answer = connection.call(OP_BIND, &w.bytes).await?;
        let mut r = Reader::new(&answer);
        let mut server_flags = 0;
        if read_pointer(&mut r, "ppextServer")? {
            let size = r.count(LIMIT, "server extensions size")?;
            let cb = r.u32("server extensions cb")? as usize;
            let rgb = r.take(size, "server extensions")?;
            if cb >= 4 && rgb.len() >= 4 {
                server_flags = u32::from_le_bytes([rgb[0], rgb[1], rgb[2], rgb[3]]);
            }
        }
        let mut handle = [0u8; 20];
        handle.copy_from_slice(r.take(20, "phDrs")?);
        let status = r.u32("DRSBind status")?;
        if status != 0 {
            return Err(RpcError::Fault(status));
        }
        if server_flags & ext::GETCHGREPLY_V6 == 0 || server_flags & ext::STRONG_ENCRYPTION == 0 {
            return Err(RpcError::Refused(format!(
                "the domain controller lacks GetNCChanges reply version 6 or strong encryption (extensions 0x{server_flags:08x})"
            )));
        }
        Ok(Drs { connection, handle, server_flags })
    }

    /// The NTLM session key the secrets are encrypted with.
    pub fn session_key(&self) -> Option<&[u8; 16]> {
        self.connection.session_key()
    }

    /// One `IDL_DRSGetNCChanges` call.
    pub async fn get_nc_changes(&mut self, request: &ChangesRequest) -> Result<ChangesReply, RpcError> {
        let answer = self.connection.call(OP_GET_NC_CHANGES, &encode_get_nc_changes(&self.handle, request)).await?;
        decode_get_nc_changes(&answer)
    }

    /// `IDL_DRSUnbind`: closes the context handle (the connection closes when dropped).
    pub async fn unbind(mut self) -> Result<(), RpcError> {
        let mut w = Writer::default();
        w.raw(&self.handle);
        self.connection.call(OP_UNBIND, &w.bytes).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_ids_map_to_their_oids() {
        let table = default_prefixes();
        // unicodePwd 1.2.840.113556.1.4.90, userPrincipalName …4.656 (two-byte last arc).
        assert_eq!(oid_of(&table, attid::UNICODE_PWD), Some(vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x14, 0x01, 0x04, 90]));
        assert_eq!(oid_of(&table, attid::USER_PRINCIPAL_NAME), Some(vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x14, 0x01, 0x04, 0x85, 0x10]));
        assert_eq!(oid_of(&table, attid::OBJECT_CLASS), Some(vec![0x55, 0x04, 0]));
        assert_eq!(oid_of(&table, 0x0042_0001), None);
    }

    #[test]
    fn a_dsname_round_trips_and_gives_the_rid() {
        let mut w = Writer::default();
        write_dsname(&mut w, "DC=corp,DC=example");
        let name = read_dsname(&mut Reader::new(&w.bytes)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(name.dn, "DC=corp,DC=example");
        assert_eq!(name.guid, None);
        let sid = DsName { sid: vec![1, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0, 1, 2, 3, 4, 0x51, 0x04, 0, 0], ..DsName::default() };
        assert_eq!(sid.rid(), Some(1105));
    }

    proptest::proptest! {
        #[test]
        fn any_reply_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_get_nc_changes(&bytes);
            let mut with_header = vec![6, 0, 0, 0, 6, 0, 0, 0];
            with_header.extend_from_slice(&bytes);
            let _ = decode_get_nc_changes(&with_header);
            let _ = read_objects(&mut Reader::new(&bytes));
        }
    }
}
