//! Microsoft's own, unmodified Python client libraries against the tenant: `msal`
//! (client credentials; ROPC for a cloud-only user, then a silent refresh) and `msgraph-sdk`
//! through `azure-identity` (create users, list them with paging, create a group and add a
//! member, read a users delta and then what changed after it, an OData error). Set up as `ms-client-contract.md` says: instance discovery
//! off, the tenant's CA trusted explicitly, Graph's base URL pointed at the tenant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use tenant::{Tenant, TenantConfig};

const SCRIPT: &str = r#"
import asyncio, json, ssl, sys
import httpx, msal, requests
from azure.identity import ClientSecretCredential
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph import GraphServiceClient, GraphRequestAdapter
from msgraph.graph_request_adapter import options as graph_options
from msgraph_core import GraphClientFactory
from msgraph.generated.models.user import User
from msgraph.generated.models.group import Group
from msgraph.generated.models.reference_create import ReferenceCreate
from msgraph.generated.models.password_profile import PasswordProfile
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from kiota_abstractions.base_request_configuration import RequestConfiguration

base, domain, client_id, secret, ca, base443, public_id = sys.argv[1:8]
scope = "https://graph.microsoft.com/.default"
out = {}

# MSAL, client credentials; a session of our own so REQUESTS_CA_BUNDLE cannot override the CA.
session = requests.Session()
session.verify = ca
session.trust_env = False
app = msal.ConfidentialClientApplication(client_id, client_credential=secret, authority=f"{base}/{domain}",
                                         instance_discovery=False, http_client=session)
result = app.acquire_token_for_client(scopes=[scope])
out["msal_token"] = "access_token" in result
out["msal_error"] = result.get("error")
bad = msal.ConfidentialClientApplication(client_id, client_credential="wrong", authority=f"{base}/{domain}",
                                         instance_discovery=False, http_client=session)
out["msal_bad_secret"] = bad.acquire_token_for_client(scopes=[scope]).get("error")

async def graph():
    credential = ClientSecretCredential(domain, client_id, secret, authority=base, disable_instance_discovery=True, connection_verify=ca)
    auth = AzureIdentityAuthenticationProvider(credential, scopes=[scope])
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca), timeout=30), options=graph_options)
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = f"{base}/v1.0"
    client = GraphServiceClient(request_adapter=adapter)
    for n in range(3):
        user = User(account_enabled=True, display_name=f"Py {n}", mail_nickname=f"py{n}", user_principal_name=f"py{n}@{domain}",
                    password_profile=PasswordProfile(password="Str0ng!Pass", force_change_password_next_sign_in=False))
        created = await client.users.post(user)
        out.setdefault("created", []).append(created.user_principal_name)
    config = RequestConfiguration(query_parameters=UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
        top=2, select=["id", "displayName", "userPrincipalName"]))
    page = await client.users.get(request_configuration=config)
    users = list(page.value)
    pages = 1
    while page.odata_next_link:
        page = await client.users.with_url(page.odata_next_link).get()
        users += page.value
        pages += 1
    out["listed"] = sorted(u.user_principal_name for u in users)
    out["pages"] = pages
    group = await client.groups.post(Group(display_name="Py group", mail_enabled=False, mail_nickname="pygroup", security_enabled=True))
    member = next(u for u in users if u.user_principal_name == f"py1@{domain}")
    await client.groups.by_group_id(group.id).members.ref.post(ReferenceCreate(odata_id=f"{base}/v1.0/directoryObjects/{member.id}"))
    members = await client.groups.by_group_id(group.id).members.get()
    out["members"] = [m.id for m in members.value]
    out["member_expected"] = member.id
    # A users delta: every user, then (after a change) only the changed one.
    delta = await client.users.delta.get()
    seen = list(delta.value)
    while delta.odata_next_link:
        delta = await client.users.delta.with_url(delta.odata_next_link).get()
        seen += delta.value
    out["delta_first"] = sorted(u.user_principal_name for u in seen)
    await client.users.by_user_id(member.id).patch(User(job_title="Changed by msgraph-sdk"))
    delta = await client.users.delta.with_url(delta.odata_delta_link).get()
    out["delta_next"] = [[u.user_principal_name, u.job_title] for u in delta.value]
    out["delta_link_again"] = delta.odata_delta_link is not None
    try:
        await client.users.by_user_id("no-such-user").get()
    except ODataError as error:
        out["not_found"] = [error.response_status_code, error.error.code]

asyncio.run(graph())

# ROPC for a cloud-only user. MSAL asks for user-realm discovery on port 443 whatever the
# authority's port (MSAL-Python issue 259): a session that puts the port back, as the contract says.
class PortPinning(requests.Session):
    def request(self, method, url, *args, **kwargs):
        return super().request(method, url.replace("https://127.0.0.1/", base + "/"), *args, **kwargs)

