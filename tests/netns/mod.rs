//! The network-namespace harness of the fault tests: members in their own namespaces, joined to
//! the test's namespace by veth pairs, and the faults a test can put on them.
//!
//! Each member is a small greeting-and-echo server (the protocol of `tandem::demo::DemoMember`)
//! run by `ip netns exec NS python3 -c ...` on 198.18.N.2 (the benchmarking range, RFC 2544),
//! with 198.18.N.1 on the test's side of a /30 veth pair; nothing is routed anywhere else.
//!
//! Faults: a cut (a `tc` qdisc on the test-side veth that drops every packet: `netem loss 100%`
//! where the kernel has netem, else `pfifo limit 0`, a queue that holds nothing); random loss
//! (`iptables -m statistic` in the member's namespace); latency (an NFQUEUE rule in the member's
//! namespace and a [`Delayer`] thread that holds each packet, since the kernel may lack netem);
//! and member behaviour on command (reset a connection, stop answering new ones).

#[path = "../common/command.rs"]
pub mod command;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tandem::demo::greeting_from;

#[allow(dead_code)] // the multi-instance tests use it, the fault tests do not
pub mod lan;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const IP: &str = "/usr/sbin/ip";
const TC: &str = "/usr/sbin/tc";
/// iptables with the legacy (xtables) backend: it needs only the kernel's x_tables, which the
/// nft-backed default may not find on a trimmed kernel.
const IPTABLES: &str = "/usr/sbin/iptables-legacy";
const PORT: u16 = 7000;

/// The member: greets with its name line, then echoes until the client half-closes.
///
/// Two commands, each a chunk of its own (sent when every earlier byte has been echoed, so it
/// arrives alone): `RST` closes that connection with SO_LINGER 0, so the kernel aborts it with
/// a reset; `MUTE` answers `MUTED`, and from then on the member accepts new connections (the
/// kernel completes their handshakes) but never sends or reads a byte on them.
const MEMBER_PY: &str = r#"
import socket, struct, sys, threading
name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(1024)
print("listening", flush=True)
muted = threading.Event()
held = []
def serve(c):
    if muted.is_set():
        held.append(c)
        return
    try:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sendall((name + "\n").encode())
        while True:
            d = c.recv(65536)
            if not d:
                break
            if d == b"RST\n":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if d == b"MUTE\n":
                muted.set()
                c.sendall(b"MUTED\n")
                continue
            c.sendall(d)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Subnets handed out in this process (several tests run at once).
static NEXT_SUBNET: AtomicU32 = AtomicU32::new(0);

/// Runs `program`; `Err` says why it could not run or did not succeed.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    output(program, args).map(drop)
}

/// Runs `program` and returns its standard output.
pub fn output(program: &str, args: &[&str]) -> Result<String, String> {
    command::output(program, args)
}

/// Runs `program args` inside the namespace `ns` and returns its standard output.
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    output(IP, &all)
}

/// Runs `f` on a thread of its own that has joined the network namespace `ns` (setns(2) moves
/// only the calling thread), so every socket `f` makes lives in that namespace.
#[allow(dead_code)] // the VRRP tests use it, the fault tests do not
pub fn on_ns_thread<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A member in its own namespace: the namespace, the veth pair and the server process.
pub struct NsMember {
    name: String,
    ns: String,
    host_if: String,
    addr: SocketAddr,
    child: Option<Child>,
    cut: bool,
}

