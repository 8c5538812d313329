//! Deterministic synthetic directories for tests and benchmarks.
//!
//! [`generate`] builds people (names, UPNs, mail, proxyAddresses, managers, departments) spread over
//! OUs and UPN domains, groups with nested and very large memberships, and contacts. The same
//! [`GenConfig`] always gives the same directory. [`write_ad_ldif`] and [`write_openldap_ldif`]
//! render it for offline bulk loads (`ldbadd` into a Samba template, `slapadd` into slapd), and
//! [`ad_objects`] gives the same directory as AD-shaped objects for in-memory connectors.
//!
//! Pure: it computes and writes to any `io::Write`; it starts no server and reads no clock.

use std::io::{self, Write};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Number of people.
    pub users: usize,
    /// Number of groups (at least 2 when non-zero: one all-staff group and department groups).
    pub groups: usize,
    /// Number of mail contacts.
    pub contacts: usize,
    /// UPN / mail domains; people are spread across them.
    pub domains: Vec<String>,
    /// Seed of the pseudo-random choices.
    pub seed: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig { users: 100, groups: 10, contacts: 10, domains: vec!["corp.example.test".into()], seed: 1 }
    }
}

/// A generated person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// `sAMAccountName` / `uid`: unique, at most 20 characters.
    pub account: String,
    /// Given name.
    pub given_name: String,
    /// Surname.
    pub surname: String,
    /// UPN, `account@domain`.
    pub upn: String,
    /// Primary mail address.
    pub mail: String,
    /// `SMTP:` primary and `smtp:` secondary addresses.
    pub proxy_addresses: Vec<String>,
    /// Department, which is also the person's OU.
    pub department: String,
    /// Job title.
    pub title: String,
    /// Employee number.
    pub employee_id: String,
    /// Index of the manager in [`Directory::people`], if any.
    pub manager: Option<usize>,
}

/// A generated group; members are people and other groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Indices into [`Directory::people`].
    pub people: Vec<usize>,
    /// Indices into [`Directory::groups`] (nesting; always of later groups, so no cycles).
    pub groups: Vec<usize>,
    /// Mail-enabled distribution group rather than security group.
    pub distribution: bool,
}

/// A generated mail contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Display name, also the `cn`.
    pub name: String,
    /// External mail address.
    pub mail: String,
}

/// A whole synthetic directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    /// Department OUs.
    pub departments: Vec<String>,
    /// People.
    pub people: Vec<Person>,
    /// Groups; group 0 holds everyone.
    pub groups: Vec<Group>,
    /// Contacts.
    pub contacts: Vec<Contact>,
}

const GIVEN: &[&str] = &[
    "Ada", "Bram", "Chloe", "Dmitri", "Elif", "Farah", "Goran", "Hana", "Ines", "Jonas", "Kofi", "Lena", "Mateo", "Nora", "Oskar", "Priya",
    "Quentin", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zoe", "José", "Åsa", "Björn", "Zoë",
];
const SURNAMES: &[&str] = &[
    "Abara",
    "Berg",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Larsen",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Quinn",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Umarov",
    "Varga",
    "Weber",
    "Xu",
    "Yilmaz",
    "Zimmermann",
    "O'Brien",
    "Müller",
    "Núñez",
    "de Vries",
];
const DEPARTMENTS: &[&str] = &["Sales", "Engineering", "Finance", "Support", "Marketing", "Legal", "Operations", "HR"];
const TITLES: &[&str] = &["Associate", "Specialist", "Engineer", "Analyst", "Manager", "Director"];

