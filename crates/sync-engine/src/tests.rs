//! Engine decision tables: join, projection, precedence, merge, lineage, flow errors, scope and
//! lifetime, provisioning and export changes, with small rule files and with the default rules.

use std::collections::BTreeMap;

use model::{AttrChange, AttrValue, Attributes, ConnectorId, CsId, CsObject, MvAttribute, MvId, MvObject, PendingExport};
use sync_expr::Value;
use sync_rules::{RuleSet, defaults};

use crate::inbound::{self, Candidate, InboundInput, JoinDecision, JoinPlan};
use crate::outbound::{self, OutboundDecision, OutboundInput};

fn s(text: &str) -> AttrValue {
    AttrValue::string(text)
}

fn cs(id: i64, connector: &str, object_type: &str, dn: &str, attributes: Attributes) -> CsObject {
    CsObject {
        id: CsId(id),
        connector: ConnectorId(connector.into()),
        anchor: Some(model::Anchor(vec![id as u8])),
        dn: dn.into(),
        object_type: object_type.into(),
        attributes,
        link: None,
        pending_import: None,
        pending_export: None,
        error: None,
    }
}

fn no_member(_: &CsObject, _: &str) -> bool {
    false
}

fn now() -> sync_expr::time::DateTime {
    sync_expr::time::parse("2026-11-25T10:00:00Z").expect("fixed date")
}

const TWO_SOURCES: &str = r#"
[[rule]]
name = "HR join"
direction = "inbound"
connector = "hr"
source_type = "worker"
target_type = "person"
link_type = "provision"
precedence = 50
join = [[{ source = "employeeNumber", target = "employeeID" }]]
[[rule.flow]]
target = "employeeID"
direct = "employeeNumber"
[[rule.flow]]
target = "department"
expression = 'IIF(IsPresent([dept]), UCase([dept]), NULL)'
[[rule.flow]]
target = "proxyAddresses"
merge = "merge-case-insensitive"
direct = "aliases"
[[rule.flow]]
target = "title"
expression = 'IIF([status] = "leaver", AuthoritativeNull, [jobTitle])'
[[rule.flow]]
target = "hireDate"
apply_once = true
direct = "start"

[[rule]]
name = "AD join"
direction = "inbound"
connector = "ad"
source_type = "user"
target_type = "person"
link_type = "join"
precedence = 100
join = [[{ source = "employeeID", target = "employeeID" }], [{ source = "mail", target = "mail" }]]
[[rule.flow]]
target = "department"
direct = "department"
[[rule.flow]]
target = "proxyAddresses"
merge = "merge-case-insensitive"
direct = "proxyAddresses"
[[rule.flow]]
target = "title"
direct = "title"
[[rule.flow]]
target = "manager"
direct = "manager"
[[rule.flow]]
target = "mail"
expression = 'Left([mail], CNum([mailLength]))'
[[rule.flow]]
target = "hireDate"
apply_once = true
direct = "whenCreated"
"#;

fn plan(rules: &RuleSet, object: &CsObject) -> JoinPlan {
    inbound::plan_join(rules, object, &no_member)
}

