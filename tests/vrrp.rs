//! A VRRP pair: two tandem instances with the same config, each beside a keepalived running
//! `examples/keepalived.conf` (the shipped file, with its per-machine lines substituted), on one
//! LAN segment with a client and the members. The LAN is a bridge in a "switch" namespace, with
//! a veth to each of the client, tandem A, tandem B and member namespaces, on 198.18.1.0/24 (the
//! benchmarking range, RFC 2544); every test builds its own namespaces, so the tests run in
//! parallel with the same addresses. tandem listens on the VIP in both namespaces (IP_FREEBIND:
//! no `ip_nonlocal_bind` sysctl); keepalived moves the VIP. The times measured are printed
//! (`-- --nocapture` shows them).
//!
//! Needs root, iproute2, python3, curl and keepalived (`apt-get install keepalived`); ignored by
//! default, and each fails naming what is missing when run without it.

#[path = "common/process.rs"]
mod process;

#[allow(dead_code)] // the fault tests' harness: this file uses its command helpers
mod netns;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use netns::lan::{self, Greeting};
use netns::{IP, on_ns_thread, run};
use process::Tandem;

/// The interface name inside each namespace (the shipped file says `eth0`: substituted, so the
/// test proves the substitution a second machine needs).
const LAN_IF: &str = "lan0";
const TANDEM_A: &str = "198.18.1.2";
const TANDEM_B: &str = "198.18.1.3";
const MEMBER_HOST: &str = "198.18.1.50";
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
/// The client's own address; the 100 client addresses follow it (.101 to .200).
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
const CLIENTS: u8 = 100;
/// The first of them: the one that times the move.
const CLIENT_ONE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 101);
const MEMBERS: [&str; 3] = ["m1", "m2", "m3"];
const FIRST_MEMBER_PORT: u16 = 7001;
/// The admin API of each tandem, on its namespace's loopback: what keepalived's check polls.
const ADMIN: &str = "127.0.0.1:9901";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn missing(test: &str, what: &str) -> ! {
    panic!(
        "{test}: this machine lacks {what}. The VRRP tests run as root with iproute2, python3, \
         curl and keepalived (apt-get install keepalived), as .ci/run does; plain `cargo test` \
         lists them as ignored."
    )
}

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One tandem machine: its namespace, tandem and keepalived.
struct Machine {
    ns: String,
    router_id: &'static str,
    priority: u8,
    tandem: Option<Tandem>,
    keepalived: Option<Child>,
}

/// The namespaces, the members and a scratch directory.
struct Lab {
    test: &'static str,
    switch: String,
    client: String,
    members_ns: String,
    a: Machine,
    b: Machine,
    dir: tempfile::TempDir,
    members: Option<Child>,
}