/// Generates a directory; the result depends only on `config`.
pub fn generate(config: &GenConfig) -> Directory {
    let mut rng = SplitMix64(config.seed);
    let domains: Vec<&str> =
        if config.domains.is_empty() { vec!["corp.example.test"] } else { config.domains.iter().map(String::as_str).collect() };
    let departments: Vec<String> = DEPARTMENTS.iter().map(|name| name.to_string()).collect();
    let mut people = Vec::with_capacity(config.users);
    for index in 0..config.users {
        let given_name = GIVEN[rng.below(GIVEN.len())].to_string();
        let surname = SURNAMES[rng.below(SURNAMES.len())].to_string();
        let account = format!("{}{}{index}", ascii_fold(&given_name, 1), ascii_fold(&surname, 10)).to_lowercase();
        let domain = domains[index % domains.len()];
        let upn = format!("{account}@{domain}");
        let mail = format!("{}.{}{index}@{domain}", ascii_fold(&given_name, 20), ascii_fold(&surname, 20)).to_lowercase();
        let proxy_addresses = vec![format!("SMTP:{mail}"), format!("smtp:{account}@mail.{domain}")];
        // The first person of each department manages its later members; others report upwards.
        let department_index = rng.below(departments.len());
        let manager = if index < departments.len() { None } else { Some(rng.below(index.min(departments.len() * 4))) };
        people.push(Person {
            account,
            given_name,
            surname,
            upn,
            mail,
            proxy_addresses,
            department: departments[department_index].clone(),
            title: TITLES[rng.below(TITLES.len())].to_string(),
            employee_id: format!("E{:07}", 1000 + index),
            manager,
        });
    }

    let mut by_department: Vec<Vec<usize>> = vec![Vec::new(); departments.len()];
    for (index, person) in people.iter().enumerate() {
        if let Some(department) = departments.iter().position(|name| *name == person.department) {
            by_department[department].push(index);
        }
    }
    let mut groups = Vec::with_capacity(config.groups);
    if config.groups > 0 {
        groups.push(Group { name: "All Staff".into(), people: (0..people.len()).collect(), groups: vec![], distribution: true });
    }
    for index in 1..config.groups {
        let department_index = index % departments.len();
        let name = format!("{} Team {index}", departments[department_index]);
        // A window of 5 to 250 people of the department (groups stay realistic at 100,000 users).
        let members = &by_department[department_index];
        let people_members: Vec<usize> = if members.is_empty() {
            Vec::new()
        } else {
            let size = (5 + rng.below(246)).min(members.len());
            let start = rng.below(members.len() - size + 1);
            members[start..start + size].to_vec()
        };
        // Nest: every fourth group contains the next one.
        let nested = if index % 4 == 1 && index + 1 < config.groups { vec![index + 1] } else { vec![] };
        groups.push(Group { name, people: people_members, groups: nested, distribution: index % 5 == 0 });
    }

    let contacts = (0..config.contacts)
        .map(|index| {
            let given = GIVEN[rng.below(GIVEN.len())];
            let surname = SURNAMES[rng.below(SURNAMES.len())];
            Contact {
                name: format!("{given} {surname} (ext {index})"),
                mail: format!("{}.{}{index}@partner.example", ascii_fold(given, 20), ascii_fold(surname, 20)).to_lowercase(),
            }
        })
        .collect();

    Directory { departments, people, groups, contacts }
}

/// Writes the directory as LDIF for Active Directory under `base_dn` (e.g. `DC=corp,DC=example,DC=test`):
/// `OU=Isthmus People` with a sub-OU per department, groups and contacts in `OU=Isthmus Groups`.
/// Accounts are created disabled and without passwords (bulk loads are for import benchmarks).
pub fn write_ad_ldif(dir: &Directory, base_dn: &str, out: &mut impl Write) -> io::Result<()> {
    let people_ou = format!("OU=Isthmus People,{base_dn}");
    let groups_ou = format!("OU=Isthmus Groups,{base_dn}");
    for ou in [&people_ou, &groups_ou] {
        writeln!(out, "dn: {ou}\nobjectClass: organizationalUnit\n")?;
    }
    for department in &dir.departments {
        writeln!(out, "dn: OU={department},{people_ou}\nobjectClass: organizationalUnit\n")?;
    }
    let person_dn = |person: &Person| format!("CN={},OU={},{people_ou}", person.account, person.department);
    for person in &dir.people {
        writeln!(out, "dn: {}", person_dn(person))?;
        writeln!(out, "objectClass: user")?;
        writeln!(out, "sAMAccountName: {}", person.account)?;
        writeln!(out, "userAccountControl: 514")?;
        ldif_attr(out, "givenName", &person.given_name)?;
        ldif_attr(out, "sn", &person.surname)?;
        ldif_attr(out, "displayName", &format!("{} {}", person.given_name, person.surname))?;
        writeln!(out, "userPrincipalName: {}", person.upn)?;
        writeln!(out, "mail: {}", person.mail)?;
        for address in &person.proxy_addresses {
            writeln!(out, "proxyAddresses: {address}")?;
        }
        writeln!(out, "department: {}", person.department)?;
        writeln!(out, "title: {}", person.title)?;
        writeln!(out, "employeeID: {}", person.employee_id)?;
        if let Some(manager) = person.manager {
            writeln!(out, "manager: {}", person_dn(&dir.people[manager]))?;
        }
        writeln!(out)?;
    }
    // Nested groups point at later groups, so write groups last-to-first.
    let group_dn = |group: &Group| format!("CN={},{groups_ou}", group.name);
    for group in dir.groups.iter().rev() {
        writeln!(out, "dn: {}", group_dn(group))?;
        writeln!(out, "objectClass: group")?;
        writeln!(out, "sAMAccountName: {}", group.name.replace(' ', "_"))?;
        // Universal distribution group, or global security group.
        writeln!(out, "groupType: {}", if group.distribution { "8" } else { "-2147483646" })?;
        for &person in &group.people {
            writeln!(out, "member: {}", person_dn(&dir.people[person]))?;
        }
        for &nested in &group.groups {
            writeln!(out, "member: {}", group_dn(&dir.groups[nested]))?;
        }
        writeln!(out)?;
    }
    for contact in &dir.contacts {
        ldif_attr(out, "dn", &format!("CN={},{groups_ou}", contact.name))?;
        writeln!(out, "objectClass: contact")?;
        ldif_attr(out, "displayName", &contact.name)?;
        writeln!(out, "mail: {}\n", contact.mail)?;
    }
    Ok(())
}