#[test]
fn join_decision_table() {
    let rules = RuleSet::parse(TWO_SOURCES).unwrap();
    let ad_user = cs(1, "ad", "user", "CN=ann", Attributes::new().with("employeeID", s("7")).with("mail", s("ann@x")));
    let the_plan = plan(&rules, &ad_user);
    let JoinPlan::Lookup { groups, .. } = &the_plan else { panic!("{the_plan:?}") };
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].as_ref().unwrap().clauses[0], ("employeeID".to_string(), vec![s("7")], false));

    let one = |id: i64| Candidate { mv: MvId(id), taken_by_same_connector: false };
    let cases: Vec<(&str, Vec<Vec<Candidate>>, &str)> = vec![
        ("first group finds one", vec![vec![one(5)], vec![one(6)]], "Join(MvId(5))"),
        ("second group finds one", vec![vec![], vec![one(6)]], "Join(MvId(6))"),
        ("several, then one", vec![vec![one(5), one(6)], vec![one(6)]], "Join(MvId(6))"),
        ("nothing, join-only rule", vec![vec![], vec![]], "Disconnector"),
        (
            "several and no single match",
            vec![vec![one(5), one(6)], vec![]],
            "ambiguous-join: join group 1 of \"AD join\" matches 2 objects: mv:5, mv:6",
        ),
        (
            "the match already has an AD object",
            vec![vec![Candidate { mv: MvId(5), taken_by_same_connector: true }]],
            "ambiguous-join: join group 1 of \"AD join\" matches mv:5, which already has an object of this connector",
        ),
    ];
    for (name, candidates, expected) in cases {
        let decision = match inbound::decide_join(&the_plan, &candidates) {
            JoinDecision::Error(error) => format!("{}: {}", error.code, error.message),
            other => format!("{other:?}"),
        };
        assert_eq!(decision, expected, "{name}");
    }

    let worker = cs(2, "hr", "worker", "7", Attributes::new().with("employeeNumber", s("7")));
    assert_eq!(inbound::decide_join(&plan(&rules, &worker), &[vec![]]), JoinDecision::Project("person".into()));
    let no_key = cs(3, "hr", "worker", "8", Attributes::new());
    assert_eq!(inbound::decide_join(&plan(&rules, &no_key), &[]), JoinDecision::Disconnector, "no join attribute present: no projection");
    let other_type = cs(4, "ad", "contact", "CN=c", Attributes::new());
    assert_eq!(plan(&rules, &other_type), JoinPlan::NotInScope);
}

#[test]
fn two_joining_rules_in_scope_is_an_object_error() {
    let second_ad_rule =
        TWO_SOURCES.split("[[rule]]").nth(2).unwrap().replace("AD join", "AD join 2").replace("precedence = 100", "precedence = 101");
    let rules = RuleSet::parse(&format!("{TWO_SOURCES}\n[[rule]]{second_ad_rule}")).unwrap_or_else(|errors| panic!("{errors:?}"));
    let ad_user = cs(1, "ad", "user", "CN=ann", Attributes::new().with("employeeID", s("7")));
    let JoinPlan::Error(error) = plan(&rules, &ad_user) else { panic!("expected an error") };
    assert_eq!(error.code, "join-rule-conflict");
    assert!(error.message.contains("\"AD join\", \"AD join 2\""), "{}", error.message);
}

fn run_inbound(rules: &RuleSet, mv: &MvObject, is_new: bool, joined: &[&CsObject]) -> inbound::InboundResult {
    let parameters = BTreeMap::new();
    let resolve = |connector: &ConnectorId, dn: &str| (connector.0 == "ad" && dn == "CN=boss").then_some(MvId(99));
    let mut random = || 7u64;
    inbound::flow_inbound(InboundInput {
        rules,
        mv,
        is_new,
        joined,
        member_of: &no_member,
        parameters: &parameters,
        resolve_reference: &resolve,
        now: now(),
        random: &mut random,
    })
}

fn empty_mv() -> MvObject {
    MvObject { id: MvId(1), object_type: "person".into(), attributes: BTreeMap::new() }
}

