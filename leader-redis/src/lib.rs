//! The redis store for leader election (work in progress).
