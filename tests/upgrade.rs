//! Binary upgrades with the real binary: a second tandem started with `--upgrade-from` takes
//! over the listening sockets of the running one, which stops accepting and drains once the new
//! one serves. Under steady load no new connection is refused or reset and long-lived streams on
//! the old process run on; a new process that fails to start leaves the old one serving; a
//! handoff requested during a reload waits for it.

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::Path;
use std::time::Duration;

use common::*;
use process::Tandem;

/// The drain after the handoff is bounded by this (the streams end long before).
const GRACE: &str = "20s";

fn config(members: &[DemoMember]) -> String {
    pool_toml("dc1", members) + &fast_tcp_check(2, 2) + &service_toml("fe", "dc1", "")
}

/// `tandem run` listening for upgrades on `socket`.
fn old_process(config: &Path, socket: &Path) -> Tandem {
    Tandem::spawn(
        config,
        &[
            "--shutdown-grace",
            GRACE,
            "--no-watch",
            "--upgrade-socket",
            socket.to_str().expect("utf-8 path"),
        ],
    )
}

/// `tandem run --upgrade-from socket` (which then listens on `socket` itself).
fn new_process(config: &Path, socket: &Path) -> Tandem {
    Tandem::spawn(
        config,
        &[
            "--shutdown-grace",
            GRACE,
            "--no-watch",
            "--upgrade-from",
            socket.to_str().expect("utf-8 path"),
        ],
    )
}

/// Several clients connecting in a loop from distinct address ranges.
fn loads(addr: std::net::SocketAddr) -> Vec<Load> {
    (0..16)
        .map(|i| Load::start(addr, 4000 + i * 50, 50))
        .collect()
}

async fn finish(loads: Vec<Load>) -> LoadReport {
    let mut total = LoadReport::default();
    for l in loads {
        let r = l.finish().await;
        total.ok += r.ok;
        total.failed += r.failed;
        total.refused += r.refused;
        total.reset += r.reset;
    }
    total
}

/// The new process has taken over: same address, old one draining.
async fn take_over(old: &mut Tandem, new: &mut Tandem, addr: std::net::SocketAddr) {
    assert_eq!(new.addr_of("listening").await, addr, "same socket");
    old.expect_log("upgrade: new process serving; stopping accepting and draining")
        .await;
    new.expect_log("upgrade socket listening").await;
}

