//! The postgres store for leader election (work in progress).
