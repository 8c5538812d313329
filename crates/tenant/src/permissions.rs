//! Graph's permission model: which application roles each kind of request needs, in one table
//! that drives the checks (`Access::require`), the documentation (`docs/permissions.md`, checked
//! by a test) and a test that walks every route with every role.
//!
//! As in Microsoft Graph, each resource has its own permissions (`User.*` for users only,
//! `Group.*` and `GroupMember.*` for groups, `Domain.*`, `AuditLog.Read.All`, …) and
//! `Directory.Read.All` / `Directory.ReadWrite.All` are the broad ones. Two choices of our own:
//! `Directory.ReadWrite.All` is the tenant administrator's role (the bootstrap app holds it), so
//! it also reads audit logs and risky users, which Graph gives only to their own permissions;
//! `Directory.Read.All` does not. The sync service's role
//! (`OnPremDirectorySynchronization.ReadWrite.All`) reaches the directory objects it syncs (and
//! only those it owns: `resilience::sync_write_refusal`), the domain list, its own settings and
//! the password-hash endpoints — never roles, audit logs or agents.

use crate::SYNC_ROLE;

/// A kind of request, as far as permissions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Read users.
    UsersRead,
    /// Create, change, delete users.
    UsersWrite,
    /// Revoke a user's sign-in sessions (refresh tokens).
    UsersRevokeSessions,
    /// Read groups and their members.
    GroupsRead,
    /// Create, change, delete groups.
    GroupsWrite,
    /// Add and remove group members.
    GroupMembersWrite,
    /// Read organizational contacts.
    ContactsRead,
    /// Write organizational contacts (synced objects: Graph itself has no contact writes).
    ContactsWrite,
    /// Read domains and their verification records.
    DomainsRead,
    /// Add, change, verify, delete domains.
    DomainsWrite,
    /// Read the organization.
    OrganizationRead,
    /// Read app registrations, service principals and role grants.
    ApplicationsRead,
    /// Grant and take back application roles.
    AppRoleAssignmentsWrite,
    /// Create, change, delete app registrations and their credentials.
    ApplicationsWrite,
    /// Read directory roles and their holders.
    RolesRead,
    /// Assign and remove directory roles.
    RolesWrite,
    /// Read the on-premises synchronization settings.
    SyncSettingsRead,
    /// Change the on-premises synchronization settings.
    SyncSettingsWrite,
    /// Read the directory audit and sign-in logs.
    AuditLogsRead,
    /// Read risky users.
    RiskyUsersRead,
    /// Send password hashes and read the leaked-credential ranges (the sync service).
    PasswordHashSync,
    /// Report a finished sync cycle (the sync service).
    SyncReports,
    /// Read health alerts.
    HealthRead,
    /// List pass-through agents and settings.
    AgentsRead,
    /// Register and revoke pass-through agents, change their settings.
    AgentsWrite,
}

const READ_ALL: &str = "Directory.Read.All";
const WRITE_ALL: &str = "Directory.ReadWrite.All";

