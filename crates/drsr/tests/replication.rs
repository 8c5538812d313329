//! Against a real Samba AD DC: NTLM with packet privacy, DRSBind, GetNCChanges with secrets.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use drsr::drsuapi::{self, ChangesRequest, Drs, UsnVector, attid, options};
use drsr::ndr::Uuid;
use testkit::samba::{AdUser, SambaDc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explore() {
    let Some(dc) = testkit::available(SambaDc::start_default()) else { return };
    let mut admin = dc.admin().await.unwrap();
    admin.create_user(&AdUser::with_password("alice", "corp.example.test", "Al1ce!Secret")).await.unwrap();
    let host = std::net::IpAddr::V4(dc.ip());
    let endpoint = drsr::epm::map(host, drsr::DRSUAPI).await.expect("ept_map");
    let config = dc.config();
    let credentials = drsr::ntlm::Credentials::with_password("Administrator", &config.domain, &config.admin_password);
    let connection = drsr::rpc::Connection::bind_ntlm(endpoint, drsr::DRSUAPI, &credentials).await.expect("ntlm bind");
    let mut drs = Drs::bind(connection, Uuid::parse("6b1c4f0e-2a57-4a8e-9d3f-1c5e7a9b0d21")).await.expect("DRSBind");
    eprintln!("server flags {:08x}", drs.server_flags);
    let mut request = ChangesRequest {
        client_dsa: Uuid::parse("6b1c4f0e-2a57-4a8e-9d3f-1c5e7a9b0d21"),
        invocation_id: Uuid(0, 0, 0, [0; 8]),
        naming_context: dc.base_dn(),
        from: UsnVector::default(),
        up_to_date: vec![],
        flags: options::WRIT_REP | options::INIT_SYNC | options::PER_SYNC | options::NEVER_SYNCED,
        max_objects: 1000,
        max_bytes: 10_000_000,
        attributes: vec![
            attid::OBJECT_CLASS,
            attid::UNICODE_PWD,
            attid::SAM_ACCOUNT_NAME,
            attid::USER_ACCOUNT_CONTROL,
            attid::PWD_LAST_SET,
            attid::USER_PRINCIPAL_NAME,
            attid::OBJECT_SID,
        ],
    };
    loop {
        let reply = drs.get_nc_changes(&request).await.expect("changes");
        eprintln!("prefixes {:?}", reply.prefixes.iter().rev().take(2).collect::<Vec<_>>());
        eprintln!(
            "objects {} more {} error {} to {:?} cursors {:?}",
            reply.objects.len(),
            reply.more,
            reply.error,
            reply.to,
            reply.cursors
        );
        for object in &reply.objects {
            let pwd = object
                .attributes
                .iter()
                .find(|(id, _)| drsuapi::oid_of(&reply.prefixes, *id) == drsuapi::oid_of(&drsuapi::default_prefixes(), attid::UNICODE_PWD));
            if let Some((_, values)) = pwd.filter(|(_, v)| !v.is_empty()) {
                let key = drs.session_key().unwrap();
                let hash = drsr::secrets::nt_hash(key, object.name.rid().unwrap(), &values[0]);
                eprintln!(
                    "{} rid {:?} hash {:?}",
                    object.name.dn,
                    object.name.rid(),
                    hash.map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>())
                );
            }
        }
        if !reply.more {
            break;
        }
        request.invocation_id = reply.invocation_id;
        request.from = reply.to;
    }
    drs.unbind().await.expect("unbind");
}
