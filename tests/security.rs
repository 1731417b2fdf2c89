//! Security defaults: the admin API listens on loopback unless the file says otherwise, and the
//! admin token never leaves the process: not in its logs (even at debug level), not in any admin
//! response, not in `tandem status`, whatever requests arrive with right and wrong tokens.

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use process::Tandem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Distinctive enough that finding it anywhere means it leaked.
const SECRET: &str = "tk-7f3a9c41e2b8d065";

/// The whole raw response (head and body) to one request.
async fn raw_http(addr: SocketAddr, method: &str, path: &str, headers: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("admin connects");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    String::from_utf8_lossy(&raw).into_owned()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

#[test]
fn an_admin_table_without_listen_binds_loopback() {
    let text = "[admin]\n[[pool]]\nname = \"p\"\nmembers = [{ addr = \"127.0.0.1:80\" }]\n\
                [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n";
    let config = tandem::config::parse(text, "t.toml").expect("valid");
    let admin = config.admin.expect("[admin] present");
    assert!(admin.listen.ip().is_loopback(), "{}", admin.listen);
}

#[tokio::test]
async fn the_admin_token_never_appears_in_logs_or_responses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("admin.token");
    std::fs::write(&token, format!("{SECRET}\n")).expect("token");
    let local = members("sec", 1, 2).await;
    let config = |extra: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token.display()
        ) + &pool_toml("dc1", &local)
            + &fast_tcp_check(1, 2)
            + &service_toml("fe", "dc1", extra)
    };
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, config("")).expect("write");
    let mut tandem =
        Tandem::spawn_with_env(&path, &["--no-watch"], &[("RUST_LOG", Path::new("debug"))]);
    let service = tandem.addr_of("listening").await;
    let admin = tandem.addr_of("admin API listening").await;

    // Traffic, so that the logs and the status have something to say.
    let seen = placement(4, service).await;
    assert_eq!(seen.len(), 4);

    let mut responses = Vec::new();
    // Wrong tokens: refused, nothing applied.
    for auth in [
        String::new(),
        "Authorization: Bearer wrong\r\n".to_string(),
        format!("Authorization: Bearer {SECRET}x\r\n"),
        format!("Authorization: Basic {SECRET}\r\n"),
    ] {
        let r = raw_http(admin, "POST", "/reload", &auth).await;
        assert!(status_line(&r).contains(" 401 "), "{auth:?}: {r}");
        responses.push(r);
    }
    // The right one: applied.
    std::fs::write(&path, config("idle_timeout = \"900s\"")).expect("write");
    let r = raw_http(
        admin,
        "POST",
        "/reload",
        &format!("Authorization: Bearer {SECRET}\r\n"),
    )
    .await;
    assert!(status_line(&r).contains(" 200 "), "{r}");
    responses.push(r);
    for path in ["/status", "/metrics", "/", "/healthz", "/readyz", "/nope"] {
        responses.push(raw_http(admin, "GET", path, "").await);
    }
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["status", "--admin", &admin.to_string()])
        .output()
        .expect("tandem status runs");
    assert!(cli.status.success(), "{cli:?}");
    responses.push(String::from_utf8_lossy(&cli.stdout).into_owned());
    responses.push(String::from_utf8_lossy(&cli.stderr).into_owned());

    tandem.signal("TERM");
    let status = tandem.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    let logs = tandem.rest_of_log().await;
    assert!(
        logs.iter()
            .filter(|l| l.contains("admin request refused"))
            .count()
            == 4,
        "each refused reload is logged once: {logs:#?}"
    );

    for r in &responses {
        assert!(!r.contains(SECRET), "the token leaked into a response: {r}");
    }
    for l in &logs {
        assert!(!l.contains(SECRET), "the token leaked into the log: {l}");
    }
    // The token file's path may be logged (it helps operators); its contents may not.
    assert!(!logs.is_empty());
}
