//! BGP announcements against a real router: BIRD 2 in a "router" network namespace, tandem
//! (the binary) in a "host" namespace, joined by a veth pair on 198.18.0.0/30 (the
//! benchmarking range, RFC 2544). Each test builds its own pair of namespaces, so the tests run
//! in parallel with the same addresses. The router's view is read with `birdc show route` and
//! `birdc show protocols`; the times measured are printed (`-- --nocapture` shows them).
//!
//! BIRD exports nothing to the router namespace's kernel: a static route sends the test
//! client's packets to the VIP, so a connection outlives the withdrawal as it would through
//! another path, and the BGP route is observed in BIRD's table alone.
//!
//! Needs root, iproute2, python3 and bird2 (`apt-get install bird2`); ignored by default, and
//! each fails naming what is missing when run without it.

#[path = "common/process.rs"]
mod process;

#[path = "common/command.rs"]
mod command;

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use process::Tandem;

const IP: &str = "/usr/sbin/ip";
/// The router's side of the veth, its BGP address.
const ROUTER: &str = "198.18.0.1";
/// tandem's side: the session's local address, so the next hop of its routes.
const HOST: &str = "198.18.0.2";
/// Service addresses, on the host namespace's loopback.
const VIP1: &str = "198.18.100.10";
const VIP2: &str = "198.18.100.11";
const MEMBER_PORT: u16 = 7000;

/// A TCP echo member.
const ECHO_PY: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("listening", flush=True)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn missing(test: &str, what: &str) -> ! {
    panic!(
        "{test}: this machine lacks {what}. The BGP tests run as root with iproute2, python3 and \
         bird2 (apt-get install bird2), as .ci/run does; plain `cargo test` lists them as ignored."
    )
}

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    command::output(program, args)
}

/// The two namespaces, BIRD in the router one, and a scratch directory.
struct Lab {
    test: &'static str,
    router_ns: String,
    host_ns: String,
    dir: tempfile::TempDir,
    bird: Option<Child>,
    members: Vec<Child>,
}

