//! Running a system tool from a test (ip, iptables, birdc, ...): one helper for every test that
//! builds network namespaces, so their errors read the same.

use std::process::{Command, Stdio};

/// Runs `program args` and returns its standard output; `Err` says why it could not run or did
/// not succeed (with its standard error).
pub fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process runs as root (the namespace tests need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