#[tokio::test]
async fn upgrade_under_load_refuses_nothing_and_streams_run_on() {
    let members = members("up", 150, 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let socket = dir.path().join("upgrade.sock");
    std::fs::write(&path, config(&members)).expect("write");

    let mut old = old_process(&path, &socket);
    let addr = old.addr_of("listening").await;
    old.expect_log("upgrade socket listening").await;

    let mut streams = Vec::new();
    for i in 0..4 {
        streams.push(Stream::start(client_ip(900 + i), addr, 70 + u64::from(i)).await);
    }
    let load = loads(addr);

    let mut new = new_process(&path, &socket);
    take_over(&mut old, &mut new, addr).await;
    let draining = old.expect_log("draining open connections").await;
    assert!(
        draining["connections"].as_u64().unwrap_or(0) >= 4,
        "{draining}"
    );

    // The streams on the old process run on after it stopped accepting, until we end them.
    for s in streams {
        let bytes = s
            .finish()
            .await
            .expect("stream on the old process unharmed");
        assert!(bytes > 0);
    }
    let status = old.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "old process: {status}");

    // Only the new process is left, and it serves everything.
    let placed = placement(100, addr).await;
    assert_eq!(placed.len(), 100);
    let report = finish(load).await;
    eprintln!(
        "upgrade under load: {} connections attempted, {} refused, {} reset, {} failed",
        report.ok + report.failed,
        report.refused,
        report.reset,
        report.failed
    );
    assert!(report.ok > 0, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");

    new.signal("TERM");
    assert!(new.exit(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn a_new_process_with_a_bad_config_leaves_the_old_one_serving() {
    let members = members("bad", 153, 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let broken = dir.path().join("broken.toml");
    let socket = dir.path().join("upgrade.sock");
    std::fs::write(&path, config(&members)).expect("write");
    std::fs::write(&broken, config(&members) + "hash = \"sideways\"\n").expect("write");

    let mut old = old_process(&path, &socket);
    let addr = old.addr_of("listening").await;
    old.expect_log("upgrade socket listening").await;
    let stream = Stream::start(client_ip(950), addr, 80).await;
    let load = loads(addr);

    let mut failed = new_process(&broken, &socket);
    old.expect_log("upgrade: listening sockets handed over; waiting for the new process")
        .await;
    old.expect_log("upgrade: new process stopped before it was ready; still serving")
        .await;
    let status = failed.exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "a bad config fails the new process");
    assert_eq!(placement(50, addr).await.len(), 50, "the old one serves");

    // A later good upgrade still works.
    let mut new = new_process(&path, &socket);
    take_over(&mut old, &mut new, addr).await;
    stream.finish().await.expect("stream unharmed");
    assert!(old.exit(Duration::from_secs(10)).await.success());
    assert_eq!(placement(50, addr).await.len(), 50, "the new one serves");
    let report = finish(load).await;
    assert_eq!(report.failed, 0, "{report:?}");

    new.signal("TERM");
    assert!(new.exit(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn an_upgrade_requested_during_a_reload_waits_for_it() {
    let members = members("mid", 156, 4).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let socket = dir.path().join("upgrade.sock");
    std::fs::write(&path, config(&members[..3])).expect("write");

    let mut old = old_process(&path, &socket);
    let addr = old.addr_of("listening").await;
    old.expect_log("upgrade socket listening").await;
    let stream = Stream::start(client_ip(960), addr, 90).await;
    let load = loads(addr);

    // A reload adding a member (its first probe runs inside the reload), and at once an upgrade.
    std::fs::write(&path, config(&members)).expect("write");
    old.signal("HUP");
    let mut new = new_process(&path, &socket);
    old.expect_log("config reload applied").await;
    old.expect_log("upgrade: listening sockets handed over; waiting for the new process")
        .await;
    take_over(&mut old, &mut new, addr).await;

    stream.finish().await.expect("stream unharmed");
    assert!(old.exit(Duration::from_secs(10)).await.success());
    let placed = placement(100, addr).await;
    assert!(placed.iter().any(|m| m == "mid4"), "{:?}", counts(&placed));
    let report = finish(load).await;
    assert_eq!(report.failed, 0, "{report:?}");

    new.signal("TERM");
    assert!(new.exit(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn the_new_process_takes_the_udp_socket() {
    let members = udp_members("u", 159, 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let socket = dir.path().join("upgrade.sock");
    let toml =
        udp_pool_toml("p", &members, &fast_tcp_check(1, 1)) + &udp_service_toml("u", "p", "");
    std::fs::write(&path, toml).expect("write");

    let mut old = old_process(&path, &socket);
    let addr = old.addr_of("listening").await;
    old.expect_log("upgrade socket listening").await;
    let client = udp_client(client_ip(970)).await;
    let before = udp_who(&client, addr).await;

    let mut new = new_process(&path, &socket);
    take_over(&mut old, &mut new, addr).await;
    // UDP sessions end with the old process; it does not wait for them.
    assert!(old.exit(Duration::from_secs(10)).await.success());

    // The same client, the same address: the new process answers (a new session, placed by
    // the same hash on the same member).
    assert_eq!(udp_who(&client, addr).await, before);
    let other = udp_client(client_ip(971)).await;
    udp_who(&other, addr).await;

    new.signal("TERM");
    assert!(new.exit(Duration::from_secs(10)).await.success());
}

/// A systemd stand-in: the datagram socket `NOTIFY_SOCKET` points at.
struct FakeSystemd(tokio::net::UnixDatagram);

impl FakeSystemd {
    fn bind(path: &Path) -> FakeSystemd {
        let socket = StdDatagram::bind(path).expect("notify socket binds");
        socket.set_nonblocking(true).expect("nonblocking");
        FakeSystemd(tokio::net::UnixDatagram::from_std(socket).expect("tokio socket"))
    }

    /// The next notification that is not a watchdog ping, within 10 s.
    async fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), self.0.recv(&mut buf))
                .await
                .expect("a notification within 10 s")
                .expect("recv");
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m != "WATCHDOG=1\n" {
                return m;
            }
        }
    }

    /// Notifications already waiting.
    fn pending(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        while let Ok(n) = self.0.try_recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

fn main_pid(message: &str) -> u32 {
    message
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no MAINPID in {message:?}"))
}

/// A process that is not our child (the successor the old process started): SIGKILLed when
/// the test ends, whatever happened.
struct Foreign(u32);

impl Foreign {
    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.0.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn sigusr2_starts_the_successor_and_systemd_follows_its_main_pid() {
    let members = members("sd", 162, 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let socket = dir.path().join("upgrade.sock");
    let notify = dir.path().join("notify.sock");
    std::fs::write(&path, config(&members)).expect("write");
    let systemd = FakeSystemd::bind(&notify);

    let mut old = Tandem::spawn_with_env(
        &path,
        &[
            "--shutdown-grace",
            GRACE,
            "--no-watch",
            "--upgrade-socket",
            socket.to_str().expect("utf-8 path"),
        ],
        &[("NOTIFY_SOCKET", &notify)],
    );
    let addr = old.addr_of("listening").await;
    let ready = systemd.next().await;
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert_eq!(main_pid(&ready), old.child.id());
    old.expect_log("upgrade socket listening").await;
    let stream = Stream::start(client_ip(980), addr, 95).await;
    let load = loads(addr);

    old.signal("USR2");
    // The successor logs to the same stderr: its lines come in the old one's log.
    let started = old.expect_log("upgrade: new process started").await;
    let successor = Foreign(started["pid"].as_u64().expect("pid") as u32);
    old.expect_log("upgrade: new process serving; stopping accepting and draining")
        .await;
    let ready = systemd.next().await;
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert_eq!(
        main_pid(&ready),
        successor.0,
        "systemd follows the new process"
    );

    stream.finish().await.expect("stream unharmed");
    assert!(old.exit(Duration::from_secs(10)).await.success());
    old.expect_log("stopped").await; // the old process's own last line
    let after = systemd.pending();
    assert!(
        after.iter().all(|m| !m.contains("STOPPING=1")),
        "the old process must not stop the unit: {after:?}"
    );
    assert_eq!(placement(50, addr).await.len(), 50, "the new one serves");
    let report = finish(load).await;
    assert_eq!(report.failed, 0, "{report:?}");

    // The unit's stop now reaches the new process.
    successor.signal("TERM");
    let stopping = systemd.next().await;
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping:?}");
    old.expect_log("stopped").await; // the successor's
}

/// The `listening` lines of `n` services, by service name.
async fn listening(tandem: &mut Tandem, n: usize) -> std::collections::HashMap<String, SocketAddr> {
    let mut out = std::collections::HashMap::new();
    for _ in 0..n {
        let line = tandem.expect_log("listening").await;
        let addr = line["listen"].as_str().and_then(|s| s.parse().ok());
        let name = line["service"].as_str().map(str::to_string);
        out.insert(name.expect("service"), addr.expect("listen address"));
    }
    out
}

/// The status line of `GET /healthz` on the admin API.
async fn healthz(admin: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(admin)
        .await
        .expect("admin connects");
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: tandem\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    conn.read_to_string(&mut response).await.expect("response");
    response.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn services_and_the_admin_api_are_matched_added_and_dropped() {
    let members = members("mx", 164, 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let old_path = dir.path().join("old.toml");
    let new_path = dir.path().join("new.toml");
    let socket = dir.path().join("upgrade.sock");
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let pool = pool_toml("dc1", &members) + &fast_tcp_check(1, 1);
    let old_toml =
        pool.clone() + &service_toml("fe", "dc1", "") + &service_toml("gone", "dc1", "") + admin;
    let new_toml =
        pool + &service_toml("fe", "dc1", "") + &service_toml("fresh", "dc1", "") + admin;
    std::fs::write(&old_path, old_toml).expect("write");
    std::fs::write(&new_path, new_toml).expect("write");

    let mut old = old_process(&old_path, &socket);
    let before = listening(&mut old, 2).await;
    old.expect_log("upgrade socket listening").await;
    let old_admin = old.addr_of("admin API listening").await;

    let mut new = new_process(&new_path, &socket);
    let after = listening(&mut new, 2).await;
    let closed = new
        .expect_log("upgrade: inherited socket not in the new config; closed")
        .await;
    assert_eq!(closed["service"], "gone", "{closed}");
    assert_eq!(after["fe"], before["fe"], "fe keeps its socket");
    assert_eq!(
        new.addr_of("admin API listening").await,
        old_admin,
        "the admin API keeps its socket"
    );
    old.expect_log("upgrade: new process serving; stopping accepting and draining")
        .await;
    assert!(old.exit(Duration::from_secs(10)).await.success());

    who_serves(client_ip(990), after["fe"]).await.expect("fe");
    who_serves(client_ip(991), after["fresh"])
        .await
        .expect("fresh");
    let gone = who_serves(client_ip(992), before["gone"]).await;
    assert_eq!(
        gone.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "a service the new config dropped is closed once the old process is gone"
    );
    assert!(healthz(old_admin).await.contains(" 200 "));

    new.signal("TERM");
    assert!(new.exit(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn the_successor_can_be_upgraded_in_turn() {
    let members = members("ch", 166, 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let socket = dir.path().join("upgrade.sock");
    std::fs::write(&path, config(&members)).expect("write");

    let mut first = old_process(&path, &socket);
    let addr = first.addr_of("listening").await;
    first.expect_log("upgrade socket listening").await;
    let load = loads(addr);

    let mut second = new_process(&path, &socket);
    take_over(&mut first, &mut second, addr).await;
    assert!(first.exit(Duration::from_secs(10)).await.success());
    // The first process left the control socket file to its successor.
    assert!(socket.exists());

    let mut third = new_process(&path, &socket);
    take_over(&mut second, &mut third, addr).await;
    assert!(second.exit(Duration::from_secs(10)).await.success());
    assert_eq!(placement(50, addr).await.len(), 50);
    let report = finish(load).await;
    assert_eq!(report.failed, 0, "{report:?}");

    third.signal("TERM");
    assert!(third.exit(Duration::from_secs(10)).await.success());
    assert!(!socket.exists(), "removed by its last owner");
}

/// A reload the old process applies after it has handed its sockets over (so after the new
/// process read the file) must not be lost when the old one stops: the new process reads the
/// file again once the old one has stopped taking requests, and reloads it if it changed.
#[tokio::test]
async fn a_reload_applied_by_the_old_process_during_the_handoff_reaches_the_new_one() {
    let members = members("rh", 168, 3).await;
    // Accepts no connection and answers nothing: an http check on it lasts its whole timeout,
    // which holds the new process in its first health round, after it read its config.
    let silent = std::net::TcpListener::bind("127.0.1.171:0").expect("bind");
    let slow = pool_toml_of("slow", [silent.local_addr().expect("addr")], "")
        + "  [[pool.check]]\n  kind = \"http\"\n  interval = \"2s\"\n  timeout = \"1s\"\n";
    let config = |members: &[DemoMember]| {
        pool_toml("dc1", members)
            + &fast_tcp_check(1, 1)
            + &slow
            + &service_toml("fe", "dc1", "backup_pool = \"slow\"\n")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let socket = dir.path().join("upgrade.sock");
    std::fs::write(&path, config(&members[..2])).expect("write");

    let mut old = old_process(&path, &socket);
    let addr = old.addr_of("listening").await;
    old.expect_log("upgrade socket listening").await;

    let mut new = new_process(&path, &socket);
    new.expect_log("starting").await; // its config is read
    std::fs::write(&path, config(&members)).expect("write");
    old.signal("HUP");
    old.expect_log("config reload applied").await;
    take_over(&mut old, &mut new, addr).await;
    assert!(old.exit(Duration::from_secs(10)).await.success());
    new.expect_log("config file changed during the upgrade: reloading")
        .await;

    // The third member, which only the reloaded file has, gets clients from the new process.
    eventually(
        "the new process serves the reloaded file",
        Duration::from_secs(10),
        || async { placement(64, addr).await.iter().any(|m| m == "rh3") },
    )
    .await;

    new.signal("TERM");
    assert!(new.exit(Duration::from_secs(10)).await.success());
}
