//! The tenant's domains (`/v1.0/domains`): the initial `<name>.isthmus.local`, always verified;
//! custom domains added unverified and verified by a DNS TXT record (`MS=ms<8 digits>`) looked
//! up through the configured resolver; `authenticationType` Managed or Federated per verified
//! domain. Only verified domains may be used in userPrincipalNames.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::db::{self, Domain};
use crate::odata::GraphError;
use crate::permissions::Area;
use crate::{Access, AppState};

/// Graph's `passwordValidityPeriodInDays` for "never expires".
const NEVER: u32 = 2_147_483_647;

fn view(domain: &Domain) -> Value {
    json!({
        "id": domain.name,
        "authenticationType": domain.authentication,
        "isDefault": domain.initial,
        "isInitial": domain.initial,
        "isRoot": true,
        "isVerified": domain.verified,
        "isAdminManaged": true,
        // Isthmus: how the managed domain's synced users' passwords are checked.
        "passwordValidation": if domain.pass_through { "PassThrough" } else { "PasswordHashSync" },
        "passwordValidityPeriodInDays": domain.password_validity_days.unwrap_or(NEVER),
        "supportedServices": if domain.verified { json!(["Email", "OfficeCommunicationsOnline"]) } else { json!([]) },
    })
}

/// Re-reads the domains into the in-memory list the sign-in and UPN checks use.
pub async fn reload(state: &AppState) -> Result<(), GraphError> {
    let domains = state.db.read(|conn| db::domains(conn)).await?;
    *state.domain_cache.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = domains;
    // A newly verified (or removed) domain changes synced users' effective UPNs.
    state.recheck_conflicts().await;
    Ok(())
}

fn find(state: &AppState, name: &str) -> Result<Domain, GraphError> {
    state.all_domains().into_iter().find(|domain| domain.name.eq_ignore_ascii_case(name)).ok_or_else(|| GraphError::not_found(name))
}

/// Whether `name` is a domain name a tenant can add.
fn valid_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
        && labels.last().is_some_and(|tld| tld.bytes().any(|byte| byte.is_ascii_alphabetic()))
}

/// `GET /v1.0/domains`.
pub async fn list(state: AppState, access: Access, headers: HeaderMap) -> Result<Response, GraphError> {
    access.require(Area::DomainsRead)?;
    let values: Vec<Value> = state.all_domains().iter().map(view).collect();
    Ok(Json(json!({"@odata.context": format!("{}/v1.0/$metadata#domains", crate::graph::base_url(&headers)), "value": values}))
        .into_response())
}

/// `GET /v1.0/domains/{name}`.
pub async fn get(state: AppState, access: Access, name: String) -> Result<Response, GraphError> {
    access.require(Area::DomainsRead)?;
    Ok(Json(view(&find(&state, &name)?)).into_response())
}

/// `POST /v1.0/domains` with `{"id": "contoso.example"}`: added unverified.
pub async fn create(state: AppState, access: Access, body: crate::graph::Body) -> Result<Response, GraphError> {
    access.require(Area::DomainsWrite)?;
    let body = crate::graph::body_object(body)?;
    if let Some(other) = body.keys().find(|key| *key != "id" && *key != "@odata.type") {
        return Err(GraphError::bad_request(format!("Invalid property '{other}'.")));
    }
    let name = body.get("id").and_then(Value::as_str).unwrap_or_default().trim().to_lowercase();
    if !valid_name(&name) {
        return Err(GraphError::bad_request(format!("Invalid domain name {name:?}.")));
    }
    if name.ends_with(".isthmus.local") {
        return Err(GraphError::bad_request("Domains under isthmus.local are reserved for initial domains."));
    }
    let digits: String = crate::crypto::random_bytes(8).iter().map(|byte| char::from(b'0' + byte % 10)).collect();
    let domain = Domain {
        name: name.clone(),
        verified: false,
        authentication: "Managed".into(),
        code: format!("MS=ms{digits}"),
        initial: false,
        pass_through: false,
        password_validity_days: None,
    };
    let stored = domain.clone();
    state.db.call(move |conn| db::insert_domain(conn, &stored)).await?;
    reload(&state).await?;
    state.record("Directory", "add domain".into(), access.caller.clone(), name.clone(), "success").await;
    Ok((StatusCode::CREATED, Json(view(&domain))).into_response())
}

/// `GET /v1.0/domains/{name}/verificationDnsRecords`.
pub async fn verification_records(state: AppState, access: Access, name: String) -> Result<Response, GraphError> {
    access.require(Area::DomainsRead)?;
    let domain = find(&state, &name)?;
    let record = json!({"@odata.type": "#microsoft.graph.domainDnsTxtRecord", "id": format!("txt-{}", domain.name), "isOptional": false,
                        "label": domain.name, "recordType": "Txt", "supportedService": "Email", "ttl": 3600, "text": domain.code});
    Ok(Json(json!({"value": [record]})).into_response())
}

