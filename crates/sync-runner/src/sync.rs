//! Sync steps: inbound for the connector's CS objects (join, projection, disconnection,
//! deletes), then for every MV object they touched: lifetime, inbound attribute flow, and
//! outbound provisioning/export to every connector with outbound rules. Decisions come from
//! `sync-engine`; this module fetches what it needs and stores what it decides.

use std::collections::{BTreeMap, BTreeSet};

use model::{AttrChange, AttrValue, Attributes, ConnectorId, CsId, CsObject, MvId, ObjectError, PendingExport, PendingImport};
use store::{CsQuery, Matching, NewCsObject, RunCounts, Store};
use sync_engine::inbound::{self, Candidate, InboundInput, JoinDecision, JoinPlan};
use sync_engine::outbound::{self, OutboundDecision, OutboundInput};
use sync_expr::Value;
use sync_rules::Direction;

use crate::{Runner, RunnerError};

const PAGE: usize = 1000;

struct Context<'r, S: Store> {
    runner: &'r Runner<S>,
    parameters: BTreeMap<ConnectorId, BTreeMap<String, Value>>,
    memberships: crate::Memberships,
    now: sync_expr::time::DateTime,
    counts: RunCounts,
    random_state: u64,
    /// CS objects whose delete this page is processing: left out of their MV object's
    /// computation, removed from the store only after the page's metaverse work.
    deleting: BTreeSet<CsId>,
    /// MV objects this page's inbound work flowed (after a join or projection) with every
    /// reference resolved: their metaverse work does not compute the same flow again, unless
    /// `links_removed`. (Later objects of the page can only add links; a link added turns an
    /// unresolved reference into a resolved one, which such a flow did not have.)
    flowed: BTreeSet<MvId>,
    /// A link went away in this page (an MV object deleted, an object deprovisioned): a
    /// reference resolved earlier may not resolve now, so every flow is computed again.
    links_removed: bool,
}

pub(crate) async fn run<S: Store>(
    runner: &Runner<S>,
    id: &ConnectorId,
    full: bool,
) -> Result<(crate::StepStatus, RunCounts, String), RunnerError> {
    runner.connector(id)?;
    let mut parameters = BTreeMap::new();
    for (connector_id, connector) in &runner.connectors {
        let mut values = connector.info.parameters.clone();
        values.entry("Connector.ID".into()).or_insert_with(|| Value::str(connector_id.0.clone()));
        parameters.insert(connector_id.clone(), values);
    }
    let now = sync_expr::time::DateTime::from_unix_seconds(runner.clock.unix_seconds()).unwrap_or(sync_expr::time::DateTime::MIN);
    let mut context = Context {
        runner,
        parameters,
        memberships: crate::Memberships::default(),
        now,
        counts: RunCounts::default(),
        random_state: runner.clock.unix_seconds() as u64 | 1,
        deleting: BTreeSet::new(),
        flowed: BTreeSet::new(),
        links_removed: false,
    };
    context.memberships = crate::Memberships::load(&runner.store, &runner.rules).await?;

    // Page by page: inbound for the page's CS objects, then every MV object they touched
    // (flow, lifetime, outbound), and only then are their pending imports marked processed.
    // A crash in between leaves them pending, so the next run does the page again (idempotent).
    let mut after = None;
    let mut processed = 0u64;
    let mut touched = 0usize;
    loop {
        let query = CsQuery { pending_import: !full, after, limit: PAGE, ..CsQuery::default() };
        let page = runner.store.cs_list(id, &query).await?;
        after = page.last().map(|cs| cs.id);
        let done = page.len() < PAGE;
        let page_len = page.len() as u64;
        // The page is one unit of work: its inbound and metaverse work, the cleared pending
        // imports and the deletes commit together (a crash leaves the page pending, redone).
        runner.store.begin_unit().await?;
        let result = sync_page(&mut context, page).await;
        let (page_processed, page_touched) = match result {
            Ok(done) => {
                runner.store.commit_unit().await?;
                done
            }
            Err(err) => {
                if let Err(rollback) = runner.store.rollback_unit().await {
                    tracing::warn!(connector = %id, "rolling back the page after an error failed too: {rollback}");
                }
                return Err(err);
            }
        };
        processed += page_processed;
        touched += page_touched;
        runner.progress.advanced(page_len);
        tracing::info!(connector = %id, processed, metaverse = touched, "sync progress");
        if done {
            break;
        }
    }
    let counts = context.counts;
    Ok((crate::status_of(counts), counts, format!("{processed} connector-space objects, {touched} metaverse objects")))
}

