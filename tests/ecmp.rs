//! ECMP in front of two tandem instances: a "router" namespace with a multipath route to the
//! VIP through two tandem namespaces (`fib_multipath_hash_policy = 1`: the 5-tuple picks the
//! path), 200 client addresses behind the router, and the members in the router namespace. Both
//! instances run the same config; the VIP is on each one's loopback, as for a BGP announcement.
//! Addresses from 198.18.0.0/15 (the benchmarking range, RFC 2544); every test builds its own
//! namespaces, so the tests run in parallel with the same addresses.
//!
//! Needs root, iproute2 and python3; ignored by default, and fails naming what is missing when
//! run without it.

#[path = "common/process.rs"]
mod process;

#[allow(dead_code)] // the fault tests' harness: this file uses its command helpers
mod netns;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netns::lan::{self};
use netns::{IP, on_ns_thread, run};
use process::Tandem;

/// The router's side of the /30 to tandem A, and A's side; the same for B.
const ROUTER_A: &str = "198.18.2.1";
const TANDEM_A: &str = "198.18.2.2";
const ROUTER_B: &str = "198.18.2.5";
const TANDEM_B: &str = "198.18.2.6";
/// The client LAN behind the router: the router's address; the clients are .10 to .209.
const ROUTER_CLIENTS: &str = "198.18.6.1";
const FIRST_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 6, 10);
const CLIENTS: u32 = 200;
/// The members, on the router namespace's loopback.
const MEMBER_HOST: &str = "198.18.4.50";
const MEMBERS: [&str; 3] = ["m1", "m2", "m3"];
const FIRST_MEMBER_PORT: u16 = 7001;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 10);

static NEXT: AtomicU32 = AtomicU32::new(0);

fn missing(test: &str, what: &str) -> ! {
    panic!(
        "{test}: this machine lacks {what}. The ECMP test runs as root with iproute2 and \
         python3, as .ci/run does; plain `cargo test` lists it as ignored."
    )
}

struct Lab {
    router: String,
    client: String,
    a: String,
    b: String,
    dir: tempfile::TempDir,
    members: Option<std::process::Child>,
}