pinned = PortPinning()
pinned.verify = ca
pinned.trust_env = False
public = msal.PublicClientApplication(public_id, authority=f"{base}/{domain}", instance_discovery=False, http_client=pinned)
signed_in = public.acquire_token_by_username_password(f"py0@{domain}", "Str0ng!Pass", scopes=["User.Read"])
out["ropc"] = "access_token" in signed_in
out["ropc_user"] = signed_in.get("id_token_claims", {}).get("preferred_username")
accounts = public.get_accounts()
out["accounts"] = [account["username"] for account in accounts]
silent = public.acquire_token_silent(["User.Read"], account=accounts[0], force_refresh=True) if accounts else None
out["silent_refresh"] = bool(silent and "access_token" in silent)
wrong = public.acquire_token_by_username_password(f"py1@{domain}", "Wrong!Pass1", scopes=["User.Read"])
out["ropc_wrong"] = wrong.get("error")

# A tenant that also listens on 443 needs no workaround: a plain session, an authority without a port.
plain = requests.Session()
plain.verify = ca
plain.trust_env = False
on443 = msal.PublicClientApplication(public_id, authority=f"{base443}/{domain}", instance_discovery=False, http_client=plain)
signed_in = on443.acquire_token_by_username_password(f"py2@{domain}", "Str0ng!Pass", scopes=["User.Read"])
out["ropc_443"] = signed_in.get("id_token_claims", {}).get("preferred_username") or signed_in.get("error_description")
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msal_and_msgraph_sdk_work_unmodified() {
    let Some(python) = testkit::available(testkit::python_clients()) else { return };
    // A loopback address of its own, so the tenant can also listen on 443 (MSAL's user-realm
    // discovery drops the authority's port).
    let Some(address) = testkit::available(testkit::LoopbackAddr::reserve()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let on443 = std::net::SocketAddr::from((address.ip(), 443));
    let mut config = TenantConfig::new(dir.path().join("state"), vec!["127.0.0.1:0".parse().unwrap(), on443]);
    config.hosts = vec![address.ip().to_string()];
    config.password_iterations = 1_000;
    let (tenant, bootstrap) = Tenant::open(config).await.unwrap();
    let admin = bootstrap.unwrap();
    // ROPC and the silent refresh run as a public client (no secret), as MSAL's PublicClientApplication is.
    let public = tenant.register_public_app("python public client").await.unwrap();
    let (domain, ca) = (tenant.initial_domain().to_string(), tenant.ca_pem.clone());
    let running = tenant.spawn().await.unwrap();
    let (stop, base) = (running.stop, running.base);
    let script = dir.path().join("clients.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let base443 = format!("https://{}", address.ip());
    let args: Vec<String> =
        [script.to_str().unwrap(), &base, &domain, &admin.client_id, &admin.client_secret, ca.to_str().unwrap(), &base443, &public]
            .map(str::to_string)
            .to_vec();
    let output = tokio::task::spawn_blocking(move || Command::new(python).args(args).output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the Python clients failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(result["msal_token"], true, "{result}");
    assert_eq!(result["msal_bad_secret"], "invalid_client", "{result}");
    assert_eq!(result["created"].as_array().unwrap().len(), 3, "{result}");
    let expected: Vec<String> = (0..3).map(|n| format!("py{n}@{domain}")).collect();
    assert_eq!(result["listed"], serde_json::json!(expected), "{result}");
    assert_eq!(result["pages"], 2, "three users in pages of two, through @odata.nextLink");
    assert_eq!(result["not_found"], serde_json::json!([404, "Request_ResourceNotFound"]));
    assert_eq!(result["members"], serde_json::json!([result["member_expected"]]), "the member added through members/$ref: {result}");
    assert_eq!(result["delta_first"], serde_json::json!(expected), "the first delta round has every user: {result}");
    assert_eq!(
        result["delta_next"],
        serde_json::json!([[format!("py1@{domain}"), "Changed by msgraph-sdk"]]),
        "the next round has only the changed user: {result}"
    );
    assert_eq!(result["delta_link_again"], true);
    assert_eq!(result["ropc"], true, "{result}");
    assert_eq!(result["ropc_user"], format!("py0@{domain}"));
    assert_eq!(result["accounts"], serde_json::json!([format!("py0@{domain}")]), "MSAL made an account from id_token and client_info");
    assert_eq!(result["silent_refresh"], true, "the refresh token works through MSAL's cache");
    assert_eq!(result["ropc_wrong"], "invalid_grant");
    assert_eq!(result["ropc_443"], format!("py2@{domain}"), "ROPC without a workaround against a tenant on 443: {result}");
    drop(stop);
}
