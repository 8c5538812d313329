//! The AD connector against a real Samba AD DC: typed full imports, DirSync deltas of every kind
//! of change, OU filtering, range retrieval of a 5,000-member group, consistency-guid writeback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{anchor_of, connector_space, upsert_of};
use connector_api::ExportRequest;
use connector_api::testkit::{delta_import, full_import};
use model::{AttrChange, AttrValue, ImportChange, PendingExport};
use testkit::samba::{AdUser, SambaDc};

fn user(sam: &str, ou: &str) -> AdUser {
    AdUser {
        parent_dn: Some(ou.to_string()),
        employee_id: Some(format!("E-{sam}")),
        ..AdUser::with_password(sam, "corp.example.test", "Str0ng!Pass.1")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_import_is_typed_and_deltas_see_every_kind_of_change() {
    let Some(dc) = testkit::available(SambaDc::start_default()) else { return };
    let mut admin = dc.admin().await.unwrap();
    let ou = common::fresh_ou(&mut admin, "People", None).await;
    let ann = admin.create_user(&user("ann", &ou)).await.unwrap();
    let bob = admin.create_user(&user("bob", &ou)).await.unwrap();
    let inner = admin.create_group("inner", Some(&ou), &[&bob]).await.unwrap();
    let outer = admin.create_group("outer", Some(&ou), &[&ann, &inner]).await.unwrap();
    let contact = admin.create_contact("Carla Contact", Some(&ou), "carla@partner.example").await.unwrap();
    let sub = admin.create_ou("Moved", Some(&ou)).await.unwrap();

    let mut config = common::config(&dc);
    config.include_ous = vec![ou.clone()];
    let connector = connector_ldap::open(config).await.unwrap();
    assert_eq!(connector.info.parameters.get("Domain.FQDN").map(ToString::to_string).as_deref(), Some("corp.example.test"));
    assert_eq!(connector.info.parameters.get("Domain.Netbios").map(ToString::to_string).as_deref(), Some("CORP"));

    let (full, watermark) = full_import(&connector).await;
    assert_eq!(full.len(), 5, "2 users, 2 groups, 1 contact; no OUs: {full:#?}");
    let Some(ImportChange::Upsert { anchor, object_type, attributes, .. }) = upsert_of(&full, &ann) else { panic!("ann") };
    assert_eq!(object_type, "user");
    assert_eq!(anchor.0.len(), 16, "objectGUID is the anchor, 16 bytes");
    assert_eq!(attributes.get("objectGUID"), &[AttrValue::Binary(anchor.0.clone())]);
    assert!(matches!(attributes.get("objectSid"), [AttrValue::Binary(sid)] if sid.len() == 28), "objectSid kept binary");
    assert_eq!(attributes.get("userAccountControl"), &[AttrValue::Integer(512)], "integers typed by the AD schema");
    assert_eq!(attributes.get("employeeID"), &[AttrValue::string("E-ann")]);
    let Some(ImportChange::Upsert { object_type, attributes, .. }) = upsert_of(&full, &outer) else { panic!("outer") };
    assert_eq!(object_type, "group");
    let mut members: Vec<String> = attributes.get("member").iter().map(ToString::to_string).collect();
    members.sort();
    assert_eq!(members, [ann.clone(), inner.clone()], "nested group membership as references");
    assert!(matches!(attributes.get("member")[0], AttrValue::Reference(_)));
    let Some(ImportChange::Upsert { object_type, .. }) = upsert_of(&full, &contact) else { panic!("contact") };
    assert_eq!(object_type, "contact");

    // Nothing changed: a delta reports nothing.
    let (quiet, watermark) = delta_import(&connector, &watermark).await;
    assert!(quiet.is_empty(), "{quiet:#?}");

    // One of every change.
    let cleo = admin.create_user(&user("cleo", &ou)).await.unwrap();
    admin.conn().replace(&ann, "description", &["changed"]).await.unwrap();
    admin.conn().rename(&bob, "CN=bobby", Some(&sub)).await.unwrap();
    let bobby = format!("CN=bobby,{sub}");
    admin.add_members(&outer, &[&cleo]).await.unwrap();
    admin.remove_members(&outer, &[&ann]).await.unwrap();
    admin.conn().delete(&contact).await.unwrap();
    let (delta, watermark) = delta_import(&connector, &watermark).await;

    let added = upsert_of(&delta, &cleo).expect("the add is a full-state upsert");
    assert!(
        matches!(added, ImportChange::Upsert { object_type, attributes, .. } if object_type == "user" && attributes.get("employeeID") == [AttrValue::string("E-cleo")])
    );
    let ann_anchor = anchor_of(&full, &ann);
    assert!(
        delta.iter().any(|change| matches!(change, ImportChange::Modify { anchor, changes, .. }
            if *anchor == ann_anchor && changes.contains(&AttrChange::Replace("description".into(), vec![AttrValue::string("changed")])))),
        "the modify is an attribute change: {delta:#?}"
    );
    let moved = upsert_of(&delta, &bobby).expect("the rename/move is seen with the new DN");
    assert!(matches!(moved, ImportChange::Upsert { anchor, .. } if *anchor == anchor_of(&full, &bob)));
    let outer_anchor = anchor_of(&full, &outer);
    let member_change = delta
        .iter()
        .find_map(|change| match change {
            ImportChange::Modify { anchor, changes, .. } if *anchor == outer_anchor => Some(changes.clone()),
            _ => None,
        })
        .expect("membership changes arrive as value deltas");
    assert!(member_change.contains(&AttrChange::Add("member".into(), vec![AttrValue::Reference(cleo.clone())])), "{member_change:?}");
    assert!(member_change.contains(&AttrChange::Delete("member".into(), vec![AttrValue::Reference(ann.clone())])), "{member_change:?}");
    let contact_anchor = anchor_of(&full, &contact);
    assert!(delta.iter().any(|change| matches!(change, ImportChange::Delete { anchor } if *anchor == contact_anchor)), "the delete");

    // Renaming an OU changes the DNs of everything under it, without DirSync reporting them.
    admin.conn().rename(&sub, "OU=Renamed", None).await.unwrap();
    let (after_ou_rename, _) = delta_import(&connector, &watermark).await;
    let bobby_now = format!("CN=bobby,OU=Renamed,{ou}");
    assert!(
        upsert_of(&after_ou_rename, &bobby_now).is_some(),
        "objects under a renamed OU arrive with their new DNs: {after_ou_rename:#?}"
    );

    // Full import + deltas leave the connector space exactly as a new full import does
    // (including the nested group's reference to the user who moved twice).
    let (fresh, _) = full_import(&connector).await;
    assert_eq!(
        connector_space(&[(&full, true), (&delta, false), (&after_ou_rename, false)]).await,
        connector_space(&[(&fresh, true)]).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ou_filter_moves_bring_objects_in_and_out_of_scope() {
    let Some(dc) = testkit::available(SambaDc::start_default()) else { return };
    let mut admin = dc.admin().await.unwrap();
    let root = common::fresh_ou(&mut admin, "Filter", None).await;
    let inside = admin.create_ou("Synced", Some(&root)).await.unwrap();
    let excluded = admin.create_ou("Service", Some(&inside)).await.unwrap();
    let outside = admin.create_ou("Unsynced", Some(&root)).await.unwrap();
    let dana = admin.create_user(&user("dana", &inside)).await.unwrap();
    let svc = admin.create_user(&user("svc", &excluded)).await.unwrap();
    let erik = admin.create_user(&user("erik", &outside)).await.unwrap();

    let mut config = common::config(&dc);
    config.include_ous = vec![inside.clone()];
    config.exclude_ous = vec![excluded.clone()];
    let connector = connector_ldap::open(config).await.unwrap();
    let (full, watermark) = full_import(&connector).await;
    assert!(upsert_of(&full, &dana).is_some());
    assert!(upsert_of(&full, &svc).is_none(), "an excluded OU inside an included one is out of scope");
    assert!(upsert_of(&full, &erik).is_none(), "outside the included OU");

    admin.conn().rename(&erik, "CN=erik", Some(&inside)).await.unwrap();
    admin.conn().rename(&dana, "CN=dana", Some(&outside)).await.unwrap();
    admin.conn().replace(&svc, "description", &["not for us"]).await.unwrap();
    let (delta, _) = delta_import(&connector, &watermark).await;
    let erik_now = format!("CN=erik,{inside}");
    assert!(upsert_of(&delta, &erik_now).is_some(), "moved into scope: the whole object arrives: {delta:#?}");
    let dana_anchor = anchor_of(&full, &dana);
    assert!(delta.iter().any(|change| matches!(change, ImportChange::Delete { anchor } if *anchor == dana_anchor)), "moved out: a delete");
    assert_eq!(delta.len(), 2, "changes out of scope are not reported: {delta:#?}");

    // Moving a whole OU: its objects follow it into (or out of) scope.
    let team = admin.create_ou("Team", Some(&outside)).await.unwrap();
    let gus = admin.create_user(&user("gus", &team)).await.unwrap();
    let (before, watermark) = full_import(&connector).await;
    assert!(upsert_of(&before, &gus).is_none(), "out of scope before the move");
    admin.conn().rename(&team, "OU=Team", Some(&inside)).await.unwrap();
    let (moved_in, watermark) = delta_import(&connector, &watermark).await;
    let gus_now = format!("CN=gus,OU=Team,{inside}");
    let gus_anchor = anchor_of(&moved_in, &gus_now);
    admin.conn().rename(&format!("OU=Team,{inside}"), "OU=Team", Some(&outside)).await.unwrap();
    let (moved_out, _) = delta_import(&connector, &watermark).await;
    assert!(
        moved_out.iter().any(|change| matches!(change, ImportChange::Delete { anchor } if *anchor == gus_anchor)),
        "an OU moved out of scope takes its objects out: {moved_out:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_guid_writeback_is_read_back() {
    let Some(dc) = testkit::available(SambaDc::start_default()) else { return };
    let mut admin = dc.admin().await.unwrap();
    let ou = common::fresh_ou(&mut admin, "Anchor", None).await;
    let fay = admin.create_user(&user("fay", &ou)).await.unwrap();
    let mut config = common::config(&dc);
    config.include_ous = vec![ou.clone()];
    let connector = connector_ldap::open(config).await.unwrap();
    let (full, watermark) = full_import(&connector).await;
    let anchor = anchor_of(&full, &fay);

    // The sourceAnchor (objectGUID bytes) written back as mS-DS-ConsistencyGuid, exactly.
    let export = connector.export.as_ref().expect("AD exports");
    let request = ExportRequest {
        dn: fay.clone(),
        object_type: "user".into(),
        anchor: Some(anchor.clone()),
        change: PendingExport::Update(vec![AttrChange::Replace("mS-DS-ConsistencyGuid".into(), vec![AttrValue::Binary(anchor.0.clone())])]),
    };
    export.export(&request).await.unwrap();
    let (delta, _) = delta_import(&connector, &watermark).await;
    assert!(
        delta.iter().any(|change| matches!(change, ImportChange::Modify { changes, .. }
            if changes.contains(&AttrChange::Replace("mS-DS-ConsistencyGuid".into(), vec![AttrValue::Binary(anchor.0.clone())])))),
        "the delta import reads the written value back: {delta:#?}"
    );
    let (again, _) = full_import(&connector).await;
    let Some(ImportChange::Upsert { attributes, .. }) = upsert_of(&again, &fay) else { panic!("fay") };
    assert_eq!(attributes.get("mS-DS-ConsistencyGuid"), &[AttrValue::Binary(anchor.0.clone())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5000_member_group_is_read_whole_through_range_retrieval() {
    let Some(dc) = testkit::available(SambaDc::start_default()) else { return };
    let mut admin = dc.admin().await.unwrap();
    let ou = common::fresh_ou(&mut admin, "Big", None).await;
    let mut members = Vec::new();
    for index in 0..5000 {
        let dn = format!("CN=m{index:04},{ou}");
        admin.conn().add(&dn, vec![testkit::ldap::attr("objectClass", &["contact"])]).await.unwrap();
        members.push(dn);
    }
    let group = admin.create_group("everyone", Some(&ou), &[]).await.unwrap();
    for chunk in members.chunks(1000) {
        admin.add_members(&group, &chunk.iter().map(String::as_str).collect::<Vec<_>>()).await.unwrap();
    }
    // Samba does not impose MaxValRange as Windows AD does, but answers ranged reads the same
    // way: the connector asks for ranges of 1,000 and must stitch five answers together.
    let first = admin.conn().search(&group, ldap3::Scope::Base, "(objectClass=*)", &["member;range=0-999"]).await.unwrap();
    assert_eq!(first[0].attrs.get("member;range=0-999").map(Vec::len), Some(1000), "{:?}", first[0].attrs.keys().collect::<Vec<_>>());

    let mut config = common::config(&dc);
    config.include_ous = vec![ou.clone()];
    config.object_types = vec!["group".into()];
    config.attributes = vec!["cn".into(), "member".into()];
    config.range_size = Some(1000);
    let connector = connector_ldap::open(config).await.unwrap();
    let (full, _) = full_import(&connector).await;
    let Some(ImportChange::Upsert { attributes, .. }) = upsert_of(&full, &group) else { panic!("group") };
    let mut read: Vec<String> = attributes.get("member").iter().map(ToString::to_string).collect();
    read.sort_by_key(|dn| dn.to_lowercase());
    assert_eq!(read.len(), 5000);
    assert_eq!(read, members, "every member, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pilot_group_filtering_follows_direct_membership() {
    let Some(dc) = testkit::available(SambaDc::start_default()) else { return };
    let mut admin = dc.admin().await.unwrap();
    let ou = common::fresh_ou(&mut admin, "Pilot", None).await;
    let elsewhere = common::fresh_ou(&mut admin, "Groups", None).await;
    let ann = admin.create_user(&user("pann", &ou)).await.unwrap();
    let bob = admin.create_user(&user("pbob", &ou)).await.unwrap();
    let cid = admin.create_user(&user("pcid", &ou)).await.unwrap();
    let nested = admin.create_group("pnested", Some(&ou), &[&cid]).await.unwrap();
    let pilot = admin.create_group("pilot", Some(&elsewhere), &[&ann, &nested]).await.unwrap();

    let mut config = common::config(&dc);
    config.include_ous = vec![ou.clone()];
    config.pilot_group = Some("CN=nope,".to_string() + &elsewhere);
    let wrong = connector_ldap::open(config.clone()).await.unwrap();
    let err = wrong.import.full_page(None).await.expect_err("a pilot group that does not exist");
    assert!(err.to_string().contains("pilot_group"), "{err}");

    config.pilot_group = Some(pilot.clone());
    let connector = connector_ldap::open(config).await.unwrap();
    let (full, watermark) = full_import(&connector).await;
    let found: Vec<String> = full
        .iter()
        .filter_map(|change| match change {
            ImportChange::Upsert { dn, .. } => Some(dn.to_lowercase()),
            _ => None,
        })
        .collect();
    let mut found = found;
    found.sort();
    let mut expected = vec![ann.to_lowercase(), nested.to_lowercase()];
    expected.sort();
    assert_eq!(found, expected, "direct members only: not cid (nested), not the pilot group");

    // Membership changes move objects in and out; other objects' changes stay out.
    admin.add_members(&pilot, &[&bob]).await.unwrap();
    admin.remove_members(&pilot, &[&ann]).await.unwrap();
    admin.conn().replace(&cid, "description", &["not in the pilot"]).await.unwrap();
    let (delta, watermark) = delta_import(&connector, &watermark).await;
    assert!(upsert_of(&delta, &bob).is_some(), "bob joined the pilot: {delta:#?}");
    let ann_anchor = anchor_of(&full, &ann);
    assert!(delta.iter().any(|change| matches!(change, ImportChange::Delete { anchor } if *anchor == ann_anchor)), "ann left: {delta:#?}");
    assert!(
        !delta.iter().any(
            |change| matches!(change, ImportChange::Upsert { dn, .. } | ImportChange::Modify { dn, .. } if dn.eq_ignore_ascii_case(&cid))
        ),
        "cid is still out"
    );
    admin.conn().replace(&bob, "description", &["piloting"]).await.unwrap();
    let (later, _) = delta_import(&connector, &watermark).await;
    assert!(
        later.iter().any(|change| matches!(change, ImportChange::Modify { dn, .. } if dn.eq_ignore_ascii_case(&bob))),
        "a member's own change comes through: {later:#?}"
    );
    let (fresh, _) = full_import(&connector).await;
    assert_eq!(
        connector_space(&[(&full, true), (&delta, false), (&later, false)]).await,
        connector_space(&[(&fresh, true)]).await,
        "full import + deltas = a fresh full import"
    );
}

/// Samba cannot host a second domain of a forest (a child domain), so two naming contexts of
/// one DC stand in for it: the domain and the configuration partition, each with its own
/// DirSync cookies in the watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connector_reads_several_naming_contexts() {
    let Some(dc) = testkit::available(SambaDc::start_default()) else { return };
    let mut admin = dc.admin().await.unwrap();
    let ou = common::fresh_ou(&mut admin, "Domain", None).await;
    let configuration = format!("CN=Configuration,{}", dc.base_dn());
    let services = format!("CN=Services,{configuration}");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dina = admin.create_user(&user("dina", &ou)).await.unwrap();
    let contact = admin.create_contact(&format!("Partner {stamp}"), Some(&services), "partner@example.test").await.unwrap();

    let mut config = common::config(&dc);
    config.naming_contexts = vec![dc.base_dn(), configuration.clone()];
    config.include_ous = vec![ou.clone(), services.clone()];
    let connector = connector_ldap::open(config).await.unwrap();
    let (full, watermark) = full_import(&connector).await;
    assert!(upsert_of(&full, &dina).is_some() && upsert_of(&full, &contact).is_some(), "both partitions are read: {full:#?}");
    assert_eq!(full.len(), 2);
    let streams = String::from_utf8_lossy(&watermark).matches("DC=corp").count();
    assert!(streams >= 4, "two DirSync streams per naming context: {}", String::from_utf8_lossy(&watermark));

    admin.conn().replace(&contact, "mail", &["partner.new@example.test"]).await.unwrap();
    let eli = admin.create_user(&user("eli", &ou)).await.unwrap();
    let (delta, watermark) = delta_import(&connector, &watermark).await;
    assert!(upsert_of(&delta, &eli).is_some(), "a new user in the domain: {delta:#?}");
    assert!(
        delta.iter().any(|change| matches!(change, ImportChange::Modify { dn, changes, .. } if dn.eq_ignore_ascii_case(&contact)
            && changes.contains(&AttrChange::Replace("mail".into(), vec![AttrValue::string("partner.new@example.test")])))),
        "a changed contact in the configuration partition: {delta:#?}"
    );
    admin.conn().delete(&contact).await.unwrap();
    let (gone, _) = delta_import(&connector, &watermark).await;
    let anchor = anchor_of(&full, &contact);
    assert!(gone.iter().any(|change| matches!(change, ImportChange::Delete { anchor: found } if *found == anchor)), "{gone:#?}");
}