/// One page of a sync step: inbound for its CS objects, then every MV object they touched
/// (flow, lifetime, outbound), then their pending imports marked processed and the deleted
/// ones removed. Returns (objects processed, MV objects touched).
async fn sync_page<S: Store>(context: &mut Context<'_, S>, page: Vec<CsObject>) -> Result<(u64, usize), RunnerError> {
    let store = &context.runner.store;
    context.flowed.clear();
    context.links_removed = false;
    let mut affected: BTreeSet<MvId> = BTreeSet::new();
    let mut projected: BTreeSet<MvId> = BTreeSet::new();
    let mut kept = Vec::new();
    let mut processed = 0;
    for cs in page {
        let cs_id = cs.id;
        let had_pending = cs.pending_import.is_some();
        if context.inbound(cs, &mut affected, &mut projected).await? && had_pending {
            kept.push(cs_id);
        }
        processed += 1;
    }
    let touched = affected.len();
    // Gather: the page's MV objects and everything joined to them, in two set-based reads.
    // Deciding for one MV object writes only it and its own joined objects, so each
    // snapshot stays true until its turn.
    let ids: Vec<MvId> = affected.iter().copied().collect();
    let mut objects: BTreeMap<MvId, model::MvObject> = store.mv_get_many(&ids).await?.into_iter().map(|mv| (mv.id, mv)).collect();
    let mut linked: BTreeMap<MvId, Vec<CsObject>> = BTreeMap::new();
    for cs in store.cs_linked_to_many(&ids).await? {
        if let Some(mv) = cs.link {
            linked.entry(mv).or_default().push(cs);
        }
    }
    for mv in affected {
        let Some(object) = objects.remove(&mv) else { continue };
        let joined = linked.remove(&mv).unwrap_or_default();
        context.metaverse_with(object, joined, projected.contains(&mv)).await?;
    }
    store.cs_clear_pending_import(&kept).await?;
    for deleted in std::mem::take(&mut context.deleting) {
        store.cs_delete(deleted).await?;
    }
    Ok((processed, touched))
}

fn matching(case_sensitive: bool) -> Matching {
    if case_sensitive { Matching::Exact } else { Matching::IgnoreCase }
}

fn intersect(sets: Vec<Vec<i64>>) -> Vec<i64> {
    let mut sets = sets.into_iter();
    let Some(first) = sets.next() else { return Vec::new() };
    let mut result: BTreeSet<i64> = first.into_iter().collect();
    for set in sets {
        let other: BTreeSet<i64> = set.into_iter().collect();
        result = result.intersection(&other).copied().collect();
    }
    result.into_iter().collect()
}

