//! Network namespaces for the Edge tests: a bare namespace a test can run tandem in (with its
//! own sysctls, such as a narrow `ip_local_port_range`), and the routed topology of README
//! "Edge A/V without SNAT": a client namespace, tandem's namespace routing between two veth
//! links, and a member namespace whose default route points at tandem.
//!
//! Addresses come from 198.18.0.0/15 only and live inside the test's own namespaces, so they
//! never meet anything outside. A thread joins a namespace with setns(2) (see [`Ns::enter`]); a
//! socket belongs to the namespace its creating thread was in, so a test may make sockets in a
//! namespace on a helper thread ([`Ns::run`]) and use them from anywhere.
#![allow(dead_code)] // each including test uses its own subset

#[path = "../common/command.rs"]
mod command;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};

pub const IP: &str = "/usr/sbin/ip";
/// iptables with the legacy (xtables) backend, as the other namespace tests use.
pub const IPTABLES: &str = "/usr/sbin/iptables-legacy";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails `test` because this machine lacks `what` (these tests are ignored by default; this is
/// what someone who asked for them sees where they cannot run).
pub fn missing(test: &str, what: &str) -> ! {
    panic!(
        "{test}: this machine lacks {what}. The namespace tests run as root with iproute2, \
         procps (sysctl) and iptables-legacy, as .ci/run does; plain `cargo test` lists them \
         as ignored."
    )
}

/// Runs `program args`; `Err` says why it could not run or did not succeed.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    command::output(program, args)
}

/// A network namespace of this test process, deleted when dropped.
pub struct Ns {
    pub name: String,
    test: String,
}

impl Ns {
    /// A new namespace with `lo` up. Fails the test, naming what is missing, without root or
    /// iproute2.
    pub fn new(test: &str, tag: &str) -> Ns {
        if !command::is_root() {
            missing(test, "root (network namespaces need CAP_SYS_ADMIN)");
        }
        if !std::path::Path::new(IP).exists() {
            missing(test, &format!("{IP} (apt-get install iproute2)"));
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = Ns {
            name: format!("te-{}-{n}-{tag}", std::process::id()),
            test: test.to_string(),
        };
        if let Err(e) = run(IP, &["netns", "add", &ns.name]) {
            missing(test, &format!("network namespaces ({e})"));
        }
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS args`, failing the test on error.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        if let Err(e) = run(IP, &all) {
            panic!("{}: {e}", self.test);
        }
    }

    /// `program args` inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run(IP, &all)
    }

    /// Sets a per-namespace sysctl (`key` as in `sysctl -w`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        // Written from a thread inside the namespace: /proc/sys/net shows the writer's namespace.
        let value = value.to_string();
        let done = self.run(move || std::fs::write(&path, value));
        if let Err(e) = done {
            missing(
                &self.test,
                &format!("the sysctl {key} in a namespace ({e})"),
            );
        }
    }

    /// Moves the calling thread (only it) into the namespace.
    pub fn enter(&self) {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).expect("open the namespace");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
    }

    /// Runs `f` on a thread inside the namespace and returns what it returns (sockets made
    /// there stay in the namespace wherever they are used afterwards).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            f()
        });
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Runs the future `f` makes on a current-thread runtime of a thread inside the namespace
    /// (everything it creates, tandem's sockets included, lives in the namespace).
    pub fn block_on<F, Fut>(&self, f: F) -> std::thread::JoinHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future,
        Fut::Output: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(f())
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = run(IP, &["netns", "del", &self.name]);
    }
}

/// The routed topology: `client` (198.18.1.0/24, many client addresses) -- `lb` (tandem, the
/// router, with the VIP) -- `member` (198.18.2.0/24, default route via tandem).
pub struct Routed {
    pub client: Ns,
    pub lb: Ns,
    pub member: Ns,
}

/// The VIP tandem listens on (on its `lo`).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// A second VIP, for the reply-from-VIP checks.
pub const VIP2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
/// tandem's own address on the member link (health checks come from it).
pub const LB_MEMBER_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// The member.
pub const MEMBER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// Client addresses on the client link: `client_addr(0..CLIENTS)`.
pub const CLIENTS: u8 = 32;

/// Client address number `i` (198.18.1.10 + i).
pub fn client_addr(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 1, 10 + i))
}

impl Routed {
    /// Builds the three namespaces and their links. The transparent-proxy routing in `lb` is
    /// not set up here: the test runs `examples/transparent-routing.sh` for that, as an
    /// operator would.
    pub fn new(test: &str) -> Routed {
        let t = Routed {
            client: Ns::new(test, "c"),
            lb: Ns::new(test, "lb"),
            member: Ns::new(test, "m"),
        };
        // Links: client c0 <-> lb c1, lb m1 <-> member m0.
        t.client.ip(&[
            "link", "add", "c0", "type", "veth", "peer", "name", "c1", "netns", &t.lb.name,
        ]);
        t.member.ip(&[
            "link", "add", "m0", "type", "veth", "peer", "name", "m1", "netns", &t.lb.name,
        ]);
        for i in 0..CLIENTS {
            t.client.ip(&[
                "addr",
                "add",
                &format!("{}/24", client_addr(i)),
                "dev",
                "c0",
            ]);
        }
        t.client.ip(&["link", "set", "c0", "up"]);
        t.client
            .ip(&["route", "add", "default", "via", "198.18.1.1"]);
        t.lb.ip(&["addr", "add", "198.18.1.1/24", "dev", "c1"]);
        t.lb.ip(&["addr", "add", &format!("{LB_MEMBER_SIDE}/24"), "dev", "m1"]);
        t.lb.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
        t.lb.ip(&["addr", "add", &format!("{VIP2}/32"), "dev", "lo"]);
        t.lb.ip(&["link", "set", "c1", "up"]);
        t.lb.ip(&["link", "set", "m1", "up"]);
        t.member
            .ip(&["addr", "add", &format!("{MEMBER}/24"), "dev", "m0"]);
        t.member.ip(&["link", "set", "m0", "up"]);
        t.member.ip(&[
            "route",
            "add",
            "default",
            "via",
            &LB_MEMBER_SIDE.to_string(),
        ]);
        t
    }
}