/// Each area with the application roles of which a caller needs one.
pub const PERMISSIONS: &[(Area, &[&str])] = &[
    (Area::UsersRead, &["User.Read.All", "User.ReadWrite.All", READ_ALL, WRITE_ALL, SYNC_ROLE]),
    (Area::UsersWrite, &["User.ReadWrite.All", WRITE_ALL, SYNC_ROLE]),
    (Area::UsersRevokeSessions, &["User.RevokeSessions.All", "User.ReadWrite.All", WRITE_ALL]),
    (Area::GroupsRead, &["GroupMember.Read.All", "Group.Read.All", "Group.ReadWrite.All", READ_ALL, WRITE_ALL, SYNC_ROLE]),
    (Area::GroupsWrite, &["Group.ReadWrite.All", WRITE_ALL, SYNC_ROLE]),
    (Area::GroupMembersWrite, &["GroupMember.ReadWrite.All", "Group.ReadWrite.All", WRITE_ALL, SYNC_ROLE]),
    (Area::ContactsRead, &["OrgContact.Read.All", READ_ALL, WRITE_ALL, SYNC_ROLE]),
    (Area::ContactsWrite, &[WRITE_ALL, SYNC_ROLE]),
    (Area::DomainsRead, &["Domain.Read.All", "Domain.ReadWrite.All", READ_ALL, WRITE_ALL, SYNC_ROLE]),
    (Area::DomainsWrite, &["Domain.ReadWrite.All", WRITE_ALL]),
    (Area::OrganizationRead, &["Organization.Read.All", "Organization.ReadWrite.All", READ_ALL, WRITE_ALL]),
    (Area::ApplicationsRead, &["Application.Read.All", "Application.ReadWrite.All", READ_ALL, WRITE_ALL]),
    (Area::ApplicationsWrite, &["Application.ReadWrite.All", WRITE_ALL]),
    (Area::AppRoleAssignmentsWrite, &["AppRoleAssignment.ReadWrite.All", WRITE_ALL]),
    (Area::RolesRead, &["RoleManagement.Read.Directory", "RoleManagement.ReadWrite.Directory", READ_ALL, WRITE_ALL]),
    (Area::RolesWrite, &["RoleManagement.ReadWrite.Directory", WRITE_ALL]),
    (Area::SyncSettingsRead, &["OnPremDirectorySynchronization.Read.All", READ_ALL, WRITE_ALL, SYNC_ROLE]),
    (Area::SyncSettingsWrite, &[WRITE_ALL, SYNC_ROLE]),
    (Area::AuditLogsRead, &["AuditLog.Read.All", WRITE_ALL]),
    (Area::RiskyUsersRead, &["IdentityRiskyUser.Read.All", WRITE_ALL]),
    (Area::PasswordHashSync, &[SYNC_ROLE]),
    (Area::SyncReports, &[SYNC_ROLE]),
    (Area::HealthRead, &[READ_ALL, WRITE_ALL]),
    (Area::AgentsRead, &[READ_ALL, WRITE_ALL]),
    (Area::AgentsWrite, &[WRITE_ALL]),
];

/// The roles of which a caller needs one for `area`.
pub fn needed(area: Area) -> &'static [&'static str] {
    PERMISSIONS.iter().find(|(known, _)| *known == area).map_or(&[], |(_, roles)| roles)
}

/// Every role the table names.
pub fn all_roles() -> Vec<&'static str> {
    let mut roles: Vec<&str> = PERMISSIONS.iter().flat_map(|(_, roles)| roles.iter().copied()).collect();
    roles.sort_unstable();
    roles.dedup();
    roles
}

