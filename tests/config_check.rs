//! `tandem check` on every example under config/ and every invalid fixture.

use std::path::Path;
use std::process::Command;

fn tandem_check(dir: &Path, file: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .current_dir(dir)
        .args(["check", "-c", file])
        .output()
        .expect("tandem runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn toml_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("dir exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let files = toml_files(&dir);
    assert!(!files.is_empty(), "config/ has no examples");
    for file in files {
        let (ok, stdout, stderr) = tandem_check(&dir, &file);
        assert!(ok, "{file} fails check:\n{stderr}");
        assert!(
            stdout.starts_with(&format!("{file}: ok, ")),
            "{file}: unexpected summary {stdout:?}"
        );
    }
}

#[test]
fn every_invalid_fixture_fails_with_its_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let files = toml_files(&dir);
    assert!(files.len() >= 15, "fixtures missing");
    for file in files {
        let text = std::fs::read_to_string(dir.join(&file)).expect("fixture readable");
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(!expected.is_empty(), "{file} has no `# expect:` line");
        let (ok, _, stderr) = tandem_check(&dir, &file);
        assert!(!ok, "{file} passed check but must fail");
        for e in expected {
            assert!(
                stderr.contains(e),
                "{file}: expected {e:?} in the report, got:\n{stderr}"
            );
        }
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, _, stderr) = tandem_check(dir, "no/such/tandem.toml");
    assert!(!ok);
    assert!(
        stderr.contains("cannot read config file no/such/tandem.toml"),
        "{stderr}"
    );
}
