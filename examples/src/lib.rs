//! Shared helpers for the benchmark binaries: figure reporting and child-process management.
