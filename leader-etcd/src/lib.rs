//! The etcd store for leader election (work in progress).
