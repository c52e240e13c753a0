//! Good citizenship under pm2. pm2 starts its apps with a Node IPC channel on the fd named by
//! `NODE_CHANNEL_FD` and, with `wait_ready: true`, waits for the JSON line `"ready"` on it. Any
//! line that is not JSON crashes the pm2 daemon, so this module writes exactly that one line,
//! once, and nothing else ever; it also marks the fd close-on-exec so children do not inherit it.

use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};

/// The pm2 IPC channel, if this process was started with one.
pub struct Channel {
    fd: RawFd,
}

impl Channel {
    /// Reads `NODE_CHANNEL_FD`, checks the fd is open and marks it close-on-exec.
    pub fn from_env() -> Option<Channel> {
        let fd: RawFd = std::env::var("NODE_CHANNEL_FD").ok()?.trim().parse().ok()?;
        if fd < 0 {
            return None;
        }
        // SAFETY: fcntl on an integer fd has no memory-safety requirements; a closed fd just
        // returns -1.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            return None;
        }
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        Some(Channel { fd })
    }

    /// Tells pm2 the app is ready (for `wait_ready`). Consumes the channel: it is written once.
    pub fn notify_ready(self) {
        // SAFETY: the fd was checked open in `from_env` and is owned by this process for its
        // lifetime; ManuallyDrop keeps it open after the write (pm2 watches it).
        let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(self.fd) });
        let mut writer: &std::fs::File = &file;
        if let Err(e) = writer.write_all(b"\"ready\"\n") {
            tracing::warn!("could not tell pm2 we are ready: {e}");
        }
    }
}