#[test]
fn precedence_merge_lineage_and_errors_across_two_connectors() {
    let rules = RuleSet::parse(TWO_SOURCES).unwrap();
    let mut worker_attributes =
        Attributes::new().with("employeeNumber", s("7")).with("dept", s("sales")).with("jobTitle", s("Rep")).with("start", s("2020-01-01"));
    worker_attributes.set("aliases", vec![s("smtp:ann@hr.example"), s("SMTP:ANN@corp.example")]);
    let mut worker = cs(1, "hr", "worker", "7", worker_attributes);
    let mut ad_attributes = Attributes::new()
        .with("employeeID", s("7"))
        .with("department", s("Marketing"))
        .with("title", s("Sales Rep"))
        .with("mail", s("ann@corp.example"))
        .with("mailLength", s("not a number"))
        .with("whenCreated", s("2019-05-05"));
    ad_attributes.set("proxyAddresses", vec![s("SMTP:ann@corp.example"), s("smtp:a@corp.example")]);
    ad_attributes.set("manager", vec![AttrValue::Reference("CN=boss".into()), AttrValue::Reference("CN=ghost".into())]);
    let ad = cs(2, "ad", "user", "CN=ann", ad_attributes);

    let result = run_inbound(&rules, &empty_mv(), true, &[&worker, &ad]);
    let value = |name: &str| result.attributes.get(name).map(|attribute| attribute.values.clone());
    assert_eq!(value("department"), Some(vec![s("SALES")]), "HR (precedence 50) beats AD (100)");
    assert_eq!(result.attributes["department"].lineage[0].rule, "HR join");
    assert_eq!(value("title"), Some(vec![s("Rep")]));
    assert_eq!(
        value("proxyAddresses"),
        Some(vec![s("smtp:ann@hr.example"), s("SMTP:ANN@corp.example"), s("smtp:a@corp.example")]),
        "case-insensitive merge keeps the first spelling"
    );
    assert_eq!(result.attributes["proxyAddresses"].lineage.len(), 2);
    assert_eq!(value("manager"), Some(vec![AttrValue::MvReference(MvId(99))]), "resolved reference kept, unresolved dropped");
    assert_eq!(value("hireDate"), Some(vec![s("2020-01-01")]), "apply-once flows run on creation");
    assert_eq!(value("mail"), None, "the failing flow contributes nothing");
    assert_eq!(result.errors.len(), 1);
    assert_eq!(result.errors[0].0, CsId(2));
    assert_eq!(result.errors[0].1.code, "flow-error");
    assert!(result.errors[0].1.message.starts_with("rule \"AD join\", flow to mail: 1:14: CNum:"), "{}", result.errors[0].1.message);

    // HR stops contributing a department (NULL): AD's value takes over. A leaver's title is
    // removed authoritatively even though AD still has one. Apply-once flows do not run again.
    worker.attributes.remove("dept");
    worker.attributes.set("status", vec![s("leaver")]);
    worker.attributes.set("start", vec![s("2021-01-01")]);
    let mut current = empty_mv();
    current.attributes = result.attributes.clone();
    let again = run_inbound(&rules, &current, false, &[&worker, &ad]);
    assert_eq!(again.attributes["department"].values, vec![s("Marketing")]);
    assert_eq!(again.attributes["department"].lineage[0].connector, ConnectorId("ad".into()));
    assert!(!again.attributes.contains_key("title"));
    assert!(!again.attributes.contains_key("hireDate"), "apply-once flows only run when the MV object is created");
    assert!(again.changes(&current));
}

fn ad_user(id: i64, sam: &str, uac: i64) -> CsObject {
    let attributes = Attributes::new()
        .with("objectGUID", AttrValue::Binary((0u8..16).collect()))
        .with("sAMAccountName", s(sam))
        .with("userAccountControl", AttrValue::Integer(uac))
        .with("givenName", s(" Ann "))
        .with("displayName", s("Ann Lee"))
        .with("objectSid", AttrValue::Binary(vec![1, 1, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0]));
    cs(id, "corp", "user", &format!("CN={sam},OU=Staff,DC=corp,DC=example"), attributes)
}

fn default_rules() -> RuleSet {
    defaults::ad_to_cloud(&["corp"], "tenant").unwrap()
}

fn run_default_inbound(user: &CsObject) -> BTreeMap<String, MvAttribute> {
    run_default_inbound_into(user, "person")
}

/// The default rules' inbound flow of one AD object into a new MV object of `mv_type`.
fn run_default_inbound_into(object: &CsObject, mv_type: &str) -> BTreeMap<String, MvAttribute> {
    let rules = default_rules();
    let mut parameters = BTreeMap::new();
    let mut corp = BTreeMap::new();
    corp.insert("Domain.FQDN".to_string(), Value::str("corp.example"));
    corp.insert("Domain.Netbios".to_string(), Value::str("CORP"));
    corp.insert("Forest.FQDN".to_string(), Value::str("corp.example"));
    corp.insert("Forest.Netbios".to_string(), Value::str("CORP"));
    corp.insert("Connector.ID".to_string(), Value::str("corp"));
    parameters.insert(ConnectorId("corp".into()), corp);
    let resolve = |_: &ConnectorId, _: &str| None;
    let mut random = || 1u64;
    let mv = MvObject { object_type: mv_type.into(), ..empty_mv() };
    let result = inbound::flow_inbound(InboundInput {
        rules: &rules,
        mv: &mv,
        is_new: true,
        joined: &[object],
        member_of: &no_member,
        parameters: &parameters,
        resolve_reference: &resolve,
        now: now(),
        random: &mut random,
    });
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    result.attributes
}

