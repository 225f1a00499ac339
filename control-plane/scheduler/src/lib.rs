//! The pod scheduler (work in progress).