impl<S: Store> Context<'_, S> {
    fn member_of(&self) -> impl Fn(&CsObject, &str) -> bool + '_ {
        move |cs: &CsObject, group: &str| self.memberships.member_of(cs, group)
    }

    fn set_error(&mut self, cs: &mut CsObject, error: ObjectError) {
        tracing::warn!(cs = %cs.id, dn = cs.dn, code = error.code, "{}", error.message);
        cs.error = Some(error);
        self.counts.errors += 1;
    }

    /// Inbound for one CS object; returns false when it was deleted.
    async fn inbound(
        &mut self,
        mut cs: CsObject,
        affected: &mut BTreeSet<MvId>,
        projected: &mut BTreeSet<MvId>,
    ) -> Result<bool, RunnerError> {
        let store = &self.runner.store;
        if cs.pending_import == Some(PendingImport::Delete) {
            // Removed after the page's metaverse work; a crash before that redoes the page.
            if let Some(mv) = cs.link {
                affected.insert(mv);
            }
            self.deleting.insert(cs.id);
            self.counts.deletes += 1;
            return Ok(false);
        }
        // What a sync may change; an object whose link and error stay as they were is not
        // written again (a full sync of a settled connector space writes nothing here).
        let before = (cs.link, cs.error.clone());
        if cs.error.as_ref().is_some_and(|error| error.stage == model::ErrorStage::Sync) {
            cs.error = None;
        }
        if cs.pending_import == Some(PendingImport::DeleteAdd)
            && let Some(mv) = cs.link.take()
        {
            affected.insert(mv);
        }
        match cs.link {
            Some(mv) => {
                let keeps = inbound::keeps_link(&self.runner.rules, &cs, &self.member_of());
                affected.insert(mv);
                if !keeps {
                    cs.link = None;
                    self.counts.updates += 1;
                }
            }
            None => {
                let plan = inbound::plan_join(&self.runner.rules, &cs, &self.member_of());
                let candidates = self.candidates(&plan, &cs).await?;
                match inbound::decide_join(&plan, &candidates) {
                    JoinDecision::Join(mv) => {
                        cs.link = Some(mv);
                        store.cs_update_state(&cs).await?;
                        affected.insert(mv);
                        self.counts.updates += 1;
                        // Flow now, so objects later in this run can join on the values.
                        self.flow_inbound_now(mv, false).await?;
                        return Ok(true);
                    }
                    JoinDecision::Project(mv_type) => {
                        let mv = store.mv_insert(&mv_type).await?;
                        cs.link = Some(mv);
                        store.cs_update_state(&cs).await?;
                        affected.insert(mv);
                        projected.insert(mv);
                        self.counts.adds += 1;
                        // Just created: empty, and this object is the only one joined to it.
                        let object = model::MvObject { id: mv, object_type: mv_type, attributes: BTreeMap::new() };
                        if self.flow_inbound_for(object, vec![cs], true).await?.2 {
                            self.flowed.insert(mv);
                        }
                        return Ok(true);
                    }
                    JoinDecision::Disconnector => {}
                    JoinDecision::Error(error) => self.set_error(&mut cs, error),
                }
            }
        }
        if (cs.link, cs.error.clone()) != before {
            store.cs_update_state(&cs).await?;
        }
        Ok(true)
    }

    async fn candidates(&self, plan: &JoinPlan, cs: &CsObject) -> Result<Vec<Vec<Candidate>>, RunnerError> {
        let JoinPlan::Lookup { groups, .. } = plan else { return Ok(Vec::new()) };
        let store = &self.runner.store;
        let mut all = Vec::new();
        for group in groups {
            let Some(query) = group else {
                all.push(Vec::new());
                continue;
            };
            let mut per_clause = Vec::new();
            for (attribute, values, case_sensitive) in &query.clauses {
                let found = store.mv_find(&query.mv_type, attribute, values, matching(*case_sensitive)).await?;
                per_clause.push(found.into_iter().map(|id| id.0).collect());
            }
            let mut candidates = Vec::new();
            for mv in intersect(per_clause) {
                let taken = store.cs_linked_to(MvId(mv)).await?.iter().any(|other| other.connector == cs.connector && other.id != cs.id);
                candidates.push(Candidate { mv: MvId(mv), taken_by_same_connector: taken });
            }
            all.push(candidates);
        }
        Ok(all)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: enough for Guid()/RandomNum() in flows; seeded per run.
        self.random_state ^= self.random_state >> 12;
        self.random_state ^= self.random_state << 25;
        self.random_state ^= self.random_state >> 27;
        self.random_state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The metaverse work for one MV object read from the store (a preview's one object).
    async fn metaverse(&mut self, mv_id: MvId, is_new: bool) -> Result<(), RunnerError> {
        let store = &self.runner.store;
        let Some(mv) = store.mv_get(mv_id).await? else { return Ok(()) };
        let joined = store.cs_linked_to(mv_id).await?;
        self.metaverse_with(mv, joined, is_new).await
    }

    /// The metaverse work for one MV object given with every CS object joined to it: lifetime,
    /// inbound flow, outbound to every target.
    async fn metaverse_with(&mut self, mv: model::MvObject, mut joined: Vec<CsObject>, is_new: bool) -> Result<(), RunnerError> {
        let store = &self.runner.store;
        let mv_id = mv.id;
        joined.retain(|cs| !self.deleting.contains(&cs.id));
        let survives = {
            let refs: Vec<&CsObject> = joined.iter().collect();
            !refs.is_empty() && inbound::mv_survives(&self.runner.rules, &refs, &self.member_of())
        };
        if !survives {
            for mut cs in joined {
                let provisioned_here = self.has_outbound_rules(&cs.connector, &mv.object_type);
                cs.link = None;
                if provisioned_here {
                    if cs.anchor.is_none() {
                        store.cs_delete(cs.id).await?;
                        continue;
                    }
                    cs.pending_export = Some(PendingExport::Delete);
                }
                store.cs_update_state(&cs).await?;
            }
            store.mv_delete(mv_id).await?;
            self.links_removed = true;
            self.counts.deletes += 1;
            return Ok(());
        }

        // Inbound attribute flow, unless this page's inbound work already computed it with every
        // reference resolved and no link has gone since (then it would come out the same).
        let (mv, joined) = if !self.links_removed && self.flowed.remove(&mv_id) {
            (mv, joined)
        } else {
            let (updated, joined, _) = self.flow_inbound_for(mv, joined, is_new).await?;
            (updated, joined)
        };

        // Outbound to every connector with outbound rules for this MV type.
        let targets: Vec<ConnectorId> =
            self.runner.order.iter().filter(|id| self.has_outbound_rules(id, &mv.object_type)).cloned().collect();
        for target in targets {
            self.outbound(&mv, &target, &joined).await?;
        }
        Ok(())
    }

    /// Inbound flow for one MV object right after a join or projection (no lifetime or outbound work).
    async fn flow_inbound_now(&mut self, mv_id: MvId, is_new: bool) -> Result<(), RunnerError> {
        let store = &self.runner.store;
        let Some(mv) = store.mv_get(mv_id).await? else { return Ok(()) };
        let mut joined = store.cs_linked_to(mv_id).await?;
        joined.retain(|cs| !self.deleting.contains(&cs.id));
        if self.flow_inbound_for(mv, joined, is_new).await?.2 {
            self.flowed.insert(mv_id);
        }
        Ok(())
    }

    /// Computes and stores an MV object's inbound values; records flow errors on the CS objects.
    async fn flow_inbound_for(
        &mut self,
        mut mv: model::MvObject,
        mut joined: Vec<CsObject>,
        is_new: bool,
    ) -> Result<(model::MvObject, Vec<CsObject>, bool), RunnerError> {
        let store = &self.runner.store;
        let references = self.inbound_references(&joined).await?;
        let mut random_state = self.next_random();
        let mut random = move || {
            random_state = random_state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            random_state
        };
        let (result, complete) = {
            // Whether every reference resolved: then nothing later in the page can change this
            // flow's result unless a link goes away (see `Context::flowed`).
            let misses = std::cell::Cell::new(0usize);
            let resolve = |connector: &ConnectorId, dn: &str| {
                let found = references.get(&(connector.clone(), dn.to_lowercase())).copied();
                if found.is_none() {
                    misses.set(misses.get() + 1);
                }
                found
            };
            let refs: Vec<&CsObject> = joined.iter().collect();
            let member_of = self.member_of();
            let result = inbound::flow_inbound(InboundInput {
                rules: &self.runner.rules,
                mv: &mv,
                is_new,
                joined: &refs,
                member_of: &member_of,
                parameters: &self.parameters,
                resolve_reference: &resolve,
                now: self.now,
                random: &mut random,
            });
            (result, misses.get() == 0)
        };
        for (cs_id, error) in &result.errors {
            if let Some(cs) = joined.iter_mut().find(|cs| cs.id == *cs_id) {
                if cs.error.as_ref() == Some(error) {
                    continue;
                }
                let mut updated = cs.clone();
                self.set_error(&mut updated, error.clone());
                store.cs_set_error(updated.id, updated.error.as_ref()).await?;
                *cs = updated;
            }
        }
        if result.changes(&mv) {
            mv.attributes = result.attributes;
            store.mv_update(&mv).await?;
            if !is_new {
                self.counts.updates += 1;
            }
        }
        Ok((mv, joined, complete))
    }

    fn has_outbound_rules(&self, connector: &ConnectorId, mv_type: &str) -> bool {
        self.runner
            .rules
            .rules()
            .iter()
            .any(|rule| rule.direction == Direction::Outbound && &rule.connector == connector && rule.source_type == mv_type)
    }

    /// Reference values (DNs) of the joined objects → the MV objects they are joined to, read
    /// in one set-based lookup per connector (no object is decoded).
    async fn inbound_references(&self, joined: &[CsObject]) -> Result<BTreeMap<(ConnectorId, String), MvId>, RunnerError> {
        let mut wanted: BTreeMap<ConnectorId, BTreeSet<String>> = BTreeMap::new();
        for cs in joined {
            for (_, values) in cs.attributes.iter() {
                for value in values {
                    if let AttrValue::Reference(dn) = value {
                        wanted.entry(cs.connector.clone()).or_default().insert(dn.to_lowercase());
                    }
                }
            }
        }
        let mut map = BTreeMap::new();
        for (connector, dns) in wanted {
            let dns: Vec<String> = dns.into_iter().collect();
            for (dn, mv) in self.runner.store.cs_links_by_dn(&connector, &dns).await? {
                map.insert((connector.clone(), dn), mv);
            }
        }
        Ok(map)
    }

    async fn outbound(&mut self, mv: &model::MvObject, target: &ConnectorId, joined: &[CsObject]) -> Result<(), RunnerError> {
        let store = &self.runner.store;
        let mut target_cs = joined.iter().find(|cs| &cs.connector == target).cloned();
        // MV references → DNs of the target's objects joined to them (one set-based lookup).
        let referenced: BTreeSet<MvId> = mv
            .attributes
            .values()
            .flat_map(|attribute| attribute.values.iter())
            .filter_map(|value| match value {
                AttrValue::MvReference(id) => Some(*id),
                _ => None,
            })
            .collect();
        let referenced: Vec<MvId> = referenced.into_iter().collect();
        let references: BTreeMap<MvId, String> =
            if referenced.is_empty() { BTreeMap::new() } else { store.cs_dns_by_link(target, &referenced).await?.into_iter().collect() };
        let resolve = |id: MvId| references.get(&id).cloned();
        let mut join_candidates = Vec::new();
        if target_cs.is_none() {
            for query in outbound::join_queries(&self.runner.rules, mv, target) {
                let Some(query) = query else {
                    join_candidates.push(Vec::new());
                    continue;
                };
                let mut per_clause = Vec::new();
                for (attribute, values, case_sensitive) in &query.clauses {
                    per_clause.push(
                        store
                            .cs_find(target, &query.cs_type, attribute, values, matching(*case_sensitive))
                            .await?
                            .into_iter()
                            .map(|id| id.0)
                            .collect(),
                    );
                }
                join_candidates.push(intersect(per_clause).into_iter().map(CsId).collect());
            }
        }
        // Each outbound decision draws its own seed from the run's source (both decisions of a
        // join below use the same one), so Guid()/RandomNum() differ from object to object.
        let seed = self.next_random();
        let empty = BTreeMap::new();
        let parameters = self.parameters.get(target).unwrap_or(&empty);
        let decide = |joined_cs: Option<&CsObject>, candidates: &[Vec<CsId>]| {
            let mut state = seed;
            let mut random = move || {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                state
            };
            outbound::sync_outbound(OutboundInput {
                rules: &self.runner.rules,
                mv,
                connector: target,
                joined: joined_cs,
                join_candidates: candidates,
                parameters,
                resolve_reference: &resolve,
                now: self.now,
                random: &mut random,
            })
        };
        let mut decision = decide(target_cs.as_ref(), &join_candidates);
        if let OutboundDecision::Join { cs, .. } = decision {
            let Some(mut found) = store.cs_get(cs).await? else { return Ok(()) };
            found.link = Some(mv.id);
            store.cs_update_state(&found).await?;
            self.counts.updates += 1;
            decision = decide(Some(&found), &[]);
            target_cs = Some(found);
        }
        // An outbound error recorded by an earlier run for this target is over once outbound
        // sync decides anything else (the anchor restored, the value fixed).
        if !matches!(decision, OutboundDecision::Error(_)) {
            let stale = |cs: &CsObject| {
                cs.error.as_ref().is_some_and(|error| error.stage == model::ErrorStage::Outbound && error.target.as_ref() == Some(target))
            };
            let cleared: Vec<CsId> =
                target_cs.iter().chain(joined.iter().filter(|cs| &cs.connector != target)).filter(|cs| stale(cs)).map(|cs| cs.id).collect();
            for id in cleared {
                store.cs_set_error(id, None).await?;
                if let Some(current) = target_cs.as_mut().filter(|current| current.id == id) {
                    current.error = None;
                }
            }
        }
        match decision {
            OutboundDecision::Nothing | OutboundDecision::Join { .. } => {
                if let Some(mut cs) = target_cs
                    && cs.pending_export.is_some()
                    && cs.anchor.is_some()
                {
                    cs.pending_export = None;
                    store.cs_update_state(&cs).await?;
                }
            }
            OutboundDecision::Provision { object_type, dn, attributes, .. } => {
                let changes = attributes.iter().map(|(name, values)| AttrChange::Replace(name.to_string(), values.to_vec())).collect();
                store
                    .cs_insert(NewCsObject {
                        connector: target.clone(),
                        anchor: None,
                        dn,
                        object_type,
                        attributes: Attributes::new(),
                        pending_import: None,
                        pending_export: Some(PendingExport::Add(changes)),
                        link: Some(mv.id),
                    })
                    .await?;
                self.counts.adds += 1;
            }
            OutboundDecision::Export(export) => {
                let Some(mut cs) = target_cs else { return Ok(()) };
                let export = match (cs.anchor.is_none(), export) {
                    // Not created yet: the add carries every value.
                    (true, PendingExport::Update(changes)) => PendingExport::Add(changes),
                    (true, PendingExport::Rename { new_dn, changes }) => {
                        cs.dn = new_dn;
                        PendingExport::Add(changes)
                    }
                    (_, export) => export,
                };
                if cs.pending_export.as_ref() != Some(&export) {
                    cs.pending_export = Some(export);
                    store.cs_update_state(&cs).await?;
                    self.counts.updates += 1;
                }
            }
            OutboundDecision::Deprovision(cs_id) => {
                self.links_removed = true;
                let Some(mut cs) = store.cs_get(cs_id).await? else { return Ok(()) };
                if cs.anchor.is_none() {
                    store.cs_delete(cs_id).await?;
                } else {
                    cs.link = None;
                    cs.pending_export = Some(PendingExport::Delete);
                    store.cs_update_state(&cs).await?;
                }
                self.counts.deletes += 1;
            }
            OutboundDecision::Error(mut error) => {
                // Marked as outbound and for which target, so a later success can clear it.
                error.stage = model::ErrorStage::Outbound;
                error.target = Some(target.clone());
                let holder = target_cs.or_else(|| joined.iter().find(|cs| &cs.connector != target).cloned());
                if let Some(mut cs) = holder {
                    self.set_error(&mut cs, error);
                    store.cs_set_error(cs.id, cs.error.as_ref()).await?;
                } else {
                    self.counts.errors += 1;
                }
            }
        }
        Ok(())
    }
}

/// What a sync would do to the object `dn` of `connector`: the sync step's own code for that
/// object (inbound, then the metaverse work of every MV object it touches) over an overlay of
/// the store, so nothing changes. `extra` adds `%Parameters%` for the object's connector (a
/// preview runs without connecting, so connectors' own parameters are not read).
pub(crate) async fn explain<S: Store>(
    runner: &Runner<S>,
    connector: &ConnectorId,
    dn: &str,
    extra: BTreeMap<String, Value>,
) -> Result<crate::explain::Explanation, RunnerError> {
    let cs = runner
        .store
        .cs_by_dn(connector, dn)
        .await?
        .ok_or_else(|| RunnerError::NoObject { connector: connector.0.clone(), dn: dn.to_string() })?;
    let mut shadow = Runner::new(crate::explain::Overlay::new(&runner.store), runner.rules.clone(), runner.config.clone());
    // Outbound targets are the connectors in order, then any other the rules name.
    shadow.order = runner.order.clone();
    for rule in runner.rules.rules() {
        if !shadow.order.contains(&rule.connector) {
            shadow.order.push(rule.connector.clone());
        }
    }
    let mut parameters: BTreeMap<ConnectorId, BTreeMap<String, Value>> = BTreeMap::new();
    for id in &shadow.order {
        let mut values = match runner.connectors.get(id) {
            Some(connector) => connector.info.parameters.clone(),
            // Not opened (a preview): the values its last run kept.
            None => {
                let kept = runner.store.service_state(crate::PARAMETERS, &id.0).await?.unwrap_or_default();
                let texts: BTreeMap<String, String> = serde_json::from_slice(&kept).unwrap_or_default();
                texts.into_iter().map(|(name, text)| (name, Value::str(text))).collect()
            }
        };
        values.entry("Connector.ID".into()).or_insert_with(|| Value::str(id.0.clone()));
        parameters.insert(id.clone(), values);
    }
    parameters.entry(connector.clone()).or_default().extend(extra);
    let now = sync_expr::time::DateTime::from_unix_seconds(runner.clock.unix_seconds()).unwrap_or(sync_expr::time::DateTime::MIN);
    let mut context = Context {
        runner: &shadow,
        parameters,
        memberships: crate::Memberships::load(&runner.store, &runner.rules).await?,
        now,
        counts: RunCounts::default(),
        random_state: runner.clock.unix_seconds() as u64 | 1,
        deleting: BTreeSet::new(),
        flowed: BTreeSet::new(),
        links_removed: false,
    };
    let rules_in_scope = {
        let member_of = context.member_of();
        inbound::rules_in_scope(&runner.rules, &cs, &member_of).iter().map(|rule| (rule.precedence, rule.name.clone())).collect()
    };
    let mut affected = BTreeSet::new();
    let mut projected = BTreeSet::new();
    context.inbound(cs.clone(), &mut affected, &mut projected).await?;
    for mv in affected {
        context.metaverse(mv, projected.contains(&mv)).await?;
    }
    for deleted in std::mem::take(&mut context.deleting) {
        shadow.store.cs_delete(deleted).await?;
    }
    let metaverse = match shadow.store.cs_get(cs.id).await?.and_then(|after| after.link) {
        Some(mv) => shadow.store.mv_get(mv).await?,
        None => None,
    };
    let (cs_changes, mv_changes) = shadow.store.changes().await?;
    Ok(crate::explain::Explanation { object: cs, rules_in_scope, cs_changes, mv_changes, metaverse })
}