#[test]
fn default_rules_on_an_enabled_user() {
    let user = ad_user(1, "ann", 512);
    let attributes = run_default_inbound(&user);
    let first = |name: &str| attributes.get(name).map(|attribute| attribute.values[0].clone());
    assert_eq!(first("sourceAnchor"), Some(s("AAECAwQFBgcICQoLDA0ODw==")), "objectGUID in base64");
    assert_eq!(first("sourceAnchorBinary"), Some(AttrValue::Binary((0u8..16).collect())));
    assert_eq!(first("accountEnabled"), Some(AttrValue::Boolean(true)));
    assert_eq!(attributes["accountEnabled"].lineage[0].rule, "In from AD - User AccountEnabled (corp)");
    assert_eq!(first("userPrincipalName"), Some(s("ann@corp.example")), "sAMAccountName@Domain.FQDN without a UPN");
    assert_eq!(first("givenName"), Some(s("Ann")), "trimmed");
    assert_eq!(first("sourceObjectType"), Some(s("User")));
    assert_eq!(first("objectSidString"), Some(s("S-1-5-32")));
    assert_eq!(first("domainNetBios"), Some(s("CORP")));
    assert_eq!(first("distinguishedName"), Some(s("CN=ann,OU=Staff,DC=corp,DC=example")));
    assert_eq!(first("cloudFiltered"), None, "a normal user is not filtered");
}

#[test]
fn default_rules_filter_and_disable() {
    let disabled = run_default_inbound(&ad_user(1, "bob", 514));
    assert_eq!(disabled["accountEnabled"].values, vec![AttrValue::Boolean(false)]);
    assert_eq!(disabled["accountEnabled"].lineage[0].rule, "In from AD - User Common (corp)");
    assert_eq!(disabled["userPrincipalName"].values, vec![s("bob@corp.example")], "disabled accounts are synchronized too");
    assert_eq!(disabled["userPrincipalName"].lineage[0].rule, "In from AD - User Common (corp)", "from the lower-precedence rule");
    assert_eq!(disabled["sourceAnchor"].lineage[0].rule, "In from AD - User Common (corp)");

    for sam in ["MSOL_1234", "AAD_abcd", "SUPPORT_388945a0"] {
        assert_eq!(run_default_inbound(&ad_user(1, sam, 512))["cloudFiltered"].values, vec![AttrValue::Boolean(true)], "{sam}");
    }
    let mut conflict = ad_user(1, "carl", 512);
    conflict.dn = "CN=carl\\0ACNF:0123,OU=Staff,DC=corp,DC=example".into();
    assert_eq!(run_default_inbound(&conflict)["cloudFiltered"].values, vec![AttrValue::Boolean(true)], "replication conflict object");

    let rules = default_rules();
    let mut critical = ad_user(1, "krbtgt", 514);
    critical.attributes.set("isCriticalSystemObject", vec![s("TRUE")]);
    assert_eq!(
        inbound::plan_join(&rules, &critical, &no_member),
        JoinPlan::NotInScope,
        "critical system objects are not joined or projected"
    );
}

#[test]
fn default_rules_keep_groups_of_250000_members_out_of_the_cloud() {
    // Entra's limit: a group of 250,000 members or more is not synchronized.
    let group = |members: usize| {
        let attributes = Attributes::new()
            .with("objectGUID", AttrValue::Binary((0u8..16).collect()))
            .with("sAMAccountName", s("all-staff"))
            .with("groupType", AttrValue::Integer(-2_147_483_646))
            .with("objectSid", AttrValue::Binary(vec![1, 1, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0]));
        let mut group = cs(1, "corp", "group", "CN=all-staff,OU=Groups,DC=corp,DC=example", attributes);
        group
            .attributes
            .set("member", (0..members).map(|n| AttrValue::Reference(format!("CN=u{n},OU=Staff,DC=corp,DC=example"))).collect());
        group
    };
    let filtered =
        |members: usize| run_default_inbound_into(&group(members), "group").get("cloudFiltered").map(|attribute| attribute.values.clone());
    assert_eq!(filtered(249_999), None, "under the limit: synchronized");
    assert_eq!(filtered(250_000), Some(vec![AttrValue::Boolean(true)]), "at the limit: filtered");
}

