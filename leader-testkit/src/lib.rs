//! Conformance suite and test fixtures for leader stores (work in progress).