impl Lab {
    fn create(test: &str) -> Lab {
        if !netns::command::is_root() {
            missing(test, "root (network namespaces need CAP_SYS_ADMIN)");
        }
        if !Path::new(IP).exists() {
            missing(test, &format!("{IP} (apt-get install iproute2)"));
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let ns = |role: &str| format!("tecmp-{role}-{pid}-{n}");
        let mut lab = Lab {
            router: ns("r"),
            client: ns("cl"),
            a: ns("a"),
            b: ns("b"),
            dir: tempfile::tempdir().expect("tempdir"),
            members: None,
        };
        let (r, c, a, b) = (&lab.router, &lab.client, &lab.a, &lab.b);
        let vip = format!("{VIP}/32");
        let mut steps: Vec<Vec<String>> = Vec::new();
        let mut step = |args: &[&str]| steps.push(args.iter().map(|s| s.to_string()).collect());
        for ns in [r, c, a, b] {
            step(&["netns", "add", ns]);
            step(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for (host, router_if, router_addr, host_addr) in
            [(a, "ra", ROUTER_A, TANDEM_A), (b, "rb", ROUTER_B, TANDEM_B)]
        {
            step(&[
                "-n", r, "link", "add", router_if, "type", "veth", "peer", "name", "up0", "netns",
                host,
            ]);
            step(&[
                "-n",
                r,
                "addr",
                "add",
                &format!("{router_addr}/30"),
                "dev",
                router_if,
            ]);
            step(&["-n", r, "link", "set", router_if, "up"]);
            step(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("{host_addr}/30"),
                "dev",
                "up0",
            ]);
            step(&["-n", host, "link", "set", "up0", "up"]);
            step(&["-n", host, "route", "add", "default", "via", router_addr]);
            step(&["-n", host, "addr", "add", &vip, "dev", "lo"]);
        }
        step(&[
            "-n", r, "link", "add", "rc", "type", "veth", "peer", "name", "up0", "netns", c,
        ]);
        step(&[
            "-n",
            r,
            "addr",
            "add",
            &format!("{ROUTER_CLIENTS}/23"),
            "dev",
            "rc",
        ]);
        step(&["-n", r, "link", "set", "rc", "up"]);
        step(&["-n", c, "link", "set", "up0", "up"]);
        for i in 0..CLIENTS {
            let addr = Ipv4Addr::from(u32::from(FIRST_CLIENT) + i);
            step(&["-n", c, "addr", "add", &format!("{addr}/23"), "dev", "up0"]);
        }
        step(&["-n", c, "route", "add", "default", "via", ROUTER_CLIENTS]);
        step(&[
            "-n",
            r,
            "addr",
            "add",
            &format!("{MEMBER_HOST}/32"),
            "dev",
            "lo",
        ]);
        step(&[
            "-n", r, "route", "add", &vip, "nexthop", "via", TANDEM_A, "nexthop", "via", TANDEM_B,
        ]);
        for args in steps {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = run(IP, &args) {
                missing(test, &format!("working network namespaces ({e})"));
            }
        }
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
        ] {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            let set = on_ns_thread(&lab.router, move || std::fs::write(&path, value));
            if let Err(e) = set {
                missing(test, &format!("{key} in a namespace ({e})"));
            }
        }
        lab.members = Some(
            lan::start_members(&lab.router, MEMBER_HOST, FIRST_MEMBER_PORT, &MEMBERS)
                .unwrap_or_else(|e| missing(test, &format!("running members ({e})"))),
        );
        std::fs::write(lab.dir.path().join("tandem.toml"), tandem_config())
            .expect("write tandem.toml");
        lab
    }

    async fn tandem(&self, ns: &str) -> Tandem {
        let mut tandem = Tandem::spawn_shell(&format!(
            "exec {IP} netns exec {ns} {bin} run --log-format json --no-watch -c {config}",
            bin = env!("CARGO_BIN_EXE_tandem"),
            config = self.dir.path().join("tandem.toml").display(),
        ));
        tandem.expect_log("listening").await;
        tandem
    }

    /// `tries` new connections from each client: for each, the members and instances seen.
    fn connect_all(&self, tries: usize) -> BTreeMap<Ipv4Addr, Vec<lan::Greeting>> {
        on_ns_thread(&self.client, move || {
            (0..CLIENTS)
                .map(|i| {
                    let source = Ipv4Addr::from(u32::from(FIRST_CLIENT) + i);
                    let seen = (0..tries)
                        .map(|_| {
                            lan::connect(source, (VIP, 80).into(), Duration::from_secs(5))
                                .unwrap_or_else(|e| panic!("client {source}: {e}"))
                                .0
                        })
                        .collect();
                    (source, seen)
                })
                .collect()
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut m) = self.members.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
        for ns in [&self.client, &self.a, &self.b, &self.router] {
            let _ = run(IP, &["netns", "del", ns]);
        }
    }
}

fn tandem_config() -> String {
    let members: Vec<String> = (0..MEMBERS.len() as u16)
        .map(|i| format!("{{ addr = \"{MEMBER_HOST}:{}\" }}", FIRST_MEMBER_PORT + i))
        .collect();
    format!(
        r#"[[pool]]
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
"#,
        members = members.join(", ")
    )
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("address")
}

#[tokio::test]
#[ignore = "needs root and ip netns (CI runs it: cargo test -- --include-ignored)"]
async fn ecmp_spreads_flows_over_both_instances_and_clients_keep_their_members() {
    let lab = Lab::create("ecmp_spreads_flows_over_both_instances_and_clients_keep_their_members");
    let mut a = lab.tandem(&lab.a).await;
    let _b = lab.tandem(&lab.b).await;

    // Four connections per client: the router hashes each 5-tuple (source port included), so a
    // client's flows go through both instances, and must reach the same member through either.
    const TRIES: usize = 4;
    let seen = lab.connect_all(TRIES);
    let mut per_instance: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut both = 0;
    let mut member_of = BTreeMap::new();
    for (client, greetings) in &seen {
        for g in greetings {
            *per_instance.entry(g.via).or_default() += 1;
            assert_eq!(
                g.member, greetings[0].member,
                "client {client} reached different members: {greetings:?}"
            );
        }
        if greetings.iter().any(|g| g.via != greetings[0].via) {
            both += 1;
        }
        member_of.insert(*client, greetings[0].member.clone());
    }
    let total = CLIENTS as usize * TRIES;
    println!(
        "measured: {total} flows from {CLIENTS} clients: per instance {per_instance:?}; \
         {both} clients were carried by both instances, each to one member"
    );
    for instance in [addr(TANDEM_A), addr(TANDEM_B)] {
        let share = per_instance.get(&instance).copied().unwrap_or(0);
        assert!(
            share * 4 >= total,
            "{instance} carried {share} of {total} flows, less than a quarter"
        );
    }
    assert!(both > 0, "no client was carried by both instances");

    // Instance A goes: its next hop is withdrawn (what a BGP withdrawal does at the router),
    // then it stops. Every client's new connections go through B, to the same member.
    run(
        IP,
        &[
            "-n",
            &lab.router,
            "route",
            "replace",
            &format!("{VIP}/32"),
            "via",
            TANDEM_B,
        ],
    )
    .expect("withdraw A's next hop");
    a.signal("TERM");
    a.exit(Duration::from_secs(10)).await;
    let after = lab.connect_all(2);
    for (client, greetings) in &after {
        for g in greetings {
            assert_eq!(g.via, addr(TANDEM_B), "client {client} after A went");
            assert_eq!(
                g.member, member_of[client],
                "client {client} reached another member through B alone"
            );
        }
    }
    let addr_of_vip: SocketAddr = (VIP, 80).into();
    println!(
        "after A went: {CLIENTS} clients reach {addr_of_vip} through B, each the same member as before"
    );
}
