//! Generic LDAP import (OpenLDAP and RFC servers): entryUUID anchor, paged full import,
//! RFC 4533 syncrepl (refreshOnly) delta import with a stored cookie.

use std::sync::Arc;

use connector_api::{BoxFuture, ConnectorError, Import, ImportPage};

use crate::session::Session;

/// The generic LDAP import capability.
pub(crate) struct GenericImport {
    pub session: Arc<Session>,
}

impl GenericImport {
    pub fn new(session: Arc<Session>) -> Self {
        GenericImport { session }
    }

    /// Connects and binds, so that configuration mistakes show at once.
    pub async fn check(&self) -> Result<(), ConnectorError> {
        self.session.ldap().await.map(|_| ())
    }
}

impl Import for GenericImport {
    fn full_page<'a>(&'a self, _cursor: Option<&'a [u8]>) -> BoxFuture<'a, Result<ImportPage, ConnectorError>> {
        Box::pin(async { Err(ConnectorError::Config("generic LDAP import is not built yet".into())) })
    }

    fn delta_page<'a>(&'a self, _watermark: &'a [u8], _cursor: Option<&'a [u8]>) -> BoxFuture<'a, Result<ImportPage, ConnectorError>> {
        Box::pin(async { Err(ConnectorError::Config("generic LDAP import is not built yet".into())) })
    }
}