impl Lab {
    fn create(test: &'static str) -> Lab {
        if !netns::command::is_root() {
            missing(test, "root (network namespaces need CAP_SYS_ADMIN)");
        }
        if !Path::new(IP).exists() {
            missing(test, &format!("{IP} (apt-get install iproute2)"));
        }
        if !runs("keepalived", "--version") {
            missing(test, "keepalived (apt-get install keepalived)");
        }
        if !runs("python3", "--version") {
            missing(test, "python3");
        }
        if !Path::new("/usr/bin/curl").exists() {
            missing(
                test,
                "/usr/bin/curl, which keepalived.conf's check runs (apt-get install curl)",
            );
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let ns = |role: &str| format!("tvrrp-{role}-{pid}-{n}");
        let machine = |role: &str, router_id, priority| Machine {
            ns: ns(role),
            router_id,
            priority,
            tandem: None,
            keepalived: None,
        };
        let mut lab = Lab {
            test,
            switch: ns("sw"),
            client: ns("cl"),
            members_ns: ns("m"),
            a: machine("a", "tandem-a", 150),
            b: machine("b", "tandem-b", 100),
            dir: tempfile::tempdir().expect("tempdir"),
            members: None,
        };
        let sw = lab.switch.clone();
        let mut steps: Vec<Vec<String>> = vec![
            vec!["netns", "add", &sw],
            vec!["-n", &sw, "link", "set", "lo", "up"],
            vec!["-n", &sw, "link", "add", "br0", "type", "bridge"],
            vec!["-n", &sw, "link", "set", "br0", "up"],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(String::from).collect())
        .collect();
        let hosts = [
            (lab.client.clone(), CLIENT.to_string()),
            (lab.a.ns.clone(), TANDEM_A.to_string()),
            (lab.b.ns.clone(), TANDEM_B.to_string()),
            (lab.members_ns.clone(), MEMBER_HOST.to_string()),
        ];
        for (i, (host, addr)) in hosts.iter().enumerate() {
            let port = format!("p{i}");
            let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
            steps.extend([
                s(&["netns", "add", host]),
                s(&["-n", host, "link", "set", "lo", "up"]),
                s(&[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", LAN_IF,
                    "netns", host,
                ]),
                s(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]),
                s(&[
                    "-n",
                    host,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    LAN_IF,
                ]),
                s(&["-n", host, "link", "set", LAN_IF, "up"]),
            ]);
        }
        for i in 1..=CLIENTS {
            let addr = Ipv4Addr::from(u32::from(CLIENT) + u32::from(i));
            steps.push(
                [
                    "-n",
                    &lab.client,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    LAN_IF,
                ]
                .map(String::from)
                .to_vec(),
            );
        }
        for args in steps {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = run(IP, &args) {
                missing(test, &format!("working network namespaces ({e})"));
            }
        }
        lab.start_members();
        std::fs::write(lab.path("tandem.toml"), tandem_config()).expect("write tandem.toml");
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_members(&mut self) {
        let child = lan::start_members(&self.members_ns, MEMBER_HOST, FIRST_MEMBER_PORT, &MEMBERS)
            .unwrap_or_else(|e| missing(self.test, &format!("running members ({e})")));
        self.members = Some(child);
    }

    fn machine(&mut self, which: char) -> &mut Machine {
        if which == 'a' {
            &mut self.a
        } else {
            &mut self.b
        }
    }

    /// Starts tandem on the shared config in machine `which`'s namespace; returns once both
    /// services listen.
    async fn start_tandem(&mut self, which: char) {
        let config = self.path("tandem.toml");
        let m = self.machine(which);
        // `ip netns exec` execs tandem: the child's pid is tandem's, for the signals.
        let mut tandem = Tandem::spawn_shell(&format!(
            "exec {IP} netns exec {ns} {bin} run --log-format json --no-watch -c {config}",
            ns = m.ns,
            bin = env!("CARGO_BIN_EXE_tandem"),
            config = config.display(),
        ));
        tandem.expect_log("listening").await;
        tandem.expect_log("listening").await;
        m.tandem = Some(tandem);
    }

    /// Starts keepalived in machine `which`'s namespace on the shipped example, substituted.
    fn start_keepalived(&mut self, which: char) {
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/keepalived.conf"
        ))
        .expect("read examples/keepalived.conf");
        let (ns, router_id, priority) = {
            let m = self.machine(which);
            (m.ns.clone(), m.router_id, m.priority)
        };
        let conf = keepalived_config(&example, router_id, priority);
        let file = |ext: &str| self.path(&format!("keepalived-{which}.{ext}"));
        std::fs::write(file("conf"), conf).expect("write keepalived.conf");
        let log = std::fs::File::create(file("log")).expect("keepalived log");
        let child = Command::new(IP)
            .args(["netns", "exec", &ns, "keepalived", "-n", "-l", "-D", "-f"])
            .arg(file("conf"))
            .arg("-p")
            .arg(file("pid"))
            .arg("-r")
            .arg(file("vrrp.pid"))
            .arg("-c")
            .arg(file("checkers.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| missing(self.test, &format!("a runnable keepalived ({e})")));
        self.machine(which).keepalived = Some(child);
    }

    fn keepalived_log(&self, which: char) -> String {
        std::fs::read_to_string(self.path(&format!("keepalived-{which}.log"))).unwrap_or_default()
    }

    /// Whether machine `which` holds the VIP on its LAN interface.
    fn holds_vip(&mut self, which: char) -> bool {
        let ns = self.machine(which).ns.clone();
        netns::in_ns(&ns, IP, &["-4", "addr", "show", "dev", LAN_IF])
            .map(|out| out.contains(&format!(" {VIP}/")))
            .unwrap_or(false)
    }

    /// Polls until machine `which` alone holds the VIP; the time it took. A measurement, not a
    /// synchronisation: keepalived offers no event to wait on from here.
    async fn wait_vip_on(&mut self, which: char, limit: Duration) -> Duration {
        let other = if which == 'a' { 'b' } else { 'a' };
        let start = Instant::now();
        while !self.holds_vip(which) || self.holds_vip(other) {
            if start.elapsed() > limit {
                panic!(
                    "the VIP did not move to {which} within {limit:?}\n--- keepalived a:\n{}\n--- keepalived b:\n{}",
                    self.keepalived_log('a'),
                    self.keepalived_log('b')
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start.elapsed()
    }

    /// For each of the 100 client addresses, the member a new TCP connection to the VIP reached
    /// (checked with an echo round trip).
    fn members_by_client(&self) -> BTreeMap<Ipv4Addr, String> {
        on_ns_thread(&self.client, || {
            (1..=CLIENTS)
                .map(|i| {
                    let source = Ipv4Addr::from(u32::from(CLIENT) + u32::from(i));
                    let (greeting, mut conn) = connect(source, Duration::from_secs(5))
                        .unwrap_or_else(|e| panic!("client {source}: {e}"));
                    conn.write_all(b"ping\n").expect("write");
                    let mut back = [0u8; 5];
                    conn.read_exact(&mut back).expect("read the echo");
                    assert_eq!(&back, b"ping\n");
                    (source, greeting.member)
                })
                .collect()
        })
    }

    /// A connected UDP socket in the client namespace, from the client's own address to the VIP.
    fn udp_client(&self) -> UdpSocket {
        on_ns_thread(&self.client, || {
            let s = UdpSocket::bind((CLIENT, 0)).expect("bind the UDP client");
            s.connect((VIP, 53)).expect("connect the UDP client");
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            s
        })
    }

    /// Signals machine `which`'s tandem; then new connections from the client until one is
    /// greeted through the other machine: the time from the signal to that, the greeting, and
    /// how many connections the stopped one still took (sent before it handled the signal).
    async fn stop_and_time_the_move(
        &mut self,
        which: char,
        signal: &str,
    ) -> (Duration, Greeting, usize) {
        let other: IpAddr = if which == 'a' { TANDEM_B } else { TANDEM_A }
            .parse()
            .expect("address");
        let tandem = self.machine(which).tandem.take().expect("tandem runs");
        let client = self.client.clone();
        let start = Instant::now();
        tandem.signal(signal);
        let moved = tokio::task::spawn_blocking(move || {
            on_ns_thread(&client, move || {
                let mut still_served = 0;
                loop {
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "no new connection reached the other machine within 20 s"
                    );
                    match connect(CLIENT_ONE, Duration::from_millis(300)) {
                        Ok((greeting, _)) if greeting.via == other => {
                            return (start.elapsed(), greeting, still_served);
                        }
                        // Accepted before the stopped tandem handled its signal.
                        Ok(_) => still_served += 1,
                        // Refused (no listener while the VIP is still on the stopped machine)
                        // or timed out: try again, as a client would.
                        Err(_) => {}
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .await
        .expect("client thread");
        drop(tandem);
        moved
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for m in [&mut self.a, &mut self.b] {
            m.tandem = None;
            if let Some(mut k) = m.keepalived.take() {
                let _ = k.kill();
                let _ = k.wait();
            }
        }
        if let Some(mut m) = self.members.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
        for ns in [
            &self.client,
            &self.a.ns,
            &self.b.ns,
            &self.members_ns,
            &self.switch,
        ] {
            let _ = run(IP, &["netns", "del", ns]);
        }
    }
}

/// A TCP connection from `source` to the VIP's port 80 and the member's greeting.
fn connect(source: Ipv4Addr, timeout: Duration) -> Result<(Greeting, TcpStream), String> {
    lan::connect(source, SocketAddr::from((VIP, 80)), timeout)
}

/// One datagram to the VIP and its reply: the member's name. The reply must come from the VIP.
fn udp_round_trip(socket: &UdpSocket, text: &str) -> String {
    socket.send(text.as_bytes()).expect("send to the VIP");
    let mut buf = [0u8; 512];
    let (n, from) = socket.recv_from(&mut buf).expect("a reply from the VIP");
    assert_eq!(from, SocketAddr::from((VIP, 53)), "the reply's source");
    let reply = std::str::from_utf8(&buf[..n]).expect("utf-8 reply");
    let (name, echoed) = reply.split_once(' ').expect("name and echo");
    assert_eq!(echoed, text);
    name.to_string()
}

/// The config both instances run: a TCP and a UDP service on the VIP in front of the members.
fn tandem_config() -> String {
    let members: Vec<String> = (0..MEMBERS.len() as u16)
        .map(|i| format!("{{ addr = \"{MEMBER_HOST}:{}\" }}", FIRST_MEMBER_PORT + i))
        .collect();
    format!(
        r#"[admin]
listen = "{ADMIN}"

[[pool]]
name = "p"
members = [{members}]
  [[pool.check]]
  kind = "tcp"
  interval = "200ms"
  timeout = "200ms"

[[service]]
name = "web"
listen = "{VIP}:80"
pool = "p"

[[service]]
name = "dns"
listen = "{VIP}:53"
protocol = "udp"
pool = "p"
"#,
        members = members.join(", ")
    )
}

/// `examples/keepalived.conf` for one machine: its router_id and priority, the test's
/// interface, its one VIP instead of the example's three, and the test's admin address. Every
/// line substituted must be found, so a change to the example that the test no longer matches
/// fails here rather than testing something else.
fn keepalived_config(example: &str, router_id: &str, priority: u8) -> String {
    let mut out = String::new();
    let mut found = [false; 4];
    let mut vip_written = false;
    for line in example.lines() {
        let code = line.split('#').next().unwrap_or("").trim();
        let indent = &line[..line.len() - line.trim_start().len()];
        if code == "router_id tandem-a" {
            found[0] = true;
            out.push_str(&format!("{indent}router_id {router_id}\n"));
        } else if code == "priority 150" {
            found[1] = true;
            out.push_str(&format!("{indent}priority {priority}\n"));
        } else if code == "interface eth0" {
            found[2] = true;
            out.push_str(&format!("{indent}interface {LAN_IF}\n"));
        } else if code.starts_with("198.51.100.") && code.ends_with(" dev eth0") {
            if !vip_written {
                out.push_str(&format!("{indent}{VIP}/24 dev {LAN_IF}\n"));
                vip_written = true;
            }
        } else if line.contains("http://127.0.0.1:9900/healthz") {
            found[3] = true;
            out.push_str(&line.replace("127.0.0.1:9900", ADMIN));
            out.push('\n');
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        found.iter().all(|f| *f) && vip_written,
        "examples/keepalived.conf no longer has the lines the test substitutes \
         (router_id, priority, interface, healthz URL, VIPs): {found:?} {vip_written}"
    );
    out
}

/// The whole failover with one signal: VIP on A, stop A's tandem, the VIP moves to B, new
/// connections from 100 clients reach the same members, UDP replies come from the VIP before
/// and after. Returns the lab (for what the caller does next) and the measured move time.
async fn failover(test: &'static str, signal: &str) -> (Lab, Duration) {
    let mut lab = Lab::create(test);
    lab.start_tandem('a').await;
    lab.start_tandem('b').await;
    let started = Instant::now();
    lab.start_keepalived('a');
    lab.start_keepalived('b');
    lab.wait_vip_on('a', Duration::from_secs(20)).await;
    println!(
        "measured: keepalived start to VIP on the first: {} ms",
        started.elapsed().as_millis()
    );

    let before = lab.members_by_client();
    let spread: BTreeMap<&str, usize> = before.values().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(n.as_str()).or_default() += 1;
        m
    });
    println!("clients per member before the move: {spread:?}");
    assert!(
        spread.len() > 1,
        "100 clients all on one member: {spread:?}"
    );
    let udp = lab.udp_client();
    let udp_member = udp_round_trip(&udp, "before");

    let (took, greeting, still_served) = lab.stop_and_time_the_move('a', signal).await;
    assert_eq!(
        greeting.member, before[&CLIENT_ONE],
        "the same member via the second"
    );
    assert!(lab.holds_vip('b') && !lab.holds_vip('a'));
    println!(
        "measured: {signal} to the first new connection via the second: {} ms \
         ({still_served} connections still served by the first, before it handled the signal)",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(6),
        "the VIP took {took:?} to move"
    );

    let after = lab.members_by_client();
    assert_eq!(
        before, after,
        "every client reaches the same member through the second instance"
    );
    assert_eq!(
        udp_round_trip(&udp, "after"),
        udp_member,
        "the UDP client's datagrams reach the same member after the move"
    );
    (lab, took)
}

#[tokio::test]
#[ignore = "needs root, ip netns and keepalived (CI runs it: cargo test -- --include-ignored)"]
async fn sigterm_moves_the_vip_and_clients_keep_their_members_then_the_first_takes_it_back() {
    let (mut lab, _) = failover(
        "sigterm_moves_the_vip_and_clients_keep_their_members_then_the_first_takes_it_back",
        "TERM",
    )
    .await;
    let before = lab.members_by_client();
    // keepalived's default is preempt: the first, with the higher priority, takes the VIP back
    // once its check has passed `rise` times.
    let restarted = Instant::now();
    lab.start_tandem('a').await;
    let took = lab.wait_vip_on('a', Duration::from_secs(20)).await;
    println!(
        "measured: first tandem restarted to VIP back on the first (preempt): {} ms (ready after {} ms)",
        restarted.elapsed().as_millis(),
        (restarted.elapsed() - took).as_millis()
    );
    assert_eq!(
        lab.members_by_client(),
        before,
        "back on the first, every client still reaches the same member"
    );
}

#[tokio::test]
#[ignore = "needs root, ip netns and keepalived (CI runs it: cargo test -- --include-ignored)"]
async fn kill_9_moves_the_vip_and_clients_keep_their_members() {
    failover(
        "kill_9_moves_the_vip_and_clients_keep_their_members",
        "KILL",
    )
    .await;
}
