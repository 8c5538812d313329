//! The LDAP connectors: Active Directory (Windows AD, Samba AD DC) and generic LDAP servers
//! (OpenLDAP and other RFC servers), built on `ldap3`.
//!
//! [`open`] checks the settings, connects (LDAPS or StartTLS, verifying the server against the
//! configured CA), binds, reads what it needs of the directory (naming contexts, schema,
//! domain names for rule parameters) and returns a [`Connector`] with import and export.
//!
//! - Active Directory ([`Flavour::ActiveDirectory`]): objectGUID anchor, paged full import with
//!   range retrieval of large multi-valued attributes, DirSync delta import (see `ad`).
//! - Generic LDAP ([`Flavour::Generic`]): entryUUID anchor, paged full import, RFC 4533
//!   syncrepl (refreshOnly) delta import (see `generic`).
//!
//! Knows no store and no engine: it turns directory entries into [`model::ImportChange`]s and
//! export requests into LDAP operations.

mod ad;
mod ber;
pub mod config;
mod export;
mod generic;
mod hashes;
pub mod password_check;
mod probe;
pub mod replication;
pub mod schema;
mod session;

use std::collections::BTreeMap;
use std::sync::Arc;

use connector_api::{Connector, ConnectorError, ConnectorInfo, Role};
use model::ConnectorId;

pub use config::{Bind, ConnectorRole, DeltaMode, Flavour, LdapConfig, Transport};
pub use hashes::{HashRecord, read_nt_hashes};
pub use password_check::PasswordChecker;
pub use probe::{AnchorProbe, UpnSuffixes, probe_anchor, upn_suffixes};
pub use replication::{ReplicationAccount, replication_account};

/// Checks the settings, connects, binds and reads the directory's shape; the connector is ready.
pub async fn open(config: LdapConfig) -> Result<Connector, ConnectorError> {
    let session = Arc::new(session::Session::new(config)?);
    let id = ConnectorId(session.config.id.clone());
    let flavour = session.config.flavour;
    let role = match session.config.role {
        ConnectorRole::Source => Role::Source,
        ConnectorRole::Target => Role::Target,
    };
    let (import, parameters): (Box<dyn connector_api::Import>, _) = match flavour {
        Flavour::ActiveDirectory => {
            let import = ad::AdImport::new(session.clone());
            let parameters = import.parameters().await?;
            (Box::new(import), parameters)
        }
        Flavour::Generic => {
            let import = generic::GenericImport::new(session.clone());
            import.check().await?;
            (Box::new(import), Vec::new())
        }
    };
    let mut parameters: BTreeMap<String, sync_expr::Value> =
        parameters.into_iter().map(|(name, value): (String, String)| (name, sync_expr::Value::str(value))).collect();
    parameters.insert("Connector.ID".into(), sync_expr::Value::str(id.0.clone()));
    let kind = match flavour {
        Flavour::ActiveDirectory => "active-directory",
        Flavour::Generic => "ldap",
    };
    Ok(Connector {
        info: ConnectorInfo { id, kind: kind.into(), role, parameters },
        import,
        export: Some(Box::new(export::LdapExport { session })),
    })
}
