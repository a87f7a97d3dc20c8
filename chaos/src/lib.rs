//! leader-chaos (work in progress).
