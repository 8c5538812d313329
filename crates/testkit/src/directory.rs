//! The synthetic directory generator, re-exported from the `dirgen` crate for tests and `xtask`.

pub use dirgen::*;
