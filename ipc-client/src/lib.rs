//! ipc-client
