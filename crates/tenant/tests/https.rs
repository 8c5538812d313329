//! The tenant over real HTTPS (its own generated CA, verified by the client): discovery, the
//! client-credentials grant, users CRUD with paging, role checks, and bad input that changes
//! nothing.
//!
//! This run keeps the directory in SQLite; `https_postgres.rs` runs the same suite on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

const POSTGRES: bool = false;

include!("suite/https.rs");
include!("suite/security.rs");
include!("suite/oidc.rs");