#[test]
fn scope_changes_drive_link_and_lifetime() {
    let rules = default_rules();
    let mut user = ad_user(1, "dana", 512);
    assert!(inbound::keeps_link(&rules, &user, &no_member));
    assert!(inbound::mv_survives(&rules, &[&user], &no_member));
    user.attributes.set("adminDescription", vec![s("User_hidden")]);
    assert!(!inbound::keeps_link(&rules, &user, &no_member), "out of scope of every joining rule: disconnect");
    assert!(!inbound::mv_survives(&rules, &[&user], &no_member), "no provisioning rule in scope: the MV object goes");

    // A target object no inbound rule speaks of was joined by provisioning: it keeps its link.
    let mut provisioned = ad_user(2, "erin", 512);
    provisioned.connector = ConnectorId("some-target".into());
    assert!(inbound::keeps_link(&rules, &provisioned, &no_member), "joined by an outbound rule; only deprovisioning unlinks it");
}

fn person(attributes: &[(&str, AttrValue)]) -> MvObject {
    let mut mv = MvObject { id: MvId(42), object_type: "person".into(), attributes: BTreeMap::new() };
    for (name, value) in attributes {
        mv.attributes.insert(name.to_string(), MvAttribute { values: vec![value.clone()], lineage: vec![] });
    }
    mv
}

fn run_outbound(mv: &MvObject, joined: Option<&CsObject>, candidates: &[Vec<CsId>]) -> OutboundDecision {
    let rules = default_rules();
    let parameters = BTreeMap::new();
    let resolve = |id: MvId| (id == MvId(7)).then(|| "CN={boss}".to_string());
    let mut random = || 3u64;
    outbound::sync_outbound(OutboundInput {
        rules: &rules,
        mv,
        connector: &ConnectorId("tenant".into()),
        joined,
        join_candidates: candidates,
        parameters: &parameters,
        resolve_reference: &resolve,
        now: now(),
        random: &mut random,
    })
}

fn cloud_user() -> MvObject {
    person(&[
        ("sourceObjectType", s("User")),
        ("sourceAnchor", s("AAECAwQFBgcICQoLDA0ODw==")),
        ("userPrincipalName", s("ann@corp.example")),
        ("displayName", s("Ann Lee")),
        ("accountEnabled", AttrValue::Boolean(true)),
        ("manager", AttrValue::Reference("7".into())),
    ])
}

#[test]
fn provisioning_to_the_cloud() {
    let OutboundDecision::Provision { rule, object_type, dn, attributes } = run_outbound(&cloud_user(), None, &[]) else {
        panic!("expected provisioning")
    };
    assert_eq!(rule, "Out to Cloud - User Join");
    assert_eq!(object_type, "user");
    assert_eq!(dn, "CN={42}");
    assert_eq!(attributes.get("onPremisesImmutableId"), &[s("AAECAwQFBgcICQoLDA0ODw==")]);
    assert_eq!(attributes.get("onPremisesSyncEnabled"), &[AttrValue::Boolean(true)]);
    assert_eq!(attributes.get("mailNickname"), &[s("ann")], "from the UPN's local part");
    assert_eq!(attributes.get("manager"), &[AttrValue::Reference("CN={boss}".into())], "MV reference → the manager's cloud DN");

    let mut filtered = cloud_user();
    filtered.attributes.insert("cloudFiltered".into(), MvAttribute { values: vec![AttrValue::Boolean(true)], lineage: vec![] });
    assert_eq!(run_outbound(&filtered, None, &[]), OutboundDecision::Nothing);

    assert_eq!(run_outbound(&cloud_user(), None, &[vec![CsId(5)]]), OutboundDecision::Join { cs: CsId(5), export: None }, "hard match");
    let OutboundDecision::Error(error) = run_outbound(&cloud_user(), None, &[vec![CsId(5), CsId(6)]]) else { panic!() };
    assert_eq!(error.code, "ambiguous-join");
}