/// Every route that takes a bearer token: method, path (`{…}` for parameters) and area. The
/// route walk of the test suite calls each with every role; `docs/permissions.md` lists them.
pub const ROUTES: &[(&str, &str, Area)] = &[
    ("GET", "/v1.0/users", Area::UsersRead),
    ("POST", "/v1.0/users", Area::UsersWrite),
    ("GET", "/v1.0/users/{id}", Area::UsersRead),
    ("PATCH", "/v1.0/users/{id}", Area::UsersWrite),
    ("DELETE", "/v1.0/users/{id}", Area::UsersWrite),
    ("GET", "/v1.0/users/delta()", Area::UsersRead),
    ("POST", "/v1.0/users/{id}/revokeSignInSessions", Area::UsersRevokeSessions),
    ("GET", "/v1.0/groups", Area::GroupsRead),
    ("POST", "/v1.0/groups", Area::GroupsWrite),
    ("GET", "/v1.0/groups/{id}", Area::GroupsRead),
    ("PATCH", "/v1.0/groups/{id}", Area::GroupsWrite),
    ("DELETE", "/v1.0/groups/{id}", Area::GroupsWrite),
    ("GET", "/v1.0/groups/delta()", Area::GroupsRead),
    ("GET", "/v1.0/groups/{id}/members", Area::GroupsRead),
    ("POST", "/v1.0/groups/{id}/members/$ref", Area::GroupMembersWrite),
    ("DELETE", "/v1.0/groups/{id}/members/{member}/$ref", Area::GroupMembersWrite),
    ("GET", "/v1.0/contacts", Area::ContactsRead),
    ("POST", "/v1.0/contacts", Area::ContactsWrite),
    ("GET", "/v1.0/contacts/{id}", Area::ContactsRead),
    ("PATCH", "/v1.0/contacts/{id}", Area::ContactsWrite),
    ("DELETE", "/v1.0/contacts/{id}", Area::ContactsWrite),
    ("GET", "/v1.0/contacts/delta()", Area::ContactsRead),
    ("GET", "/v1.0/domains", Area::DomainsRead),
    ("POST", "/v1.0/domains", Area::DomainsWrite),
    ("GET", "/v1.0/domains/{id}", Area::DomainsRead),
    ("PATCH", "/v1.0/domains/{id}", Area::DomainsWrite),
    ("DELETE", "/v1.0/domains/{id}", Area::DomainsWrite),
    ("GET", "/v1.0/domains/{id}/verificationDnsRecords", Area::DomainsRead),
    ("POST", "/v1.0/domains/{id}/verify", Area::DomainsWrite),
    ("GET", "/v1.0/organization", Area::OrganizationRead),
    ("GET", "/v1.0/applications", Area::ApplicationsRead),
    ("POST", "/v1.0/applications", Area::ApplicationsWrite),
    ("GET", "/v1.0/applications/{id}", Area::ApplicationsRead),
    ("PATCH", "/v1.0/applications/{id}", Area::ApplicationsWrite),
    ("DELETE", "/v1.0/applications/{id}", Area::ApplicationsWrite),
    ("POST", "/v1.0/applications/{id}/addPassword", Area::ApplicationsWrite),
    ("POST", "/v1.0/applications/{id}/removePassword", Area::ApplicationsWrite),
    ("GET", "/v1.0/servicePrincipals", Area::ApplicationsRead),
    ("POST", "/v1.0/servicePrincipals", Area::ApplicationsWrite),
    ("GET", "/v1.0/servicePrincipals/{id}", Area::ApplicationsRead),
    ("GET", "/v1.0/servicePrincipals/{id}/appRoleAssignedTo", Area::ApplicationsRead),
    ("POST", "/v1.0/servicePrincipals/{id}/appRoleAssignedTo", Area::AppRoleAssignmentsWrite),
    ("DELETE", "/v1.0/servicePrincipals/{id}/appRoleAssignedTo/{member}", Area::AppRoleAssignmentsWrite),
    ("GET", "/v1.0/servicePrincipals/{id}/appRoleAssignments", Area::ApplicationsRead),
    ("GET", "/v1.0/directoryRoles", Area::RolesRead),
    ("GET", "/v1.0/directoryRoles/{id}", Area::RolesRead),
    ("GET", "/v1.0/directoryRoles/{id}/members", Area::RolesRead),
    ("POST", "/v1.0/directoryRoles/{id}/members/$ref", Area::RolesWrite),
    ("DELETE", "/v1.0/directoryRoles/{id}/members/{member}/$ref", Area::RolesWrite),
    ("GET", "/v1.0/directory/onPremisesSynchronization", Area::SyncSettingsRead),
    ("GET", "/v1.0/directory/onPremisesSynchronization/{id}", Area::SyncSettingsRead),
    ("PATCH", "/v1.0/directory/onPremisesSynchronization/{id}", Area::SyncSettingsWrite),
    ("GET", "/v1.0/auditLogs/directoryAudits", Area::AuditLogsRead),
    ("GET", "/v1.0/auditLogs/signIns", Area::AuditLogsRead),
    ("GET", "/v1.0/identityProtection/riskyUsers", Area::RiskyUsersRead),
    ("POST", "/isthmus/v1/passwordHashSync", Area::PasswordHashSync),
    ("GET", "/isthmus/v1/leakedCredentials/range/{id}", Area::PasswordHashSync),
    ("POST", "/isthmus/v1/syncReports", Area::SyncReports),
    ("GET", "/isthmus/v1/health/alerts", Area::HealthRead),
    ("GET", "/isthmus/v1/passThroughAuthentication", Area::AgentsRead),
    ("PATCH", "/isthmus/v1/passThroughAuthentication", Area::AgentsWrite),
    ("GET", "/isthmus/v1/passThroughAuthentication/agents", Area::AgentsRead),
    ("POST", "/isthmus/v1/passThroughAuthentication/agents", Area::AgentsWrite),
    ("DELETE", "/isthmus/v1/passThroughAuthentication/agents/{id}", Area::AgentsWrite),
];

