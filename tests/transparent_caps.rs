//! `source = "client"` without CAP_NET_ADMIN (and CAP_NET_RAW, which also lets a socket become
//! transparent): the start fails with a message naming the capability, and a reload that
//! switches a service to it is rejected while the running config keeps serving. Run as root
//! with both capabilities taken out of the bounding set by setpriv(1) (util-linux).

mod common;
#[path = "common/process.rs"]
mod process;

use std::time::Duration;

use common::*;
use process::Tandem;

const SETPRIV: &str = "/usr/bin/setpriv";

fn require_setpriv(test: &str) {
    let root = rustix::process::geteuid().is_root();
    if !root || !std::path::Path::new(SETPRIV).exists() {
        panic!(
            "{test}: this machine lacks root or {SETPRIV} (apt-get install util-linux); \
             plain `cargo test` lists this test as ignored"
        );
    }
}

fn config(source: &str) -> String {
    format!(
        "[[pool]]\nname = \"p\"\nmembers = [{{ addr = \"127.0.1.1:80\" }}]\n\
         [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\nsource = \"{source}\"\n"
    )
}

fn without_caps(path: &std::path::Path) -> String {
    format!(
        "exec {SETPRIV} --bounding-set -net_admin,-net_raw {} run --no-watch --log-format json -c {}",
        env!("CARGO_BIN_EXE_tandem"),
        path.display()
    )
}

#[tokio::test]
#[ignore = "needs root and setpriv (CI runs it: cargo test -- --include-ignored)"]
async fn transparent_source_without_cap_net_admin_fails_start_and_reload() {
    require_setpriv("transparent_source_without_cap_net_admin_fails_start_and_reload");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");

    std::fs::write(&path, config("client")).expect("write");
    let mut tandem = Tandem::spawn_shell(&without_caps(&path));
    let status = tandem.exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "started without CAP_NET_ADMIN");
    let log = tandem.rest_of_log().await.join("\n");
    assert!(log.contains("needs CAP_NET_ADMIN"), "{log}");

    std::fs::write(&path, config("auto")).expect("write");
    let mut tandem = Tandem::spawn_shell(&without_caps(&path));
    let addr = tandem.addr_of("listening").await;
    std::fs::write(&path, config("client")).expect("write");
    tandem.signal("HUP");
    let line = tandem
        .expect_log("config reload rejected; the running config keeps serving")
        .await;
    assert!(line.to_string().contains("CAP_NET_ADMIN"), "{line}");
    // Still serving: the connection is accepted (and closed, the member is not there).
    let _ = tokio::time::timeout(Duration::from_secs(5), connect_from(client_ip(900), addr))
        .await
        .expect("tandem still accepts");
}
