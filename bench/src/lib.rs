//! leader-bench (work in progress).
