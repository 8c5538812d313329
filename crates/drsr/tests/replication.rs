//! Against a real Samba AD DC, with a least-privileged replication account: the NT hashes the
//! DRSR client reads equal MD4(UTF-16LE(password)); a second pass from the watermark gets only
//! the changed password; an account without the replication rights is refused with a message
//! naming the missing right.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use drsr::hashes::{self, HashSyncError};
use drsr::ntlm::Credentials;
use md4::Digest as _;
use testkit::samba::{AdUser, SambaDc};

fn nt_hash(password: &str) -> [u8; 16] {
    let utf16: Vec<u8> = password.encode_utf16().flat_map(u16::to_le_bytes).collect();
    md4::Md4::digest(&utf16).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_account_reads_nt_hashes_and_then_only_changes() {
    let Some(dc) = testkit::available(SambaDc::start_default()) else { return };
    let suffix = "corp.example.test";
    let mut admin = dc.admin().await.unwrap();
    let seeded = [("alice", "Al1ce!Secret"), ("bob", "B0b#Passw0rd-2"), ("carol", "Car0l$ünïcode")];
    let mut dns = Vec::new();
    for (sam, password) in seeded {
        dns.push(admin.create_user(&AdUser::with_password(sam, suffix, password)).await.unwrap());
    }
    let sync_dn = admin.create_user(&AdUser::with_password("isthmus-sync", suffix, "Sync!Acc0unt-1")).await.unwrap();
    let config = dc.config().clone();
    let host = std::net::IpAddr::V4(dc.ip());
    let credentials = Credentials::with_password("isthmus-sync", &config.domain, "Sync!Acc0unt-1");
    let naming_context = dc.base_dn();

    // No rights yet, then only "Replicating Directory Changes": refused, naming both rights.
    for grant in [None, Some("get-changes")] {
        if let Some(right) = grant {
            dc.grant_on_domain_root(&sync_dn, right).unwrap();
        }
        let err = hashes::read_hashes(host, &credentials, &naming_context, None, &mut |_| {}).await.expect_err("refused");
        assert!(matches!(err, HashSyncError::AccessDenied { .. }), "{err}");
        assert!(err.to_string().contains("Replicating Directory Changes All (DS-Replication-Get-Changes-All"), "{err}");
    }

    dc.grant_on_domain_root(&sync_dn, "get-changes-all").unwrap();
    let mut pages = Vec::new();
    let full = hashes::read_hashes(host, &credentials, &naming_context, None, &mut |count| pages.push(count)).await.expect("full pass");
    assert!(full.objects > 100 && pages.last() == Some(&full.objects), "{} objects, pages {pages:?}", full.objects);
    for ((sam, password), dn) in seeded.iter().zip(&dns) {
        let account = full.accounts.iter().find(|account| account.dn.eq_ignore_ascii_case(dn)).unwrap_or_else(|| panic!("{sam} read"));
        assert_eq!(*account.nt_hash, nt_hash(password), "{sam}: NT hash = MD4(UTF-16LE(password))");
        assert_eq!(account.user_account_control.map(|uac| uac & 2), Some(0), "{sam} enabled");
    }
    let wrong = Credentials::with_password("isthmus-sync", &config.domain, "not the password");
    let err = hashes::read_hashes(host, &wrong, &naming_context, None, &mut |_| {}).await.expect_err("wrong password");
    assert!(matches!(err, HashSyncError::Logon), "{err}");

    // Nothing changed: an incremental pass reads no password.
    let quiet = hashes::read_hashes(host, &credentials, &naming_context, Some(&full.watermark), &mut |_| {}).await.expect("quiet");
    assert!(quiet.accounts.is_empty(), "{:?}", quiet.accounts);
    // One password changes: only that account comes.
    admin.set_password(&dns[1], "B0b#Changed-3").await.unwrap();
    let delta = hashes::read_hashes(host, &credentials, &naming_context, Some(&quiet.watermark), &mut |_| {}).await.expect("delta");
    let changed: Vec<&str> = delta.accounts.iter().map(|account| account.dn.as_str()).collect();
    assert_eq!(changed, vec![dns[1].as_str()]);
    assert_eq!(*delta.accounts[0].nt_hash, nt_hash("B0b#Changed-3"));
    // The watermark survives its text form.
    let reread = hashes::Watermark::from_text(&delta.watermark.to_text()).unwrap();
    let again = hashes::read_hashes(host, &credentials, &naming_context, Some(&reread), &mut |_| {}).await.expect("again");
    assert!(again.accounts.is_empty());
}
