//! Writing to the directory: add (returning the new object's anchor), modify with attribute
//! deltas, delete, rename/move. A refusal of one object is [`ConnectorError::Rejected`] with a
//! stable code; a broken connection is `Unavailable`.

use std::collections::HashSet;
use std::sync::Arc;

use connector_api::{BoxFuture, ConnectorError, Export, ExportOutcome, ExportRequest, Unapplied, UnappliedReason};
use ldap3::{LdapResult, Mod};
use model::{Anchor, AttrChange, Dn, PendingExport};

use crate::config::Flavour;
use crate::schema::wire;
use crate::session::{Session, raw_values};

/// The export capability (both flavours).
pub(crate) struct LdapExport {
    pub session: Arc<Session>,
}

impl LdapExport {
    fn anchor_attribute(&self) -> &'static str {
        match self.session.config.flavour {
            Flavour::ActiveDirectory => "objectGUID",
            Flavour::Generic => "entryUUID",
        }
    }

    async fn check(&self, operation: String, outcome: ldap3::result::Result<LdapResult>) -> Result<(), ConnectorError> {
        self.session.check(&operation, outcome).await
    }

    async fn run(&self, request: &ExportRequest) -> Result<ExportOutcome, ConnectorError> {
        let timeout = self.session.timeout();
        match &request.change {
            PendingExport::Add(changes) => {
                let mut attributes: Vec<(Vec<u8>, HashSet<Vec<u8>>)> =
                    vec![(b"objectClass".to_vec(), [request.object_type.clone().into_bytes()].into())];
                for change in changes {
                    match change {
                        AttrChange::Replace(name, values) | AttrChange::Add(name, values) if !values.is_empty() => {
                            if name.eq_ignore_ascii_case("objectClass") {
                                attributes[0].1.extend(values.iter().map(wire));
                            } else {
                                attributes.push((name.clone().into_bytes(), values.iter().map(wire).collect()));
                            }
                        }
                        _ => {}
                    }
                }
                // The naming attribute must hold the RDN's value; AD adds it by itself, RFC servers refuse the entry.
                let dn = Dn::parse(&request.dn)
                    .map_err(|err| ConnectorError::Rejected { code: "bad-dn".into(), message: format!("{}: {err}", request.dn) })?;
                if let Some(rdn) = dn.rdns().first() {
                    for (kind, value) in &rdn.pairs {
                        match attributes.iter_mut().find(|(name, _)| name.eq_ignore_ascii_case(kind.as_bytes())) {
                            Some((_, values)) => {
                                values.insert(value.clone().into_bytes());
                            }
                            None => attributes.push((kind.clone().into_bytes(), [value.clone().into_bytes()].into())),
                        }
                    }
                }
                let mut ldap = self.session.ldap().await?;
                let outcome = ldap.with_timeout(timeout).add(&request.dn, attributes).await;
                self.check(format!("add {}", request.dn), outcome).await?;
                let anchor = self.read_anchor(&request.dn).await?;
                Ok(ExportOutcome::created(anchor))
            }
            PendingExport::Update(changes) => {
                self.modify(&request.dn, changes).await?;
                Ok(ExportOutcome::done())
            }
            PendingExport::Delete => {
                let mut ldap = self.session.ldap().await?;
                let outcome = ldap.with_timeout(timeout).delete(&request.dn).await;
                match self.check(format!("delete {}", request.dn), outcome).await {
                    // Already gone is what we wanted.
                    Err(ConnectorError::Rejected { code, .. }) if code == "no-such-object" => Ok(ExportOutcome::done()),
                    other => other.map(|()| ExportOutcome::done()),
                }
            }
            PendingExport::Rename { new_dn, changes } => {
                let parsed = Dn::parse(new_dn)
                    .map_err(|err| ConnectorError::Rejected { code: "bad-dn".into(), message: format!("{new_dn}: {err}") })?;
                let (Some(first), Some(parent)) = (parsed.rdns().first(), parsed.parent()) else {
                    return Err(ConnectorError::Rejected { code: "bad-dn".into(), message: format!("{new_dn} has no parent") });
                };
                let rdn: Vec<String> =
                    first.pairs.iter().map(|(kind, value)| format!("{kind}={}", model::dn::escape_value(value))).collect();
                let rdn = rdn.join("+");
                let old_parent = Dn::parse(&request.dn).ok().and_then(|old| old.parent());
                let new_parent = parent.to_string();
                let superior = (old_parent.as_ref() != Some(&parent)).then_some(new_parent.as_str());
                let mut ldap = self.session.ldap().await?;
                let outcome = ldap.with_timeout(timeout).modifydn(&request.dn, &rdn, true, superior).await;
                self.check(format!("rename {} to {new_dn}", request.dn), outcome).await?;
                // Renamed: from here on a failure leaves the object at its new name with the
                // attribute changes not applied, which the outcome says exactly.
                match self.modify(new_dn, changes).await {
                    Ok(()) => Ok(ExportOutcome::done()),
                    Err(err) => Ok(ExportOutcome {
                        anchor: None,
                        left: Some(Unapplied { changes: changes.clone(), reason: UnappliedReason::Failed(err) }),
                    }),
                }
            }
        }
    }

    async fn modify(&self, dn: &str, changes: &[AttrChange]) -> Result<(), ConnectorError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mods: Vec<Mod<Vec<u8>>> = changes
            .iter()
            .map(|change| match change {
                AttrChange::Replace(name, values) => Mod::Replace(name.clone().into_bytes(), values.iter().map(wire).collect()),
                AttrChange::Add(name, values) => Mod::Add(name.clone().into_bytes(), values.iter().map(wire).collect()),
                AttrChange::Delete(name, values) => Mod::Delete(name.clone().into_bytes(), values.iter().map(wire).collect()),
                AttrChange::Clear(name) => Mod::Replace(name.clone().into_bytes(), HashSet::new()),
            })
            .collect();
        let mut ldap = self.session.ldap().await?;
        let outcome = ldap.with_timeout(self.session.timeout()).modify(dn, mods).await;
        self.check(format!("modify {dn}"), outcome).await
    }

    async fn read_anchor(&self, dn: &str) -> Result<Anchor, ConnectorError> {
        let attribute = self.anchor_attribute();
        let entry = self.session.read(dn, "(objectClass=*)", &[attribute.to_string()]).await?;
        let value = entry.as_ref().and_then(|entry| raw_values(entry, attribute).first().map(|value| value.to_vec()));
        // entryUUID is text on the wire; anchors hold its 16 bytes, as content synchronization sends them.
        let value = match self.session.config.flavour {
            Flavour::ActiveDirectory => value,
            Flavour::Generic => value.and_then(|text| crate::generic::uuid_bytes(&text)),
        };
        value.map(Anchor).ok_or_else(|| ConnectorError::Unavailable(format!("{dn} was added but its {attribute} cannot be read")))
    }
}

impl Export for LdapExport {
    fn export<'a>(&'a self, request: &'a ExportRequest) -> BoxFuture<'a, Result<ExportOutcome, ConnectorError>> {
        Box::pin(self.run(request))
    }
}
