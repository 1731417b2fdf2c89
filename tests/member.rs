//! `tandem member set` and `tandem member list` against a real `tandem run`: the command edits
//! the file, the running tandem reloads through its admin API (or a SIGHUP), and the data path
//! and the checks follow: drain takes no new connections but keeps the open one, maint stops
//! the member's checks, up brings it back.

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use process::Tandem;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Clients used to see where new connections go; with three members, each gets some.
const CLIENTS: u32 = 60;

/// Runs `tandem member ARGS -c CONFIG`.
async fn member(config: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("member")
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .await
        .expect("tandem member runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// `GET /status` through the library's own client.
async fn status(admin: SocketAddr) -> Value {
    tandem::admin::client::fetch_status(admin, Duration::from_secs(5))
        .await
        .expect("status")
}

/// The member `addr` of pool `dc1` in `/status`.
fn member_status(status: &Value, addr: SocketAddr) -> Value {
    status["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == "dc1"))
        .and_then(|p| p["members"].as_array())
        .and_then(|ms| ms.iter().find(|m| m["addr"] == addr.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("no member {addr} in {status}"))
}

/// When the member's check last ran (RFC 3339 with milliseconds), per `/status`.
fn last_check(status: &Value, addr: SocketAddr) -> String {
    member_status(status, addr)["checks"][0]["at"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Sends a line on a connection relayed to a demo member and reads its echo.
async fn echo(stream: &mut TcpStream, line: &str) {
    stream.write_all(line.as_bytes()).await.expect("write");
    let mut back = vec![0; line.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .expect("echo within 5 s")
        .expect("echo");
    assert_eq!(back, line.as_bytes());
}

/// A commented config with pool `dc1` (members inline) behind service `fe`, fast checks, and
/// `admin` as its `[admin]` table.
fn config(members: &[DemoMember], admin: &str) -> String {
    let list: Vec<String> = members
        .iter()
        .map(|m| format!("  {{ addr = \"{}\" }},   # {}\n", m.addr(), m.name()))
        .collect();
    format!(
        "# edited by tandem member set in tests/member.rs\n{admin}\n\
         [[pool]]\nname = \"dc1\"   # the only pool\nmembers = [\n{}]\n{}\n{}",
        list.concat(),
        fast_tcp_check(1, 1),
        service_toml("fe", "dc1", "hash = \"source-ip\"\n")
    )
}

struct Running {
    tandem: Tandem,
    members: Vec<DemoMember>,
    service: SocketAddr,
    admin: Option<SocketAddr>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

/// `tandem run --no-watch` (so reloads come from the command alone) on [`config`] with
/// `admin`, three members on hosts `first_host..`.
async fn start(first_host: u8, admin: impl FnOnce(&Path) -> String) -> Running {
    let members = members("m", first_host, 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let admin_toml = admin(dir.path());
    std::fs::write(&path, config(&members, &admin_toml)).expect("write");
    let mut tandem = Tandem::spawn(&path, &["--no-watch"]);
    let service = tandem.addr_of("listening").await;
    let admin = if admin_toml.is_empty() {
        None
    } else {
        Some(tandem.addr_of("admin API listening").await)
    };
    Running {
        tandem,
        members,
        service,
        admin,
        path,
        _dir: dir,
    }
}

fn with_token(dir: &Path) -> String {
    let token = dir.join("admin.token");
    std::fs::write(&token, "s3cret\n").expect("token");
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        token.display()
    )
}

#[tokio::test]
async fn drain_maint_and_up_reach_the_running_tandem() {
    let run = start(240, with_token).await;
    let admin = run.admin.expect("admin");
    let admin_arg = admin.to_string();
    let original = std::fs::read_to_string(&run.path).expect("read");

    // Every member serves some of the clients; client 0's member is the one to drain.
    let before = placement(CLIENTS, run.service).await;
    for m in &run.members {
        assert!(before.iter().any(|n| n == m.name()), "{} unused", m.name());
    }
    let target = run
        .members
        .iter()
        .find(|m| m.name() == before[0])
        .expect("client 0's member");
    let (name, mut open) = greeting_from(client_ip(0), run.service)
        .await
        .expect("served");
    assert_eq!(name, target.name());
    echo(&mut open, "before\n").await;

    // drain: the file changes by the one key, the running tandem applies it at once.
    let addr = target.addr().to_string();
    let out = member(
        &run.path,
        &["set", "dc1", &addr, "drain", "--admin", &admin_arg],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("member {addr} is now drain (was up)")),
        "{stdout}"
    );
    assert!(stdout.contains("reload applied (admin API"), "{stdout}");
    let drained = std::fs::read_to_string(&run.path).expect("read");
    assert_eq!(
        drained,
        original.replace(
            &format!("{{ addr = \"{addr}\" }}"),
            &format!("{{ addr = \"{addr}\", state = \"drain\" }}")
        )
    );
    let after = placement(CLIENTS, run.service).await;
    assert!(
        !after.iter().any(|n| n == target.name()),
        "a new connection went to the drained {}: {after:?}",
        target.name()
    );
    // The connection opened before the drain lives on.
    echo(&mut open, "during drain\n").await;
    assert_eq!(
        member_status(&status(admin).await, target.addr())["state"],
        "drain"
    );

    // maint: the member's checks stop. The clock is another member's checks: once they have
    // run twice more after the reload, the maintained member's would have too.
    let out = member(
        &run.path,
        &["set", "dc1", &addr, "maint", "--admin", &admin_arg],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("is now maint (was drain)"));
    let other = run
        .members
        .iter()
        .find(|m| m.addr() != target.addr())
        .expect("another member")
        .addr();
    // A probe already under way when the reload landed may still report; take the baseline
    // after one full check of another member.
    let s = status(admin).await;
    let (mut other_at, mut frozen) = (last_check(&s, other), String::new());
    let mut ticks = 0;
    // Polled: a check that passes again is no transition, so no event tells of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ticks < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "another member was not checked three times in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = status(admin).await;
        let now = last_check(&s, other);
        if now != other_at {
            other_at = now;
            ticks += 1;
            if ticks == 1 {
                frozen = last_check(&s, target.addr());
            }
        }
    }
    let s = status(admin).await;
    assert_eq!(
        last_check(&s, target.addr()),
        frozen,
        "a maint member was checked"
    );
    assert_eq!(member_status(&s, target.addr())["state"], "maint");
    echo(&mut open, "during maint\n").await;

    // up: the key stays, its value changes; new connections reach the member again.
    let out = member(
        &run.path,
        &["set", "dc1", &addr, "up", "--admin", &admin_arg],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&run.path).expect("read"),
        original.replace(
            &format!("{{ addr = \"{addr}\" }}"),
            &format!("{{ addr = \"{addr}\", state = \"up\" }}")
        )
    );
    let back = placement(CLIENTS, run.service).await;
    assert_eq!(back, before, "clients return to the members they had");

    // The list shows the file's states and the live health.
    let out = member(&run.path, &["list", "--admin", &admin_arg]).await;
    assert!(out.status.success(), "{out:?}");
    let list = text(&out.stdout);
    assert!(list.starts_with("POOL  MEMBER"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().eq(["dc1", &addr, "1", "up", "up"])),
        "{list}"
    );
    drop(run.tandem);
}

#[tokio::test]
async fn without_an_admin_api_the_file_is_written_and_pid_gets_sighup() {
    let mut run = start(243, |_| String::new()).await;
    let addr = run.members[1].addr().to_string();

    // No [admin], no --pid: written all the same, and the exit status says nobody was told.
    let out = member(&run.path, &["set", "dc1", &addr, "drain"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is written, but no running tandem was told to reload"),
        "{stderr}"
    );
    assert!(
        std::fs::read_to_string(&run.path)
            .expect("read")
            .contains(&format!("{{ addr = \"{addr}\", state = \"drain\" }}"))
    );
    // The list works without a running tandem's API.
    let out = member(&run.path, &["list"]).await;
    assert!(out.status.success(), "{out:?}");
    let list = text(&out.stdout);
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().eq(["dc1", &addr, "1", "drain", "-"])),
        "{list}"
    );

    // Again with --pid: the file already says drain; the running tandem is told anyway.
    let pid = run.tandem.child.id().to_string();
    let out = member(&run.path, &["set", "dc1", &addr, "drain", "--pid", &pid]).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("is already drain; file unchanged"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("sent SIGHUP to pid {pid}")),
        "{stdout}"
    );
    let applied = run.tandem.expect_log("config reload applied").await;
    assert!(
        applied["change"].as_str().unwrap_or("").contains("dc1"),
        "{applied}"
    );
    let after = placement(CLIENTS, run.service).await;
    assert!(
        !after.iter().any(|n| n == run.members[1].name()),
        "{after:?}"
    );
}

#[tokio::test]
async fn an_unusable_token_falls_back_to_sighup_and_reports_the_outcome() {
    // The token file is a directory: readable by nobody as a token, root included.
    let run = start(246, |dir| {
        let token = dir.join("token.d");
        std::fs::create_dir(&token).expect("mkdir");
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token.display()
        )
    })
    .await;
    let admin = run.admin.expect("admin");
    let addr = run.members[0].addr().to_string();
    let out = member(
        &run.path,
        &["set", "dc1", &addr, "maint", "--admin", &admin.to_string()],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    let pid = run.tandem.child.id();
    assert!(
        stdout.contains(&format!("reload applied (SIGHUP to pid {pid})")),
        "{stdout}"
    );
    assert_eq!(
        member_status(&status(admin).await, run.members[0].addr())["state"],
        "maint"
    );
}

#[tokio::test]
async fn a_read_only_file_is_left_untouched() {
    use std::os::unix::fs::PermissionsExt as _;
    let members = members("m", 249, 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let original = config(&members, "");
    std::fs::write(&path, &original).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).expect("chmod");

    let addr = members[0].addr().to_string();
    let out = member(&path, &["set", "dc1", &addr, "drain"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is read-only (mode 444); nothing written"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).expect("read"), original);

    // Unknown pools and members are named, and change nothing either.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = member(&path, &["set", "dc9", &addr, "drain"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("no pool named \"dc9\" (pools: dc1)"));
    let out = member(&path, &["set", "dc1", "192.0.2.1", "drain"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("pool \"dc1\" has no member 192.0.2.1"));
    assert_eq!(std::fs::read_to_string(&path).expect("read"), original);
}
