//! The OpenAPI 3 document of the tenant's API, generated from the same resource tables the
//! handlers use (`docs/openapi.json` is checked against it by a test).

use serde_json::{Map, Value, json};

use crate::graph::{CONTACTS, GROUPS, Resource, USERS};

fn schema(resource: &Resource) -> Value {
    let mut properties = Map::new();
    properties.insert("id".into(), json!({"type": "string", "readOnly": true}));
    for (name, kind) in resource.property_types() {
        properties.insert(name.to_string(), kind);
    }
    json!({"type": "object", "properties": properties, "required": resource.required_properties()})
}

fn error_responses() -> Value {
    json!({
        "400": {"$ref": "#/components/responses/Error"},
        "401": {"$ref": "#/components/responses/Error"},
        "403": {"$ref": "#/components/responses/Error"},
        "404": {"$ref": "#/components/responses/Error"},
        "429": {"$ref": "#/components/responses/Error"},
    })
}

fn with_errors(mut ok: Value) -> Value {
    if let (Some(map), Value::Object(errors)) = (ok.as_object_mut(), error_responses()) {
        map.extend(errors);
    }
    ok
}

fn collection_paths(paths: &mut Map<String, Value>, resource: &Resource) {
    let segment = resource.segment();
    let name = resource.schema_name();
    let object = json!({"$ref": format!("#/components/schemas/{name}")});
    let list =
        json!({"type": "object", "properties": {"value": {"type": "array", "items": object}, "@odata.nextLink": {"type": "string"}}});
    let query = json!([
        {"name": "$top", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 999}},
        {"name": "$select", "in": "query", "schema": {"type": "string"}},
        {"name": "$filter", "in": "query", "schema": {"type": "string"}},
        {"name": "$skiptoken", "in": "query", "schema": {"type": "string"}},
    ]);
    paths.insert(
        format!("/v1.0/{segment}"),
        json!({
            "get": {"summary": format!("List {segment}"), "parameters": query, "responses": with_errors(json!({"200": {"description": "A page", "content": {"application/json": {"schema": list}}}}))},
            "post": {"summary": format!("Create a {}", name.to_lowercase()), "requestBody": {"required": true, "content": {"application/json": {"schema": object}}},
                     "responses": with_errors(json!({"201": {"description": "Created", "content": {"application/json": {"schema": object}}}}))},
        }),
    );
    let key = json!([{"name": "key", "in": "path", "required": true, "schema": {"type": "string"}}]);
    paths.insert(
        format!("/v1.0/{segment}/{{key}}"),
        json!({
            "parameters": key,
            "get": {"summary": format!("Get a {}", name.to_lowercase()), "responses": with_errors(json!({"200": {"description": "The object", "content": {"application/json": {"schema": object}}}}))},
            "patch": {"summary": format!("Update a {}", name.to_lowercase()), "requestBody": {"required": true, "content": {"application/json": {"schema": object}}},
                      "responses": with_errors(json!({"204": {"description": "Updated"}}))},
            "delete": {"summary": format!("Delete a {}", name.to_lowercase()), "responses": with_errors(json!({"204": {"description": "Deleted"}}))},
        }),
    );
    if resource.has_delta() {
        paths.insert(
            format!("/v1.0/{segment}/delta()"),
            json!({"get": {"summary": format!("Changes to {segment} since a delta link"), "parameters": [
                {"name": "$deltatoken", "in": "query", "schema": {"type": "string"}},
                {"name": "$skiptoken", "in": "query", "schema": {"type": "string"}},
                {"name": "$top", "in": "query", "schema": {"type": "integer"}},
            ], "responses": with_errors(json!({"200": {"description": "A page of changes; the last page has @odata.deltaLink"}}))}}),
        );
    }
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for resource in [&USERS, &GROUPS, &CONTACTS] {
        collection_paths(&mut paths, resource);
    }
    let key = json!([{"name": "key", "in": "path", "required": true, "schema": {"type": "string"}}]);
    paths.insert("/v1.0/groups/{key}/members".into(), json!({"parameters": key, "get": {"summary": "List a group's members", "responses": with_errors(json!({"200": {"description": "Members with @odata.type"}}))}}));
    paths.insert(
        "/v1.0/groups/{key}/members/$ref".into(),
        json!({"parameters": key, "post": {"summary": "Add a member", "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"@odata.id": {"type": "string"}}, "required": ["@odata.id"]}}}},
               "responses": with_errors(json!({"204": {"description": "Added"}}))}}),
    );
    paths.insert(
        "/v1.0/groups/{key}/members/{member}/$ref".into(),
        json!({"parameters": [key[0].clone(), {"name": "member", "in": "path", "required": true, "schema": {"type": "string"}}],
               "delete": {"summary": "Remove a member", "responses": with_errors(json!({"204": {"description": "Removed"}}))}}),
    );
    paths.insert(
        "/v1.0/$batch".into(),
        json!({"post": {"summary": "Up to 20 requests in one", "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"requests": {"type": "array", "maxItems": 20}}}}}},
               "responses": with_errors(json!({"200": {"description": "One response per request"}}))}}),
    );
    paths.insert("/v1.0/domains".into(), json!({"get": {"summary": "List domains", "responses": with_errors(json!({"200": {"description": "Domains"}}))},
                                                 "post": {"summary": "Add an unverified domain", "responses": with_errors(json!({"201": {"description": "Added"}}))}}));
    paths.insert(
        "/v1.0/domains/{name}".into(),
        json!({"parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
        "get": {"summary": "Get a domain", "responses": with_errors(json!({"200": {"description": "The domain"}}))},
        "patch": {"summary": "Set authenticationType", "responses": with_errors(json!({"204": {"description": "Updated"}}))},
        "delete": {"summary": "Remove a domain", "responses": with_errors(json!({"204": {"description": "Removed"}}))}}),
    );
    paths.insert(
        "/v1.0/domains/{name}/verificationDnsRecords".into(),
        json!({"parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
        "get": {"summary": "The TXT record that proves ownership", "responses": with_errors(json!({"200": {"description": "Records"}}))}}),
    );
    paths.insert(
        "/v1.0/domains/{name}/verify".into(),
        json!({"parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
        "post": {"summary": "Verify by DNS", "responses": with_errors(json!({"200": {"description": "The verified domain"}}))}}),
    );
    let id_parameter = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    paths.insert(
        "/v1.0/directory/onPremisesSynchronization/{id}".into(),
        json!({"parameters": id_parameter,
        "get": {"summary": "The tenant's directory-synchronization settings (id: the tenant id)", "responses": with_errors(json!({"200": {"description": "The settings"}}))},
        "patch": {"summary": "Set configuration (anchorAttribute once) and features", "responses": with_errors(json!({"204": {"description": "Updated"}}))}}),
    );
    paths.insert(
        "/isthmus/v1/passwordHashSync".into(),
        json!({"post": {"summary": "Password hash sync: credentials derived on-premises (v1;PPH1_MD4,...) for synced users by onPremisesImmutableId; sync service only; at most 1,000",
               "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"value": {"type": "array", "maxItems": 1000}}}}}},
               "responses": with_errors(json!({"200": {"description": "A status per user: Success, NoTargetConnection, FilteredByTarget"}}))}}),
    );
    paths.insert(
        "/isthmus/v1/health/alerts".into(),
        json!({"get": {"summary": "Health alerts (Entra Connect Health's sync catalog), evaluated now: the open ones, or with state=all the resolved ones of the last 90 days too",
               "parameters": [{"name": "state", "in": "query", "required": false, "schema": {"type": "string", "enum": ["open", "all"]}}],
               "responses": with_errors(json!({"200": {"description": "value: id, subject, severity, title, detail, remedy, state, raisedDateTime, lastSeenDateTime, resolvedDateTime"}}))}}),
    );
    paths.insert(
        "/isthmus/v1/syncReports".into(),
        json!({"post": {"summary": "A sync server's report of a finished cycle (health::SyncReport: server, mode, interval, the cycle's steps and counts); sync service only. Sets the organization's onPremisesLastSyncDateTime and onPremisesSyncEnabled",
               "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["version", "server", "mode", "intervalSeconds", "cycle"]}}}},
               "responses": with_errors(json!({"200": {"description": "competingActiveServers: the ids of the active servers reporting to the tenant when there is more than one"}}))}}),
    );
    paths.insert(
        "/isthmus/v1/leakedCredentials/range/{prefix}".into(),
        json!({"parameters": [{"name": "prefix", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[0-9A-Fa-f]{5}$"}}],
               "get": {"summary": "k-anonymity range of the leaked NT-hash list: suffixes and counts under a 5-hex-digit prefix (sync service only; 404 without a list)",
                       "responses": with_errors(json!({"200": {"description": "Suffixes and counts"}}))}}),
    );
    paths.insert(
        "/v1.0/identityProtection/riskyUsers".into(),
        json!({"get": {"summary": "Users whose synced password is on the leaked list", "responses": with_errors(json!({"200": {"description": "Risky users"}}))}}),
    );
    paths.insert("/v1.0/directoryRoles/{id}".into(), json!({"parameters": id_parameter, "get": {"summary": "A directory role", "responses": with_errors(json!({"200": {"description": "The role"}}))}}));
    paths.insert(
        "/v1.0/directoryRoles/{id}/members".into(),
        json!({"parameters": id_parameter, "get": {"summary": "The role's holders", "responses": with_errors(json!({"200": {"description": "Users"}}))}}),
    );
    paths.insert(
        "/v1.0/directoryRoles/{id}/members/$ref".into(),
        json!({"parameters": id_parameter, "post": {"summary": "Assign the role to a user (not by the sync service)", "responses": with_errors(json!({"204": {"description": "Assigned"}}))}}),
    );
    paths.insert(
        "/v1.0/directoryRoles/{id}/members/{member}/$ref".into(),
        json!({"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "member", "in": "path", "required": true, "schema": {"type": "string"}}],
        "delete": {"summary": "Take the role from a user", "responses": with_errors(json!({"204": {"description": "Removed"}}))}}),
    );
    paths.insert(
        "/v1.0/applications".into(),
        json!({"get": {"summary": "App registrations", "responses": with_errors(json!({"200": {"description": "The applications"}}))},
               "post": {"summary": "Register an app: displayName, web/publicClient redirectUris, isFallbackPublicClient, keyCredentials",
                        "responses": with_errors(json!({"201": {"description": "The application (id: object id, appId: client id)"}}))}}),
    );
    paths.insert(
        "/v1.0/applications/{id}".into(),
        json!({"parameters": id_parameter,
               "get": {"summary": "An app registration (by object id or appId)", "responses": with_errors(json!({"200": {"description": "The application"}}))},
               "patch": {"summary": "Change an app registration", "responses": with_errors(json!({"204": {"description": "Changed"}}))},
               "delete": {"summary": "Delete an app with its secrets, certificates and refresh tokens", "responses": with_errors(json!({"204": {"description": "Deleted"}}))}}),
    );
    paths.insert(
        "/v1.0/servicePrincipals".into(),
        json!({"get": {"summary": "Service principals ($filter=appId eq '…'); Microsoft Graph's lists the API's appRoles", "responses": with_errors(json!({"200": {"description": "Service principals"}}))},
               "post": {"summary": "Make an app's service principal ({appId})", "responses": with_errors(json!({"201": {"description": "The service principal"}}))}}),
    );
    paths.insert(
        "/v1.0/servicePrincipals/{id}/appRoleAssignedTo".into(),
        json!({"parameters": id_parameter,
               "get": {"summary": "Application-role grants on Microsoft Graph", "responses": with_errors(json!({"200": {"description": "Grants"}}))},
               "post": {"summary": "Grant an app a role ({principalId, resourceId, appRoleId})", "responses": with_errors(json!({"201": {"description": "The grant"}}))}}),
    );
    for (path, summary, answer) in [
        ("/v1.0/applications/{id}/addPassword", "A new client secret, secretText shown once", "200"),
        ("/v1.0/applications/{id}/removePassword", "End a client secret by its keyId", "204"),
        ("/v1.0/users/{id}/revokeSignInSessions", "Revoke the user's refresh tokens and browser sessions", "200"),
    ] {
        paths.insert(path.into(), json!({"parameters": id_parameter, "post": {"summary": summary, "responses": with_errors(json!({answer: {"description": summary}}))}}));
    }
    for (path, summary) in [
        ("/v1.0/auditLogs/directoryAudits", "Directory writes, newest first"),
        ("/v1.0/auditLogs/signIns", "Sign-ins, newest first"),
        ("/v1.0/organization", "The tenant"),
        ("/v1.0/directory/onPremisesSynchronization", "The tenant's directory-synchronization settings, as a collection of one"),
        ("/v1.0/directoryRoles", "The directory roles"),
    ] {
        paths
            .insert(path.into(), json!({"get": {"summary": summary, "responses": with_errors(json!({"200": {"description": "A page"}}))}}));
    }
    paths.insert(
        "/{tenant}/oauth2/v2.0/token".into(),
        json!({"parameters": [{"name": "tenant", "in": "path", "required": true, "schema": {"type": "string"}}], "post": {"summary": "Tokens: client_credentials, password, refresh_token, authorization_code", "security": [],
               "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {"grant_type": {"type": "string", "enum": ["client_credentials", "password", "refresh_token", "authorization_code"]}}}}}},
               "responses": {"200": {"description": "Tokens"}, "400": {"description": "An AADSTS error"}, "401": {"description": "An AADSTS error"}}}}),
    );
    paths.insert(
        "/{tenant}/oauth2/v2.0/authorize".into(),
        json!({"parameters": [{"name": "tenant", "in": "path", "required": true, "schema": {"type": "string"}}],
               "get": {"summary": "The login page (authorization code with PKCE S256)", "security": [], "responses": {"200": {"description": "An HTML form"}, "400": {"description": "An HTML error page"}}},
               "post": {"summary": "The login form's answer: a redirect with a one-time code", "security": [], "responses": {"302": {"description": "To the registered redirect URI"}, "200": {"description": "The form again, with the error"}}}}),
    );
    paths.insert("/{tenant}/v2.0/.well-known/openid-configuration".into(), json!({"parameters": [{"name": "tenant", "in": "path", "required": true, "schema": {"type": "string"}}], "get": {"summary": "OpenID discovery", "security": [], "responses": {"200": {"description": "The configuration"}}}}));
    paths.insert("/{tenant}/discovery/v2.0/keys".into(), json!({"parameters": [{"name": "tenant", "in": "path", "required": true, "schema": {"type": "string"}}], "get": {"summary": "The JWKS", "security": [], "responses": {"200": {"description": "Keys"}}}}));
    paths.insert("/common/userrealm/{upn}".into(), json!({"parameters": [{"name": "upn", "in": "path", "required": true, "schema": {"type": "string"}}], "get": {"summary": "User-realm discovery", "security": [], "responses": {"200": {"description": "Managed, Federated or Unknown"}}}}));
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Isthmus tenant", "version": "1.0", "description": "A Graph-compatible directory API and Microsoft-identity-platform-compatible sign-in (see docs/tenant.md)."},
        "servers": [{"url": "https://127.0.0.1:8443"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {USERS.schema_name(): schema(&USERS), GROUPS.schema_name(): schema(&GROUPS), CONTACTS.schema_name(): schema(&CONTACTS),
                        "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "innerError": {"type": "object"}}}}}},
            "responses": {"Error": {"description": "An OData error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = serde_json::to_string_pretty(&super::document()).unwrap_or_default() + "\n";
        if std::env::var_os("UPDATE_EXPECT").is_some() {
            std::fs::write(&path, &generated).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(stored == generated, "docs/openapi.json is stale: run `UPDATE_EXPECT=1 cargo test -p tenant openapi`");
    }
}
