//! Smoke tests of the Samba AD DC kit: it really starts, answers LDAPS with a certificate we
//! verify, takes seeded objects and reports AD's own bind errors for each account state.

use ldap3::Scope;
use testkit::available;
use testkit::samba::{AdUser, SambaConfig, SambaDc};

const PASSWORD: &str = "Us3r!Passw0rd";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_user_binds_over_ldaps_and_wrong_password_is_52e() {
    let Some(dc) = available(SambaDc::start_default()) else {
        return;
    };
    println!("samba DC pid {:?} on {} ready after {:?}", dc.pid(), dc.ip(), dc.ready_after);
    let mut admin = dc.admin().await.unwrap();
    let ou = admin.create_ou("Smoke", None).await.unwrap();
    let user = AdUser { parent_dn: Some(ou.clone()), ..AdUser::with_password("alice", "corp.example.test", PASSWORD) };
    let dn = admin.create_user(&user).await.unwrap();
    assert_eq!(dn, format!("CN=alice,{ou}"));

    let mut conn = dc.connect_ldaps().await.unwrap();
    conn.bind("alice@corp.example.test", PASSWORD).await.unwrap();
    let found = conn.search(&dc.base_dn(), Scope::Subtree, "(sAMAccountName=alice)", &["objectGUID", "userPrincipalName"]).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].attrs["userPrincipalName"], vec!["alice@corp.example.test"]);
    assert_eq!(found[0].bin_attrs["objectGUID"][0].len(), 16);

    let mut conn = dc.connect_ldaps().await.unwrap();
    let err = conn.bind(&dn, "wrong-Passw0rd!").await.unwrap_err().to_string();
    assert!(err.contains("data 52e"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_states_give_ad_bind_codes() {
    let Some(dc) = available(SambaDc::start_default()) else {
        return;
    };
    let mut admin = dc.admin().await.unwrap();
    let mut users = Vec::new();
    for name in ["disabled", "expired", "mustchange", "locked", "reenabled"] {
        users.push(admin.create_user(&AdUser::with_password(name, "corp.example.test", PASSWORD)).await.unwrap());
    }
    admin.disable(&users[0]).await.unwrap();
    admin.expire(&users[1]).await.unwrap();
    admin.require_password_change(&users[2]).await.unwrap();
    admin.lock_out(&users[3], &dc.ldaps_url(), dc.ca_pem()).await.unwrap();
    admin.disable(&users[4]).await.unwrap();
    admin.enable(&users[4]).await.unwrap();

    let mut codes = Vec::new();
    for dn in &users {
        let mut conn = dc.connect_ldaps().await.unwrap();
        codes.push(match conn.bind(dn, PASSWORD).await {
            Ok(()) => "ok".to_string(),
            Err(err) => {
                let text = err.to_string();
                text.split("data ").nth(1).map(|rest| rest[..3].to_string()).unwrap_or(text)
            }
        });
    }
    assert_eq!(codes, ["533", "701", "773", "775", "ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_nest_and_contacts_are_created() {
    let Some(dc) = available(SambaDc::start_default()) else {
        return;
    };
    let mut admin = dc.admin().await.unwrap();
    let bob = admin.create_user(&AdUser::with_password("bob", "corp.example.test", PASSWORD)).await.unwrap();
    let carol = admin.create_user(&AdUser::with_password("carol", "corp.example.test", PASSWORD)).await.unwrap();
    let inner = admin.create_group("Inner", None, &[&bob]).await.unwrap();
    let outer = admin.create_group("Outer", None, &[&inner]).await.unwrap();
    admin.add_members(&outer, &[&carol]).await.unwrap();
    admin.remove_members(&inner, &[&bob]).await.unwrap();
    let contact = admin.create_contact("Partner Person", None, "partner@partner.example").await.unwrap();

    let conn = admin.conn();
    let entries = conn.search(&outer, Scope::Base, "(objectClass=group)", &["member"]).await.unwrap();
    let mut members = entries[0].attrs["member"].clone();
    members.sort();
    let mut expected = vec![carol.clone(), inner.clone()];
    expected.sort();
    assert_eq!(members, expected);
    let inner_entry = conn.search(&inner, Scope::Base, "(objectClass=*)", &["member"]).await.unwrap();
    assert!(!inner_entry[0].attrs.contains_key("member"));
    // AD's transitive-membership matching rule sees carol through Outer and nobody through Inner.
    let nested =
        conn.search(&dc.base_dn(), Scope::Subtree, &format!("(memberOf:1.2.840.113556.1.4.1941:={outer})"), &["cn"]).await.unwrap();
    let mut names: Vec<_> = nested.iter().map(|entry| entry.attrs["cn"][0].clone()).collect();
    names.sort();
    assert_eq!(names, ["Inner", "carol"]);
    let contact_entry = conn.search(&contact, Scope::Base, "(objectClass=contact)", &["mail"]).await.unwrap();
    assert_eq!(contact_entry[0].attrs["mail"], vec!["partner@partner.example"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_forests_run_side_by_side() {
    let corp = SambaConfig::default();
    let fabrikam = SambaConfig::forest("FABRIKAM.EXAMPLE.TEST", "FABRIKAM");
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| SambaDc::start(&corp));
        let second = scope.spawn(|| SambaDc::start(&fabrikam));
        (first.join().unwrap(), second.join().unwrap())
    });
    let Some(first) = available(first) else {
        return;
    };
    let Some(second) = available(second) else {
        return;
    };
    assert_ne!(first.ip(), second.ip());

    let mut sids = Vec::new();
    for dc in [&first, &second] {
        let mut admin = dc.admin().await.unwrap();
        let domain = admin.conn().search(&dc.base_dn(), Scope::Base, "(objectClass=domain)", &["objectSid"]).await.unwrap();
        assert_eq!(domain.len(), 1, "{} serves its own naming context", dc.base_dn());
        sids.push(domain[0].bin_attrs["objectSid"][0].clone());
        admin.create_user(&AdUser::with_password("shared", "example.test", PASSWORD)).await.unwrap();
    }
    assert_ne!(sids[0], sids[1], "two forests have two domain SIDs");
    assert_eq!(second.base_dn(), "DC=fabrikam,DC=example,DC=test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_dc_stops_its_process_and_frees_its_address() {
    let Some(dc) = available(SambaDc::start_default()) else {
        return;
    };
    if dc.is_attached() {
        return; // an attached DC is not ours to stop
    }
    let pid = dc.pid().expect("owned DC has a pid");
    let ip = dc.ip();
    let dir = dc.dir().to_path_buf();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(dc);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "samba {pid} still runs");
    assert!(std::net::TcpStream::connect((ip, 389)).is_err(), "{ip}:389 still answers");
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_directory_bulk_loads_into_a_template() {
    use testkit::directory::{GenConfig, generate, write_ad_ldif};
    use testkit::samba::SambaTemplate;

    let config = SambaConfig::default();
    let Some(shared) = available(SambaTemplate::shared(&config)) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let template = shared.copy_to(&scratch.path().join("template")).unwrap();
    let directory = generate(&GenConfig { users: 200, groups: 12, contacts: 7, ..GenConfig::default() });
    let ldif = scratch.path().join("ad.ldif");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&ldif).unwrap());
    write_ad_ldif(&directory, &config.base_dn(), &mut out).unwrap();
    drop(out);
    template.load_ldif(&ldif).unwrap();

    let dc = SambaDc::start_from(&template).unwrap();
    let mut admin = dc.admin().await.unwrap();
    let people_ou = format!("OU=Isthmus People,{}", dc.base_dn());
    let users = admin.conn().search(&people_ou, Scope::Subtree, "(objectClass=user)", &["objectGUID"]).await.unwrap();
    assert_eq!(users.len(), 200);
    assert!(users.iter().all(|user| user.bin_attrs["objectGUID"][0].len() == 16), "AD assigned every objectGUID");
    let all_staff = format!("CN=All Staff,OU=Isthmus Groups,{}", dc.base_dn());
    let group = admin.conn().search(&all_staff, Scope::Base, "(objectClass=group)", &["member"]).await.unwrap();
    assert_eq!(group[0].attrs["member"].len(), 200);
    let contacts = admin.conn().search(&dc.base_dn(), Scope::Subtree, "(objectClass=contact)", &["cn"]).await.unwrap();
    assert_eq!(contacts.len(), 7);
}