#[test]
fn exports_to_a_joined_object_and_deprovisioning() {
    let imported = Attributes::new()
        .with("onPremisesImmutableId", s("AAECAwQFBgcICQoLDA0ODw=="))
        .with("onPremisesSyncEnabled", AttrValue::Boolean(true))
        .with("userPrincipalName", s("ann@corp.example"))
        .with("displayName", s("Ann Old"))
        .with("accountEnabled", AttrValue::Boolean(true))
        .with("mailNickname", s("ann"))
        .with("jobTitle", s("Stale"))
        .with("manager", AttrValue::Reference("CN={boss}".into()));
    let mut joined = cs(9, "tenant", "user", "CN={42}", imported);
    joined.link = Some(MvId(42));
    let decision = run_outbound(&cloud_user(), Some(&joined), &[]);
    assert_eq!(
        decision,
        OutboundDecision::Export(PendingExport::Update(vec![
            AttrChange::Replace("displayName".into(), vec![s("Ann Lee")]),
            AttrChange::Clear("jobTitle".into()),
        ]))
    );

    let mut changed_anchor = cloud_user();
    changed_anchor.attributes.insert("cloudSourceAnchor".into(), MvAttribute { values: vec![s("OTHER")], lineage: vec![] });
    let OutboundDecision::Error(error) = run_outbound(&changed_anchor, Some(&joined), &[]) else { panic!("expected an error") };
    assert!(error.message.ends_with("sourceAnchor attribute has changed"), "{}", error.message);

    let mut descoped = cloud_user();
    descoped.attributes.insert("cloudFiltered".into(), MvAttribute { values: vec![AttrValue::Boolean(true)], lineage: vec![] });
    assert_eq!(run_outbound(&descoped, Some(&joined), &[]), OutboundDecision::Deprovision(CsId(9)));
}

#[test]
fn the_consistency_guid_is_written_back_and_a_join_rule_never_deletes() {
    let rules = default_rules();
    let parameters = BTreeMap::new();
    let resolve = |_: MvId| None;
    let guid = AttrValue::Binary((0u8..16).collect());
    let decide = |mv: &MvObject, joined: &CsObject| {
        let mut random = || 3u64;
        outbound::sync_outbound(OutboundInput {
            rules: &rules,
            mv,
            connector: &ConnectorId("corp".into()),
            joined: Some(joined),
            join_candidates: &[],
            parameters: &parameters,
            resolve_reference: &resolve,
            now: now(),
            random: &mut random,
        })
    };
    let mut ad_user = cs(3, "corp", "user", "CN=Ann,DC=corp", Attributes::new().with("objectGUID", guid.clone()));
    ad_user.link = Some(MvId(42));
    let mut mv = cloud_user();
    mv.attributes.insert("sourceAnchorBinary".into(), MvAttribute { values: vec![guid.clone()], lineage: vec![] });
    mv.attributes.insert("sourceAnchorForest".into(), MvAttribute { values: vec![s("corp")], lineage: vec![] });
    assert_eq!(
        decide(&mv, &ad_user),
        OutboundDecision::Export(PendingExport::Update(vec![AttrChange::Replace("mS-DS-ConsistencyGuid".into(), vec![guid.clone()])])),
        "objectGUID goes into the consistency GUID"
    );
    let mut written = ad_user.clone();
    written.attributes = written.attributes.with("mS-DS-ConsistencyGuid", guid);
    assert_eq!(decide(&mv, &written), OutboundDecision::Nothing, "once written, nothing more");
    // A person the writeback does not speak of (another forest's, or a group) is left alone:
    // a join rule never deletes the source directory's objects.
    mv.attributes.insert("sourceAnchorForest".into(), MvAttribute { values: vec![s("fabrikam")], lineage: vec![] });
    assert_eq!(decide(&mv, &ad_user), OutboundDecision::Nothing);
}
