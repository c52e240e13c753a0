//! ipc-server