impl NsMember {
    pub fn create(name: &str) -> Result<NsMember, String> {
        let pid = std::process::id();
        let n = NEXT_SUBNET.fetch_add(1, Ordering::Relaxed);
        assert!(n < 64, "too many namespaced members in one process");
        // 198.18.0.0/15 holds 32768 /30s: 64 per process, spread by pid.
        let subnet = (pid % 512) * 64 + n;
        let base = 0xC612_0000u32 + subnet * 4; // 198.18.0.0
        let host_ip = Ipv4Addr::from(base + 1);
        let member_ip = Ipv4Addr::from(base + 2);
        let mut m = NsMember {
            name: name.to_string(),
            ns: format!("tandem-fault-{pid}-{n}"),
            host_if: format!("tf{pid}x{n}a"),
            addr: SocketAddr::new(IpAddr::V4(member_ip), PORT),
            child: None,
            cut: false,
        };
        // From here on, Drop cleans up whatever part was made.
        let peer_if = format!("tf{pid}x{n}b");
        let (ns, host_if) = (m.ns.clone(), m.host_if.clone());
        run(IP, &["netns", "add", &ns])?;
        run(
            IP,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
            ],
        )?;
        run(IP, &["link", "set", &peer_if, "netns", &ns])?;
        run(
            IP,
            &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if],
        )?;
        run(IP, &["link", "set", &host_if, "up"])?;
        let ip_in_ns = |args: &[&str]| in_ns(&ns, IP, args);
        ip_in_ns(&["link", "set", "lo", "up"])?;
        ip_in_ns(&["addr", "add", &format!("{member_ip}/30"), "dev", &peer_if])?;
        ip_in_ns(&["link", "set", &peer_if, "up"])?;
        let child = Command::new(IP)
            .args(["netns", "exec", &ns, "python3", "-c", MEMBER_PY, name])
            .arg(member_ip.to_string())
            .arg(PORT.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3 in {ns}: {e}"))?;
        m.child = Some(child);
        Ok(m)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every packet the test's side sends to the member: connects time out.
    pub fn cut(&mut self) {
        let add_root = |qdisc: &[&str]| {
            run(
                TC,
                &[&["qdisc", "add", "dev", &self.host_if, "root"], qdisc].concat(),
            )
        };
        if add_root(&["netem", "loss", "100%"]).is_err() {
            add_root(&["pfifo", "limit", "0"])
                .unwrap_or_else(|e| panic!("cannot cut {} off: {e}", self.name));
        }
        self.cut = true;
    }

    /// Undoes [`NsMember::cut`].
    pub fn restore(&mut self) {
        run(TC, &["qdisc", "del", "dev", &self.host_if, "root"])
            .unwrap_or_else(|e| panic!("cannot restore {}: {e}", self.name));
        self.cut = false;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `program args` inside the member's namespace and returns its output.
    fn in_ns(&self, program: &str, args: &[&str]) -> Result<String, String> {
        in_ns(&self.ns, program, args)
    }

    /// Makes the member accept new connections and never answer them (see [`MEMBER_PY`]);
    /// connections it already serves go on echoing.
    pub async fn mute(&self) {
        let (name, mut conn) = greeting_from(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.addr)
            .await
            .unwrap_or_else(|e| panic!("cannot reach {} to mute it: {e}", self.name));
        assert_eq!(name, self.name);
        conn.write_all(b"MUTE\n").await.expect("send MUTE");
        let mut reply = [0u8; 6];
        conn.read_exact(&mut reply).await.expect("read MUTED");
        assert_eq!(&reply, b"MUTED\n");
    }

    /// Drops each packet the member receives, and each it sends, with probability `p`
    /// (`iptables -m statistic --mode random`, in the member's namespace).
    pub fn add_loss(&self, p: f64) -> Result<(), String> {
        let p = format!("{p}");
        for chain in ["INPUT", "OUTPUT"] {
            self.in_ns(
                IPTABLES,
                &[
                    "-w",
                    "-A",
                    chain,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Packets the member's iptables rules have dropped so far (both directions).
    pub fn dropped(&self) -> u64 {
        let mut total = 0;
        for chain in ["INPUT", "OUTPUT"] {
            let listing = self
                .in_ns(IPTABLES, &["-w", "-L", chain, "-v", "-x", "-n"])
                .unwrap_or_else(|e| panic!("cannot read {}'s counters: {e}", self.name));
            total += listing
                .lines()
                .filter(|l| l.contains("DROP") && !l.starts_with("Chain"))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        total
    }

    /// TCP segments the member's kernel has retransmitted (`RetransSegs` of its namespace's
    /// `/proc/net/snmp`).
    pub fn retransmits(&self) -> u64 {
        let snmp = self
            .in_ns("/bin/cat", &["/proc/net/snmp"])
            .unwrap_or_else(|e| panic!("cannot read {}'s snmp: {e}", self.name));
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
            panic!("no Tcp lines in {}'s /proc/net/snmp", self.name);
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "RetransSegs")
            .and_then(|(_, v)| v.parse().ok())
            .expect("RetransSegs")
    }

    /// Starts holding every packet the member sends for `delay` (changeable later).
    pub fn delay(&self, delay: Duration) -> Result<Delayer, String> {
        Delayer::start(self, delay)
    }

    /// Waits (at most 10 s) until the member says it listens, then checks that it greets
    /// with its name.
    pub async fn ready(&mut self) {
        let stdout = self
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("member started with its stdout piped");
        let said = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                    .map(|_| line)
            }),
        )
        .await;
        match said {
            Ok(Ok(Ok(line))) if line.trim() == "listening" => {}
            other => panic!(
                "member {} in {} did not start: {other:?}",
                self.name, self.ns
            ),
        }
        let greeting = tokio::time::timeout(
            Duration::from_secs(10),
            greeting_from(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.addr),
        )
        .await;
        match greeting {
            Ok(Ok((name, _))) => assert_eq!(name, self.name, "member greeted as {name}"),
            other => panic!("member {} does not greet: {other:?}", self.name),
        }
    }
}

impl Drop for NsMember {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The peer end lives in the namespace: deleting it deletes the pair. The explicit link
        // delete covers a failure between creating the pair and moving its peer.
        let _ = run(IP, &["netns", "del", &self.ns]);
        let _ = run(IP, &["link", "del", &self.host_if]);
    }
}

/// `n` namespaced members named `{prefix}1..n`, started and answering. Panics, saying what is
/// missing, where namespaces cannot be made: the tests that call this are `#[ignore]`d for that
/// reason, so whoever runs them asked for them.
pub async fn ns_members(test: &str, prefix: &str, n: usize) -> Vec<NsMember> {
    if !command::is_root() {
        missing(test, "root (network namespaces need CAP_SYS_ADMIN)");
    }
    if !std::path::Path::new(IP).exists() || !std::path::Path::new(TC).exists() {
        missing(test, &format!("{IP} and {TC} (apt-get install iproute2)"));
    }
    let mut out = Vec::new();
    for i in 1..=n {
        match NsMember::create(&format!("{prefix}{i}")) {
            Ok(m) => out.push(m),
            Err(e) => missing(test, &format!("a namespaced member ({e})")),
        }
    }
    for m in &mut out {
        m.ready().await;
    }
    out
}

/// Fails `test` because this machine lacks `what`. The fault tests are ignored by default; this
/// is what someone who runs them anyway (`cargo test -- --include-ignored`) sees.
pub fn missing(test: &str, what: &str) -> ! {
    panic!(
        "{test}: this machine lacks {what}. The fault tests run as root with iproute2 and \
         iptables-legacy, as .ci/run does; plain `cargo test` lists them as ignored."
    )
}

/// Fails `test` (see [`missing`]) unless iptables runs here: the loss and latency faults need it.
pub fn require_iptables(test: &str) {
    if let Err(e) = output(IPTABLES, &["--version"]) {
        missing(
            test,
            &format!("a working {IPTABLES} ({e}; apt-get install iptables)"),
        );
    }
}

/// The NFQUEUE number the delay rule uses. Queues belong to a network namespace, so every
/// member can use the same one.
const QUEUE: u16 = 0;

/// Latency without netem: an iptables rule in the member's namespace queues every packet the
/// member sends (`-j NFQUEUE`), and a thread of this process, moved into that namespace, reads
/// the queue and accepts each packet once it has been held for the current delay. Packets leave
/// in the order they came, so the delay adds to every packet and reorders none.
pub struct Delayer {
    ns: String,
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    rule: bool,
}

impl Delayer {
    fn start(member: &NsMember, delay: Duration) -> Result<Delayer, String> {
        let mut d = Delayer {
            ns: member.ns.clone(),
            delay_ms: Arc::new(AtomicU64::new(delay.as_millis() as u64)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            rule: false,
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, delay_ms, stop) = (d.ns.clone(), d.delay_ms.clone(), d.stop.clone());
        d.thread = Some(
            std::thread::Builder::new()
                .name(format!("delay-{}", member.name))
                .spawn(move || hold_packets(&ns, &delay_ms, &stop, ready_tx))
                .map_err(|e| format!("delay thread: {e}"))?,
        );
        ready_rx
            .recv()
            .map_err(|_| "the delay thread died before binding its queue".to_string())??;
        // Only now that a reader is bound: without one the kernel drops queued packets.
        let rule = delay_rule("-A");
        member.in_ns(
            IPTABLES,
            &rule.iter().map(String::as_str).collect::<Vec<_>>(),
        )?;
        d.rule = true;
        Ok(d)
    }

    /// Changes the delay; packets already held leave by the new one.
    pub fn set(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        if self.rule {
            let rule = delay_rule("-D");
            let _ = in_ns(
                &self.ns,
                IPTABLES,
                &rule.iter().map(String::as_str).collect::<Vec<_>>(),
            );
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The iptables arguments that add (`-A`) or delete (`-D`) the delay rule: every packet the
/// member sends, except on its loopback, goes to [`QUEUE`].
fn delay_rule(op: &str) -> Vec<String> {
    let queue = QUEUE.to_string();
    [
        "-w",
        op,
        "OUTPUT",
        "!",
        "-o",
        "lo",
        "-j",
        "NFQUEUE",
        "--queue-num",
        &queue,
    ]
    .map(String::from)
    .to_vec()
}

/// The delay thread: joins the namespace `ns`, binds the queue, reports on `ready`, then gives
/// each queued packet its verdict `delay_ms` after it arrived until `stop`.
fn hold_packets(
    ns: &str,
    delay_ms: &AtomicU64,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let setup = || -> Result<nfq::Queue, String> {
        let path = format!("/run/netns/{ns}");
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        // setns(2) moves only the calling thread: this one, which runs nothing else.
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| format!("setns {path}: {e}"))?;
        let mut q = nfq::Queue::open().map_err(|e| format!("open NFQUEUE socket: {e}"))?;
        q.bind(QUEUE)
            .map_err(|e| format!("bind queue {QUEUE}: {e}"))?;
        // Metadata only: the verdict needs the packet id, not its bytes.
        q.set_copy_range(QUEUE, 0)
            .map_err(|e| format!("copy range: {e}"))?;
        q.set_queue_max_len(QUEUE, 16 * 1024)
            .map_err(|e| format!("queue length: {e}"))?;
        q.set_nonblocking(true);
        Ok(q)
    };
    let mut q = match setup() {
        Ok(q) => q,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        loop {
            match q.recv() {
                Ok(mut m) => {
                    m.set_verdict(nfq::Verdict::Accept);
                    held.push_back((Instant::now(), m));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("NFQUEUE in {ns}: {e}"),
            }
        }
        let delay = Duration::from_millis(delay_ms.load(Ordering::Relaxed));
        while held.front().is_some_and(|(at, _)| at.elapsed() >= delay) {
            if let Some((_, m)) = held.pop_front() {
                q.verdict(m)
                    .unwrap_or_else(|e| panic!("verdict in {ns}: {e}"));
            }
        }
        // The packet clock: a millisecond of resolution is plenty for delays of 100s of ms.
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let whatever is still held go, so stopping loses nothing.
    for (_, m) in held {
        let _ = q.verdict(m);
    }
    let _ = q.unbind(QUEUE);
}
