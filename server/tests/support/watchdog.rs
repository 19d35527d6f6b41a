//! A shell that cleans up after a test process killed with SIGKILL (where no `Drop` runs): once
//! the test process is gone it signals a child's process group and removes a directory. It has a
//! group of its own so that it outlives the group it signals.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Once this process is gone: `signal` to process group `group`, SIGKILL `grace_s` seconds
/// later, then remove `dir` (nothing for an empty path).
pub fn spawn(group: u32, signal: &str, grace_s: u32, dir: &Path) -> Option<Child> {
    let me = std::process::id();
    let dir = dir.to_str()?.replace('\'', r"'\''");
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
         kill -s {signal} -- -{group} 2>/dev/null; sleep {grace_s}; \
         kill -s KILL -- -{group} 2>/dev/null; [ -n '{dir}' ] && rm -rf '{dir}'"
    );
    Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

/// The test cleaned up by itself: the watchdog is no longer needed.
pub fn stop(watchdog: Option<Child>) {
    if let Some(mut w) = watchdog {
        let _ = w.kill();
        let _ = w.wait();
    }
}