/// Writes the directory as LDIF for OpenLDAP under `suffix` (people in `ou=people`, groups and
/// contacts in `ou=groups`, which [`crate::slapd`] creates), with `inetOrgPerson` and `groupOfNames`.
pub fn write_openldap_ldif(dir: &Directory, suffix: &str, out: &mut impl Write) -> io::Result<()> {
    let person_dn = |person: &Person| format!("uid={},ou=people,{suffix}", person.account);
    for person in &dir.people {
        writeln!(out, "dn: {}", person_dn(person))?;
        writeln!(out, "objectClass: inetOrgPerson")?;
        writeln!(out, "uid: {}", person.account)?;
        ldif_attr(out, "cn", &format!("{} {}", person.given_name, person.surname))?;
        ldif_attr(out, "givenName", &person.given_name)?;
        ldif_attr(out, "sn", &person.surname)?;
        writeln!(out, "mail: {}", person.mail)?;
        writeln!(out, "departmentNumber: {}", person.department)?;
        writeln!(out, "title: {}", person.title)?;
        writeln!(out, "employeeNumber: {}", person.employee_id)?;
        if let Some(manager) = person.manager {
            writeln!(out, "manager: {}", person_dn(&dir.people[manager]))?;
        }
        writeln!(out)?;
    }
    let group_dn = |group: &Group| format!("cn={},ou=groups,{suffix}", group.name);
    for group in dir.groups.iter().rev() {
        writeln!(out, "dn: {}", group_dn(group))?;
        writeln!(out, "objectClass: groupOfNames")?;
        writeln!(out, "cn: {}", group.name)?;
        for &person in &group.people {
            writeln!(out, "member: {}", person_dn(&dir.people[person]))?;
        }
        for &nested in &group.groups {
            writeln!(out, "member: {}", group_dn(&dir.groups[nested]))?;
        }
        writeln!(out)?;
    }
    for contact in &dir.contacts {
        writeln!(out, "dn: mail={},ou=groups,{suffix}", contact.mail)?;
        writeln!(out, "objectClass: inetOrgPerson")?;
        ldif_attr(out, "cn", &contact.name)?;
        ldif_attr(out, "sn", contact.name.split(' ').nth(1).unwrap_or("Contact"))?;
        writeln!(out, "mail: {}\n", contact.mail)?;
    }
    Ok(())
}

