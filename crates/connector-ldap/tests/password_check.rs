//! The pass-through agent's password check without a reachable DC: every listed DC refuses the
//! connection, so the outcome is "DC unreachable" (retryable), naming each DC; an empty password
//! never reaches a DC; a URL other than LDAPS is refused when the checker is made.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::time::Duration;

fn ca_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

#[tokio::test]
async fn no_reachable_dc_is_a_retryable_outcome_naming_each_dc() {
    let dir = tempfile::tempdir().unwrap();
    let dcs = vec!["ldaps://127.0.0.1:1".to_string(), "ldaps://127.0.0.1:2".to_string()];
    let checker = connector_ldap::PasswordChecker::new(dcs, &ca_file(&dir), Duration::from_secs(2)).unwrap();
    let (outcome, detail) = checker.check("ann@corp.example.test", "Pa55word!").await;
    assert_eq!(outcome, pta::Outcome::DcUnreachable, "{detail}");
    assert!(outcome.is_retryable());
    assert!(detail.contains("127.0.0.1:1") && detail.contains("127.0.0.1:2"), "{detail}");
    assert!(!detail.contains("Pa55word!"), "never the password: {detail}");
    let (outcome, _) = checker.check("ann@corp.example.test", "").await;
    assert_eq!(outcome, pta::Outcome::BadPassword, "an empty password is never sent (it would be an anonymous bind)");
}

#[test]
fn only_ldaps_domain_controllers_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&dir);
    for dcs in [vec![], vec!["ldap://127.0.0.1".to_string()]] {
        assert!(connector_ldap::PasswordChecker::new(dcs, &ca, Duration::from_secs(1)).is_err());
    }
}
