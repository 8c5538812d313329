//! The sync engine's decisions, as pure functions: for a CS object, which rules are in scope,
//! whether and where it joins or projects ([`inbound`]); the metaverse values computed from all
//! joined objects by precedence and merge type, with lineage ([`inbound::flow_inbound`]); and
//! for an MV object and a target connector, provisioning, deprovisioning and the export
//! changes ([`outbound`]).
//!
//! Pure: no I/O, no async, no clock (the run's start is an argument), no randomness of its own.
//! Lookups the engine needs (join candidates, reference resolution, group membership) come in
//! as data or callbacks from the runner, which owns the store. A problem with one object is a
//! per-object [`model::ObjectError`] in the result, never a failed run.

pub mod flow;
pub mod inbound;
pub mod outbound;
pub mod values;

#[cfg(test)]
mod tests;