/// Writes `name: value`, base64-encoded (`name:: …`) when the value is not safe LDIF text.
fn ldif_attr(out: &mut impl Write, name: &str, value: &str) -> io::Result<()> {
    let safe = value.bytes().all(|byte| (0x20..0x7f).contains(&byte)) && !value.starts_with([' ', ':', '<']) && !value.ends_with(' ');
    if safe { writeln!(out, "{name}: {value}") } else { writeln!(out, "{name}:: {}", base64(value.as_bytes())) }
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let triple =
            u32::from(chunk[0]) << 16 | u32::from(chunk.get(1).copied().unwrap_or(0)) << 8 | u32::from(chunk.get(2).copied().unwrap_or(0));
        for position in 0..4 {
            if position <= chunk.len() {
                text.push(TABLE[(triple >> (18 - 6 * position) & 0x3f) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// The directory as Active Directory objects (DN, object class, attributes) under `base_dn`,
/// with the attributes AD would hold: `objectGUID` (16 bytes, derived from the seed and index),
/// `objectSid`, `sAMAccountName`, `userPrincipalName`, `userAccountControl` (512, enabled),
/// names, mail, `proxyAddresses`, `manager` and `member` as references, `groupType`.
pub fn ad_objects(dir: &Directory, base_dn: &str, seed: u64) -> Vec<(String, String, model::Attributes)> {
    use model::{AttrValue, Attributes};
    let mut objects = Vec::new();
    let people_ou = format!("OU=Isthmus People,{base_dn}");
    let groups_ou = format!("OU=Isthmus Groups,{base_dn}");
    let person_dn = |person: &Person| format!("CN={},OU={},{people_ou}", person.account, person.department);
    let group_dn = |group: &Group| format!("CN={},{groups_ou}", group.name);
    let guid = |kind: u64, index: usize| {
        let mut rng = SplitMix64(seed ^ (kind << 56) ^ index as u64);
        let mut bytes = rng.next().to_le_bytes().to_vec();
        bytes.extend_from_slice(&rng.next().to_le_bytes());
        AttrValue::Binary(bytes)
    };
    let sid = |rid: u32| {
        let mut bytes = vec![1, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0];
        for part in [1_111_111_111u32, 2_222_222_222, 3_333_333_333, rid] {
            bytes.extend_from_slice(&part.to_le_bytes());
        }
        AttrValue::Binary(bytes)
    };
    let text = |value: &str| AttrValue::String(value.to_string());
    for (index, person) in dir.people.iter().enumerate() {
        let mut attributes = Attributes::new()
            .with("objectGUID", guid(1, index))
            .with("objectSid", sid(1000 + index as u32))
            .with("sAMAccountName", text(&person.account))
            .with("userPrincipalName", text(&person.upn))
            .with("userAccountControl", AttrValue::Integer(512))
            .with("cn", text(&person.account))
            .with("givenName", text(&person.given_name))
            .with("sn", text(&person.surname))
            .with("displayName", text(&format!("{} {}", person.given_name, person.surname)))
            .with("mail", text(&person.mail))
            .with("mailNickname", text(&person.account))
            .with("department", text(&person.department))
            .with("title", text(&person.title))
            .with("employeeID", text(&person.employee_id));
        attributes.set("proxyAddresses", person.proxy_addresses.iter().map(|address| text(address)).collect());
        if let Some(manager) = person.manager {
            attributes.set("manager", vec![AttrValue::Reference(person_dn(&dir.people[manager]))]);
        }
        objects.push((person_dn(person), "user".to_string(), attributes));
    }
    for (index, group) in dir.groups.iter().enumerate() {
        let mut attributes = Attributes::new()
            .with("objectGUID", guid(2, index))
            // Far above the users' RIDs, so that no user and group share a SID at any size.
            .with("objectSid", sid(1_000_000_000 + index as u32))
            .with("sAMAccountName", text(&group.name.replace(' ', "_")))
            .with("cn", text(&group.name))
            .with("groupType", AttrValue::Integer(if group.distribution { 8 } else { -2_147_483_646 }));
        if group.distribution {
            let nickname = group.name.replace(' ', "").to_lowercase();
            attributes.set("mail", vec![text(&format!("{nickname}@corp.example.test"))]);
            attributes.set("proxyAddresses", vec![text(&format!("SMTP:{nickname}@corp.example.test"))]);
        }
        let members: Vec<AttrValue> = group
            .people
            .iter()
            .map(|&person| AttrValue::Reference(person_dn(&dir.people[person])))
            .chain(group.groups.iter().map(|&nested| AttrValue::Reference(group_dn(&dir.groups[nested]))))
            .collect();
        attributes.set("member", members);
        objects.push((group_dn(group), "group".to_string(), attributes));
    }
    for (index, contact) in dir.contacts.iter().enumerate() {
        let mut attributes = Attributes::new()
            .with("objectGUID", guid(3, index))
            .with("cn", text(&contact.name))
            .with("displayName", text(&contact.name))
            .with("mail", text(&contact.mail));
        attributes.set("proxyAddresses", vec![text(&format!("SMTP:{}", contact.mail))]);
        objects.push((format!("CN={},{groups_ou}", model::dn::escape_value(&contact.name)), "contact".to_string(), attributes));
    }
    objects
}

/// Letters of `name` folded to ASCII (diacritics dropped, others removed), at most `max` long.
fn ascii_fold(name: &str, max: usize) -> String {
    name.chars()
        .filter_map(|c| match c {
            'a'..='z' | 'A'..='Z' => Some(c),
            'á' | 'à' | 'ä' | 'å' => Some('a'),
            'Å' | 'Ä' => Some('A'),
            'é' | 'ë' => Some('e'),
            'ö' | 'ø' | 'ó' => Some('o'),
            'ü' | 'ú' => Some('u'),
            'ñ' => Some('n'),
            'Ñ' => Some('N'),
            'ï' | 'í' => Some('i'),
            _ => None,
        })
        .take(max)
        .collect()
}

/// SplitMix64: tiny, deterministic, good enough to pick names.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_directory_other_seed_other_directory() {
        let config = GenConfig { users: 50, groups: 6, contacts: 3, ..GenConfig::default() };
        assert_eq!(generate(&config), generate(&config));
        let other = generate(&GenConfig { seed: 2, ..config.clone() });
        assert_ne!(generate(&config).people, other.people);
    }

    #[test]
    fn accounts_are_unique_and_fit_sam_account_name() {
        let dir = generate(&GenConfig { users: 5000, groups: 0, contacts: 0, ..GenConfig::default() });
        let mut accounts: Vec<&str> = dir.people.iter().map(|person| person.account.as_str()).collect();
        assert!(accounts.iter().all(|account| account.len() <= 20 && account.is_ascii()), "{accounts:?}");
        accounts.sort_unstable();
        accounts.dedup();
        assert_eq!(accounts.len(), 5000);
    }

    #[test]
    fn groups_nest_forward_and_all_staff_holds_everyone() {
        let dir = generate(&GenConfig { users: 40, groups: 9, ..GenConfig::default() });
        assert_eq!(dir.groups[0].people.len(), 40);
        assert!(dir.groups.iter().any(|group| !group.groups.is_empty()));
        for (index, group) in dir.groups.iter().enumerate() {
            assert!(group.groups.iter().all(|&nested| nested > index), "group {index} nests backwards");
            assert!(!group.people.is_empty() && group.people.len() <= 250 || index == 0);
        }
        assert!(dir.people.iter().enumerate().all(|(index, person)| person.manager.is_none_or(|m| m != index)));
    }

    #[test]
    fn people_spread_over_domains() {
        let domains = vec!["a.example".to_string(), "b.example".to_string()];
        let dir = generate(&GenConfig { users: 10, domains, ..GenConfig::default() });
        assert!(dir.people[0].upn.ends_with("@a.example"));
        assert!(dir.people[1].upn.ends_with("@b.example"));
        assert!(dir.people[1].proxy_addresses[0].starts_with("SMTP:"));
    }

    #[test]
    fn ldif_encodes_non_ascii_values_in_base64() {
        let mut out = Vec::new();
        ldif_attr(&mut out, "sn", "Müller").unwrap();
        ldif_attr(&mut out, "sn", "Plain").unwrap();
        ldif_attr(&mut out, "sn", " leading").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "sn:: TcO8bGxlcg==\nsn: Plain\nsn:: IGxlYWRpbmc=\n");
    }

    #[test]
    fn ad_objects_have_unique_anchors_and_resolvable_references() {
        let dir = generate(&GenConfig { users: 60, groups: 6, contacts: 3, ..GenConfig::default() });
        let objects = ad_objects(&dir, "DC=corp,DC=example", 7);
        assert_eq!(objects.len(), 60 + 6 + 3);
        let mut guids: Vec<_> = objects.iter().map(|(_, _, attributes)| attributes.first("objectGUID").cloned()).collect();
        guids.sort();
        guids.dedup();
        assert_eq!(guids.len(), objects.len(), "every objectGUID differs");
        let dns: std::collections::BTreeSet<&str> = objects.iter().map(|(dn, _, _)| dn.as_str()).collect();
        for (_, _, attributes) in &objects {
            for name in ["manager", "member"] {
                for value in attributes.get(name) {
                    assert!(dns.contains(value.to_string().as_str()), "{name} {value} points at a generated object");
                }
            }
        }
        assert_eq!(ad_objects(&dir, "DC=corp,DC=example", 7), objects, "deterministic");
    }

    #[test]
    fn ldif_has_one_entry_per_object() {
        let dir = generate(&GenConfig { users: 20, groups: 5, contacts: 4, ..GenConfig::default() });
        let mut ad = Vec::new();
        write_ad_ldif(&dir, "DC=corp,DC=example,DC=test", &mut ad).unwrap();
        let ad = String::from_utf8(ad).unwrap();
        let entries = ad.lines().filter(|line| line.starts_with("dn: ")).count();
        assert_eq!(entries, 2 + dir.departments.len() + 20 + 5 + 4);
        let mut ol = Vec::new();
        write_openldap_ldif(&dir, "dc=example,dc=test", &mut ol).unwrap();
        let ol = String::from_utf8(ol).unwrap();
        assert_eq!(ol.lines().filter(|line| line.starts_with("dn: ")).count(), 20 + 5 + 4);
    }
}
