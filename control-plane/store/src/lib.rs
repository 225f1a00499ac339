//! The store: see the crate description.
