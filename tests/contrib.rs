//! The Prometheus rules and the Grafana dashboard in `contrib/` pass `contrib/check.sh`:
//! promtool parses every PromQL expression of the dashboard and the alerting rules, and runs
//! the rules' unit tests; the metric names they use are the ones `src/metrics.rs` exposes.

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "needs promtool (apt-get install prometheus); CI runs it with --include-ignored"]
fn contrib_passes_check_sh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("contrib/check.sh"))
        .current_dir(root)
        .output()
        .expect("bash runs contrib/check.sh");
    assert!(
        out.status.success(),
        "contrib/check.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