/// `docs/permissions.md`, from the tables.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Graph permissions of the tenant\n\n\
         Generated from `crates/tenant/src/permissions.rs` (`UPDATE_EXPECT=1 cargo test -p tenant permissions` rewrites it);\n\
         a test calls every route below with an app holding each role.\n\n\
         An application needs **one** of the roles listed for a request; anything else is a 403\n\
         `Authorization_RequestDenied`. A token that is not an access token for Graph (an ID or refresh\n\
         token, another audience) is a 401. `Directory.ReadWrite.All` is the tenant administrator's role\n\
         (the bootstrap app holds it); the sync service's role writes only objects it owns.\n\n\
         | Method | Path | Any of these application roles |\n|---|---|---|\n",
    );
    for (method, path, area) in ROUTES {
        out.push_str(&format!(
            "| {method} | `{path}` | {} |\n",
            needed(*area).iter().map(|role| format!("`{role}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    out.push_str(
        "\nPass-through agents' own endpoints (`…/passThroughAuthentication/agent/poll|answer|renew`) take the\n\
         agent's client certificate, not a token; registering and revoking agents is also open to a user\n\
         holding Global Administrator or Hybrid Identity Administrator. `$batch` checks each request as if\n\
         it came alone. Discovery, the token and authorize endpoints and user-realm discovery are public.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_area_has_roles_and_a_route() {
        for (area, roles) in PERMISSIONS {
            assert!(!roles.is_empty(), "{area:?}");
            assert!(ROUTES.iter().any(|(_, _, routed)| routed == area), "{area:?} has no route");
        }
    }

    #[test]
    fn the_routes_are_those_the_api_description_lists() {
        let spec = crate::openapi::document();
        let paths = spec["paths"].as_object().cloned().unwrap_or_default();
        for (path, item) in &paths {
            for method in ["get", "post", "patch", "delete"] {
                if item.get(method).is_none() || !path.starts_with("/v1.0/") || path == "/v1.0/$batch" {
                    continue;
                }
                let upper = method.to_uppercase();
                let normal = normalize(path);
                assert!(
                    ROUTES.iter().any(|(known, route, _)| *known == upper && normalize(route) == normal),
                    "{upper} {path} is served but has no permission row"
                );
            }
        }
    }

    /// `{name}` → `{}`: parameters compared by position.
    fn normalize(path: &str) -> String {
        let mut out = String::new();
        let mut skipping = false;
        for c in path.chars() {
            match c {
                '{' => {
                    skipping = true;
                    out.push_str("{}");
                }
                '}' => skipping = false,
                _ if skipping => {}
                _ => out.push(c),
            }
        }
        out
    }

    #[test]
    fn the_permission_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/permissions.md");
        let want = markdown();
        if std::env::var_os("UPDATE_EXPECT").is_some() {
            std::fs::write(&path, &want).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(have == want, "docs/permissions.md is out of date: run UPDATE_EXPECT=1 cargo test -p tenant permissions");
    }
}
