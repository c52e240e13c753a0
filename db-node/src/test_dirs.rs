//! Fresh, empty directories for unit tests, one per test and process.

use std::path::PathBuf;

/// `<tmp>/dbnode-<module>-<pid>-<name>`, emptied and created.
pub fn fresh(module: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dbnode-{module}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a test directory");
    d
}