/// `POST /v1.0/domains/{name}/verify`: looks for the TXT record through the configured resolver.
pub async fn verify(state: AppState, access: Access, name: String) -> Result<Response, GraphError> {
    access.require(Area::DomainsWrite)?;
    let mut domain = find(&state, &name)?;
    if !domain.verified && state.lab_verified_domains.contains(&domain.name) {
        // The operator's explicit lab override (`tenant serve --lab-verify-domain`).
        tracing::warn!(domain = domain.name, "domain verified by the lab override, without a DNS lookup");
        domain.verified = true;
        let stored = domain.clone();
        state.db.call(move |conn| db::update_domain(conn, &stored)).await?;
        reload(&state).await?;
        state
            .record(
                "Directory",
                "verify domain (lab override: no DNS lookup)".into(),
                access.caller.clone(),
                domain.name.clone(),
                "success",
            )
            .await;
    }
    if !domain.verified {
        let Some(resolver) = state.dns_resolver else {
            return Err(GraphError::bad_request("No DNS resolver is configured for domain verification (--dns-resolver)."));
        };
        let records = crate::dns::txt_records(resolver, &domain.name, std::time::Duration::from_secs(5))
            .await
            .map_err(|err| GraphError::bad_request(format!("Domain verification failed: {err}.")))?;
        if !records.iter().any(|record| record.trim() == domain.code) {
            state.record("Directory", "verify domain".into(), access.caller.clone(), domain.name.clone(), "record missing").await;
            return Err(GraphError::bad_request(format!(
                "Domain verification failed: the TXT record {} was not found at {} (found {} TXT record(s)).",
                domain.code,
                domain.name,
                records.len()
            )));
        }
        domain.verified = true;
        let stored = domain.clone();
        state.db.call(move |conn| db::update_domain(conn, &stored)).await?;
        reload(&state).await?;
        state.record("Directory", "verify domain".into(), access.caller.clone(), domain.name.clone(), "success").await;
    }
    Ok(Json(view(&domain)).into_response())
}

/// `PATCH /v1.0/domains/{name}` with `{"authenticationType": "Managed" | "Federated"}` and (an
/// Isthmus property) `{"passwordValidation": "PassThrough" | "PasswordHashSync"}`: whether the
/// domain's synced users are checked by pass-through agents, or against synced hashes (the
/// switch back is Entra's manual fallback).
pub async fn update(state: AppState, access: Access, name: String, body: crate::graph::Body) -> Result<Response, GraphError> {
    access.require(Area::DomainsWrite)?;
    let body = crate::graph::body_object(body)?;
    let mut domain = find(&state, &name)?;
    for (key, value) in &body {
        match (key.as_str(), value.as_str()) {
            ("authenticationType", Some(kind @ ("Managed" | "Federated"))) => {
                if kind == "Federated" && (!domain.verified || domain.initial) {
                    return Err(GraphError::bad_request("Only a verified custom domain can be federated."));
                }
                domain.authentication = kind.to_string();
            }
            ("authenticationType", _) => return Err(GraphError::bad_request("authenticationType must be Managed or Federated.")),
            ("passwordValidation", Some(method @ ("PassThrough" | "PasswordHashSync"))) => {
                if method == "PassThrough" && !domain.verified {
                    return Err(GraphError::bad_request("Only a verified domain can use pass-through authentication."));
                }
                domain.pass_through = method == "PassThrough";
            }
            ("passwordValidation", _) => {
                return Err(GraphError::bad_request("passwordValidation must be PassThrough or PasswordHashSync."));
            }
            ("passwordValidityPeriodInDays", _) => match value.as_u64() {
                Some(days) if days == u64::from(NEVER) => domain.password_validity_days = None,
                Some(days @ 1..=730) => domain.password_validity_days = u32::try_from(days).ok(),
                _ => {
                    return Err(GraphError::bad_request(format!(
                        "passwordValidityPeriodInDays must be 1 to 730 days, or {NEVER} (never expires)."
                    )));
                }
            },
            (other, _) => {
                return Err(GraphError::bad_request(format!(
                    "Invalid property '{other}' (only authenticationType, passwordValidation and passwordValidityPeriodInDays can change)."
                )));
            }
        }
    }
    let stored = domain.clone();
    state
        .db
        .call(move |conn| {
            db::update_domain(conn, &stored)?;
            db::set_domain_settings(conn, &stored.name, stored.pass_through, stored.password_validity_days)
        })
        .await?;
    reload(&state).await?;
    state
        .record(
            "Directory",
            format!(
                "set domain authentication {}, password validation {}",
                domain.authentication,
                if domain.pass_through { "PassThrough" } else { "PasswordHashSync" }
            ),
            access.caller.clone(),
            domain.name.clone(),
            "success",
        )
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /v1.0/domains/{name}`.
pub async fn delete(state: AppState, access: Access, name: String) -> Result<Response, GraphError> {
    access.require(Area::DomainsWrite)?;
    let domain = find(&state, &name)?;
    if domain.initial {
        return Err(GraphError::bad_request("The initial domain cannot be removed."));
    }
    let target = domain.name.clone();
    state.db.call(move |conn| db::delete_domain(conn, &target)).await?;
    reload(&state).await?;
    state.record("Directory", "remove domain".into(), access.caller.clone(), domain.name.clone(), "success").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names() {
        for good in ["contoso.example", "mail.contoso.co.uk", "x-1.example"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["contoso", "-a.example", "a..example", "a b.example", "contoso.123", ""] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