impl Lab {
    fn create(test: &'static str) -> Lab {
        if !command::is_root() {
            missing(test, "root (network namespaces need CAP_SYS_ADMIN)");
        }
        if !Path::new(IP).exists() {
            missing(test, &format!("{IP} (apt-get install iproute2)"));
        }
        if !runs("bird", "--version") || !runs("birdc", "-h") {
            missing(test, "bird and birdc (apt-get install bird2)");
        }
        if !runs("python3", "--version") {
            missing(test, "python3");
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mut lab = Lab {
            test,
            router_ns: format!("tbgp-r-{pid}-{n}"),
            host_ns: format!("tbgp-h-{pid}-{n}"),
            dir: tempfile::tempdir().expect("tempdir"),
            bird: None,
            members: Vec::new(),
        };
        let (r, h) = (lab.router_ns.clone(), lab.host_ns.clone());
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &r],
            vec!["netns", "add", &h],
            vec!["-n", &r, "link", "set", "lo", "up"],
            vec!["-n", &h, "link", "set", "lo", "up"],
            vec![
                "-n", &r, "link", "add", "r0", "type", "veth", "peer", "name", "h0", "netns", &h,
            ],
            vec!["-n", &r, "addr", "add", "198.18.0.1/30", "dev", "r0"],
            vec!["-n", &h, "addr", "add", "198.18.0.2/30", "dev", "h0"],
            vec!["-n", &r, "link", "set", "r0", "up"],
            vec!["-n", &h, "link", "set", "h0", "up"],
            vec!["-n", &h, "addr", "add", "198.18.100.10/32", "dev", "lo"],
            vec!["-n", &h, "addr", "add", "198.18.100.11/32", "dev", "lo"],
            vec!["-n", &r, "route", "add", "198.18.100.0/24", "via", HOST],
        ];
        for args in steps {
            if let Err(e) = run(IP, &args) {
                missing(test, &format!("working network namespaces ({e})"));
            }
        }
        lab.start_bird();
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_bird(&mut self) {
        let conf = format!(
            "router id {ROUTER};\n\
             timeformat protocol iso long ms;\n\
             protocol device {{}}\n\
             protocol bgp tandem1 {{\n\
               local {ROUTER} as 65000;\n\
               neighbor {HOST} as 65010;\n\
               passive on;\n\
               ipv4 {{ import all; export none; }};\n\
             }}\n"
        );
        let path = self.path("bird.conf");
        std::fs::write(&path, conf).expect("write bird.conf");
        let child = Command::new(IP)
            .args(["netns", "exec", &self.router_ns, "bird", "-f", "-c"])
            .arg(&path)
            .arg("-s")
            .arg(self.path("bird.sock"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| missing(self.test, &format!("a runnable bird ({e})")));
        self.bird = Some(child);
        // birdc answers once BIRD has read its config and opened its socket.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.birdc(&["show", "status"]).is_err() {
            assert!(Instant::now() < deadline, "BIRD did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn birdc(&self, args: &[&str]) -> Result<String, String> {
        let sock = self.path("bird.sock");
        let mut all = vec!["-s", sock.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        run("birdc", &all)
    }

    /// Whether BIRD has a route for `vip`/32 from tandem.
    fn has_route(&self, vip: &str) -> bool {
        has_route(&self.path("bird.sock"), vip)
    }

    /// BIRD's import counters of the session: (updates received, withdraws received), from
    /// `show protocols all`.
    fn import_stats(&self) -> (u64, u64) {
        let out = self
            .birdc(&["show", "protocols", "all", "tandem1"])
            .expect("birdc show protocols all");
        let received = |label: &str| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {label:?} count in {out}"))
        };
        (received("Import updates:"), received("Import withdraws:"))
    }

    /// The BGP session as BIRD shows it: (state, since) of `show protocols tandem1`.
    fn session(&self) -> (String, String) {
        let out = self
            .birdc(&["show", "protocols", "tandem1"])
            .expect("birdc show protocols");
        let line = out
            .lines()
            .find(|l| l.starts_with("tandem1"))
            .unwrap_or_else(|| panic!("no tandem1 in {out}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Name Proto Table State Since(date time) Info
        let since = format!("{} {}", cols[4], cols[5]);
        let info = cols.get(6).copied().unwrap_or("").to_string();
        (info, since)
    }

    /// Polls BIRD until the route for `vip` is `present`; the time it took. A measurement, not
    /// a synchronisation: the router has no event to wait on from here.
    async fn wait_route(&self, vip: &str, present: bool, limit: Duration) -> Duration {
        let start = Instant::now();
        while self.has_route(vip) != present {
            assert!(
                start.elapsed() < limit,
                "the route for {vip} was not {} within {limit:?}",
                if present { "announced" } else { "withdrawn" }
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start.elapsed()
    }

    /// Starts an echo member on 127.0.0.1:`port` in the host namespace.
    fn start_member(&mut self, port: u16) {
        let mut child = Command::new(IP)
            .args(["netns", "exec", &self.host_ns, "python3", "-c", ECHO_PY])
            .args(["127.0.0.1", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 member");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("member says it listens");
        assert_eq!(line.trim(), "listening");
        self.members.push(child);
    }

    fn kill_members(&mut self) {
        for mut m in self.members.drain(..) {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    /// Writes `config` and runs tandem on it in the host namespace.
    fn tandem(&self, config: &str, extra: &str) -> Tandem {
        let path = self.path("tandem.toml");
        std::fs::write(&path, config).expect("write tandem.toml");
        // `ip netns exec` execs tandem: the child's pid is tandem's, for the signals.
        Tandem::spawn_shell(&format!(
            "exec {IP} netns exec {ns} {bin} run --log-format json --no-watch \
             --upgrade-socket {sock} {extra} -c {path}",
            ns = self.host_ns,
            bin = env!("CARGO_BIN_EXE_tandem"),
            sock = self.path("upgrade.sock").display(),
            path = path.display(),
        ))
    }

    /// A TCP connection from the router namespace to `addr`, made by a thread that joined it
    /// (a socket stays in the namespace it was made in).
    fn connect_from_router(&self, addr: SocketAddr) -> TcpStream {
        let ns = format!("/run/netns/{}", self.router_ns);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&ns).expect("open the router namespace");
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the VIP")
        })
        .join()
        .expect("connect thread")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill_members();
        if let Some(mut bird) = self.bird.take() {
            let _ = bird.kill();
            let _ = bird.wait();
        }
        let _ = run(IP, &["netns", "del", &self.router_ns]);
        let _ = run(IP, &["netns", "del", &self.host_ns]);
    }
}

/// Whether the BIRD on control socket `sock` has a route for `vip`/32 from tandem.
fn has_route(sock: &Path, vip: &str) -> bool {
    let prefix = format!("{vip}/32");
    let sock = sock.to_str().expect("utf-8 path");
    run("birdc", &["-s", sock, "show", "route", "for", &prefix])
        .map(|out| {
            out.lines()
                .any(|l| l.starts_with(&prefix) && l.contains("[tandem1"))
        })
        .unwrap_or(false)
}

/// A config with a `[bgp]` speaker peering with the router, and one service per `(vip,
/// announce)` in front of the echo member, checked every 100 ms.
fn config(hold_time: &str, services: &[(&str, bool)]) -> String {
    let mut c = format!(
        r#"[bgp]
asn = 65010
router_id = "{HOST}"
hold_time = "{hold_time}"
  [[bgp.peer]]
  address = "{ROUTER}"
  asn = 65000

[[pool]]
name = "p"
members = [{{ addr = "127.0.0.1:{MEMBER_PORT}" }}]
  [[pool.check]]
  kind = "tcp"
  interval = "100ms"
  timeout = "100ms"
  rise = 1
  fall = 1
"#
    );
    for (i, (vip, announce)) in services.iter().enumerate() {
        c.push_str(&format!(
            "\n[[service]]\nname = \"s{}\"\nlisten = \"{vip}:80\"\npool = \"p\"\nannounce = {announce}\n",
            i + 1
        ));
    }
    c
}

/// One echo round trip on `conn`.
fn echo(conn: &mut TcpStream, text: &str) {
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(text.as_bytes()).expect("write");
    let mut back = vec![0u8; text.len()];
    conn.read_exact(&mut back).expect("read the echo");
    assert_eq!(back, text.as_bytes());
}

#[tokio::test]
#[ignore = "needs root, ip netns and bird2 (CI runs it: cargo test -- --include-ignored)"]
async fn the_route_follows_the_pool_up_down_and_up() {
    let mut lab = Lab::create("the_route_follows_the_pool_up_down_and_up");
    lab.start_member(MEMBER_PORT);
    let started = Instant::now();
    let mut tandem = lab.tandem(&config("9s", &[(VIP1, true), (VIP2, false)]), "");
    tandem.expect_log("bgp: session established").await;
    lab.wait_route(VIP1, true, Duration::from_secs(10)).await;
    println!(
        "measured: start to route announced: {} ms",
        started.elapsed().as_millis()
    );
    assert!(!lab.has_route(VIP2), "announce = false is not announced");
    let (state, _) = lab.session();
    assert_eq!(state, "Established");

    // The whole pool goes down: the route goes.
    lab.kill_members();
    let took = lab.wait_route(VIP1, false, Duration::from_secs(5)).await;
    println!(
        "measured: pool down (member killed) to route withdrawn: {} ms (health check every 100 ms, fall 1)",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(2), "withdrawal took {took:?}");

    // And comes back with the pool.
    lab.start_member(MEMBER_PORT);
    let took = lab.wait_route(VIP1, true, Duration::from_secs(5)).await;
    println!(
        "measured: member back to route announced: {} ms",
        took.as_millis()
    );
    let (state, _) = lab.session();
    assert_eq!(state, "Established", "the session stayed up throughout");
}

#[tokio::test]
#[ignore = "needs root, ip netns and bird2 (CI runs it: cargo test -- --include-ignored)"]
async fn sigterm_withdraws_first_then_drains_an_open_connection() {
    let mut lab = Lab::create("sigterm_withdraws_first_then_drains_an_open_connection");
    lab.start_member(MEMBER_PORT);
    let mut tandem = lab.tandem(&config("9s", &[(VIP1, true)]), "--shutdown-grace 30s");
    tandem.expect_log("bgp: session established").await;
    lab.wait_route(VIP1, true, Duration::from_secs(10)).await;
    let mut conn = lab.connect_from_router(format!("{VIP1}:80").parse().expect("addr"));
    echo(&mut conn, "before");

    let stopped = Instant::now();
    tandem.signal("TERM");
    let withdrawn = lab.wait_route(VIP1, false, Duration::from_secs(5)).await;
    println!(
        "measured: SIGTERM to route withdrawn: {} ms",
        withdrawn.as_millis()
    );
    assert!(
        tandem.child.try_wait().expect("try_wait").is_none(),
        "tandem still runs once the route is gone"
    );
    // Withdraw first, then drain: the withdrawal is done (and logged) before the listeners
    // close and the drain starts, and the open connection lives on through it.
    tandem.expect_log("bgp: routes withdrawn").await;
    tandem.expect_log("draining open connections").await;
    echo(&mut conn, "after the withdrawal, while draining");
    drop(conn);
    let status = tandem.exit(Duration::from_secs(10)).await;
    println!(
        "measured: SIGTERM to exit once the connection closed: {} ms",
        stopped.elapsed().as_millis()
    );
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
#[ignore = "needs root, ip netns and bird2 (CI runs it: cargo test -- --include-ignored)"]
async fn kill_9_loses_the_route_within_a_second() {
    let mut lab = Lab::create("kill_9_loses_the_route_within_a_second");
    lab.start_member(MEMBER_PORT);
    let mut tandem = lab.tandem(&config("9s", &[(VIP1, true)]), "");
    tandem.expect_log("bgp: session established").await;
    lab.wait_route(VIP1, true, Duration::from_secs(10)).await;
    tandem.signal("KILL");
    let took = lab.wait_route(VIP1, false, Duration::from_secs(5)).await;
    println!(
        "measured: kill -9 to route withdrawn: {} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(1), "withdrawal took {took:?}");
    let _ = tandem.exit(Duration::from_secs(5)).await;
}

#[tokio::test]
#[ignore = "needs root, ip netns and bird2 (CI runs it: cargo test -- --include-ignored)"]
async fn a_hung_tandem_loses_the_route_within_the_hold_time() {
    let mut lab = Lab::create("a_hung_tandem_loses_the_route_within_the_hold_time");
    lab.start_member(MEMBER_PORT);
    let mut tandem = lab.tandem(&config("3s", &[(VIP1, true)]), "");
    tandem.expect_log("bgp: session established").await;
    lab.wait_route(VIP1, true, Duration::from_secs(10)).await;
    tandem.signal("STOP");
    let took = lab.wait_route(VIP1, false, Duration::from_secs(10)).await;
    tandem.signal("CONT");
    println!(
        "measured: SIGSTOP to route withdrawn (hold_time 3s): {} ms",
        took.as_millis()
    );
    assert!(
        took <= Duration::from_millis(3_500),
        "withdrawal took {took:?}, more than the 3 s hold time"
    );
    tandem.signal("KILL");
    let _ = tandem.exit(Duration::from_secs(5)).await;
}

#[tokio::test]
#[ignore = "needs root, ip netns and bird2 (CI runs it: cargo test -- --include-ignored)"]
async fn a_reload_toggling_announce_changes_routes_not_the_session() {
    let mut lab = Lab::create("a_reload_toggling_announce_changes_routes_not_the_session");
    lab.start_member(MEMBER_PORT);
    let mut tandem = lab.tandem(&config("9s", &[(VIP1, true), (VIP2, false)]), "");
    tandem.expect_log("bgp: session established").await;
    lab.wait_route(VIP1, true, Duration::from_secs(10)).await;
    let before = lab.session();
    assert_eq!(before.0, "Established");

    std::fs::write(
        lab.path("tandem.toml"),
        config("9s", &[(VIP1, false), (VIP2, true)]),
    )
    .expect("rewrite the config");
    tandem.signal("HUP");
    tandem.expect_log("config reload applied").await;
    let took = lab.wait_route(VIP2, true, Duration::from_secs(5)).await;
    lab.wait_route(VIP1, false, Duration::from_secs(5)).await;
    println!(
        "measured: reload to the new route announced: {} ms",
        took.as_millis()
    );
    assert_eq!(
        lab.session(),
        before,
        "the session is the same one (state and since unchanged)"
    );

    // Both announced, then none: still the same session.
    std::fs::write(
        lab.path("tandem.toml"),
        config("9s", &[(VIP1, true), (VIP2, true)]),
    )
    .expect("rewrite the config");
    tandem.signal("HUP");
    tandem.expect_log("config reload applied").await;
    lab.wait_route(VIP1, true, Duration::from_secs(5)).await;
    assert!(lab.has_route(VIP2));
    assert_eq!(lab.session(), before);
    tandem.signal("KILL");
    let _ = tandem.exit(Duration::from_secs(5)).await;
}

/// A binary upgrade hands the BGP session over with the listeners: the router keeps the route
/// the whole time and has the same session throughout (state and since unchanged, not one
/// withdrawal or re-announcement). Then the new process alone drives it: the pool going down
/// withdraws, coming back announces, and kill -9 still drops the route within a second.
#[tokio::test]
#[ignore = "needs root, ip netns and bird2 (CI runs it: cargo test -- --include-ignored)"]
async fn a_binary_upgrade_keeps_the_session_and_the_route() {
    let mut lab = Lab::create("a_binary_upgrade_keeps_the_session_and_the_route");
    lab.start_member(MEMBER_PORT);
    // A 3 s hold time: KEEPALIVEs every second, so the window below covers two whole hold
    // times of the new process keeping the session alive on its own.
    let cfg = config("3s", &[(VIP1, true)]);
    let mut old = lab.tandem(&cfg, "");
    old.expect_log("bgp: session established").await;
    lab.wait_route(VIP1, true, Duration::from_secs(10)).await;
    let before = lab.session();
    assert_eq!(before.0, "Established");
    let stats_before = lab.import_stats();
    assert_eq!(stats_before, (1, 0), "one announcement, no withdrawal yet");

    let watch = RouteWatch::start(lab.path("bird.sock"), VIP1);
    let sock = lab.path("upgrade.sock");
    let mut new = lab.tandem(&cfg, &format!("--upgrade-from {}", sock.display()));
    old.expect_log("bgp: sessions handed over to the new process")
        .await;
    new.expect_log("bgp: session taken over from the previous process")
        .await;
    let status = old.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "the old process ends cleanly: {status:?}");
    // The measurement window, not a synchronisation: the router's view is polled for two
    // hold times past the handoff; a KEEPALIVE the new process missed would end the session
    // (and take the route) inside it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let seen = watch.stop();
    println!(
        "measured: binary upgrade: route absent in {} of {} polls of `birdc show route` \
         (one every {:.1} ms on average, longest gap between polls {} ms)",
        seen.absent,
        seen.polls,
        seen.span.as_secs_f64() * 1000.0 / seen.polls.max(1) as f64,
        seen.longest_gap.as_millis()
    );
    assert!(seen.polls > 100, "too few polls to tell: {seen:?}");
    assert_eq!(seen.absent, 0, "the route was gone during the upgrade");
    assert_eq!(
        lab.session(),
        before,
        "the same session: state and since unchanged"
    );
    assert_eq!(
        lab.import_stats(),
        stats_before,
        "the router saw no withdrawal and no new announcement"
    );

    // The new process drives the route now.
    lab.kill_members();
    let took = lab.wait_route(VIP1, false, Duration::from_secs(5)).await;
    println!(
        "measured: after the upgrade, pool down to route withdrawn: {} ms",
        took.as_millis()
    );
    lab.start_member(MEMBER_PORT);
    lab.wait_route(VIP1, true, Duration::from_secs(5)).await;
    assert_eq!(lab.session(), before, "still the same session");
    new.signal("KILL");
    let took = lab.wait_route(VIP1, false, Duration::from_secs(5)).await;
    println!(
        "measured: after the upgrade, kill -9 to route withdrawn: {} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(1), "withdrawal took {took:?}");
    let _ = new.exit(Duration::from_secs(5)).await;
}

/// What [`RouteWatch`] saw.
#[derive(Debug)]
struct Seen {
    polls: u64,
    absent: u64,
    span: Duration,
    longest_gap: Duration,
}

/// Polls BIRD for a route, as fast as birdc answers, on a thread of its own until stopped.
struct RouteWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Seen>,
}

impl RouteWatch {
    fn start(sock: PathBuf, vip: &'static str) -> RouteWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let started = Instant::now();
                let mut seen = Seen {
                    polls: 0,
                    absent: 0,
                    span: Duration::ZERO,
                    longest_gap: Duration::ZERO,
                };
                let mut last = started;
                while !stop.load(Ordering::Relaxed) {
                    if !has_route(&sock, vip) {
                        seen.absent += 1;
                    }
                    seen.polls += 1;
                    let now = Instant::now();
                    seen.longest_gap = seen.longest_gap.max(now - last);
                    last = now;
                }
                seen.span = started.elapsed();
                seen
            }
        });
        RouteWatch { stop, thread }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("route watch thread")
    }
}

/// The new process of an upgrade announces what its own config wants, on the session it took
/// over: here another address, then (a second upgrade, of the process that had taken over)
/// the first one again. The router keeps one session throughout.
#[tokio::test]
#[ignore = "needs root, ip netns and bird2 (CI runs it: cargo test -- --include-ignored)"]
async fn upgrades_to_another_config_change_routes_on_the_same_session() {
    let mut lab = Lab::create("upgrades_to_another_config_change_routes_on_the_same_session");
    lab.start_member(MEMBER_PORT);
    let mut first = lab.tandem(&config("9s", &[(VIP1, true), (VIP2, false)]), "");
    first.expect_log("bgp: session established").await;
    lab.wait_route(VIP1, true, Duration::from_secs(10)).await;
    let before = lab.session();
    let sock = lab.path("upgrade.sock");
    let upgrade = format!("--upgrade-from {}", sock.display());

    let mut second = lab.tandem(&config("9s", &[(VIP1, false), (VIP2, true)]), &upgrade);
    second
        .expect_log("bgp: session taken over from the previous process")
        .await;
    let took = lab.wait_route(VIP2, true, Duration::from_secs(5)).await;
    lab.wait_route(VIP1, false, Duration::from_secs(5)).await;
    println!(
        "measured: upgrade to a config announcing another address: new route {} ms after the takeover",
        took.as_millis()
    );
    assert_eq!(lab.session(), before, "the same session");
    assert!(first.exit(Duration::from_secs(10)).await.success());

    let mut third = lab.tandem(&config("9s", &[(VIP1, true), (VIP2, false)]), &upgrade);
    third
        .expect_log("bgp: session taken over from the previous process")
        .await;
    lab.wait_route(VIP1, true, Duration::from_secs(5)).await;
    lab.wait_route(VIP2, false, Duration::from_secs(5)).await;
    assert_eq!(lab.session(), before, "still the same session");
    assert!(second.exit(Duration::from_secs(10)).await.success());
    third.signal("KILL");
    let _ = third.exit(Duration::from_secs(5)).await;
}

/// A session the new process cannot take up (its config changes `hold_time`, which is in the
/// OPEN) ends with a Cease, and the new process opens its own: the route is gone until then,
/// as every upgrade was before sessions were handed over.
#[tokio::test]
#[ignore = "needs root, ip netns and bird2 (CI runs it: cargo test -- --include-ignored)"]
async fn a_session_the_new_process_cannot_adopt_is_replaced_by_a_new_one() {
    let mut lab = Lab::create("a_session_the_new_process_cannot_adopt_is_replaced_by_a_new_one");
    lab.start_member(MEMBER_PORT);
    let mut old = lab.tandem(&config("9s", &[(VIP1, true)]), "");
    old.expect_log("bgp: session established").await;
    lab.wait_route(VIP1, true, Duration::from_secs(10)).await;
    let before = lab.session();
    let sock = lab.path("upgrade.sock");
    let mut new = lab.tandem(
        &config("6s", &[(VIP1, true)]),
        &format!("--upgrade-from {}", sock.display()),
    );
    let line = new
        .expect_log("bgp: cannot adopt the session handed over; opening a new one")
        .await;
    println!("logged: {}", line["reason"]);
    new.expect_log("bgp: session established").await;
    let took = lab.wait_route(VIP1, true, Duration::from_secs(5)).await;
    println!(
        "measured: fallback to a new session: route back {} ms after it was established",
        took.as_millis()
    );
    let after = lab.session();
    assert_eq!(after.0, "Established");
    assert_ne!(after.1, before.1, "a new session");
    assert!(old.exit(Duration::from_secs(10)).await.success());
    new.signal("KILL");
    let _ = new.exit(Duration::from_secs(5)).await;
}
