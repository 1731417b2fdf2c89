//! `tandem demo`: two small pools of demo members on loopback with a balancer in front, so a
//! newcomer sees hashing and member loss with no setup. The demo members and the client helpers
//! are also what the integration tests run against.
//!
//! A demo member greets every connection with one line naming itself, then echoes what it
//! receives until the client finishes sending, and then closes its side.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::admin;
use crate::app::App;
use crate::config;
use crate::events::{self, Event};
use crate::failover::Side;
use crate::health::state::Verdict;
use crate::server::AdminServer;
use crate::signals::{Request, Signals};

/// A greeting-and-echo TCP server on a fixed address that can be stopped and restarted.
pub struct DemoMember {
    name: Arc<str>,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
    /// The task's listener, kept here too so that stopping shuts the socket itself down.
    listener: Option<Arc<TcpListener>>,
}

impl DemoMember {
    /// Starts a member on `addr`; port 0 picks a free port, kept across restarts.
    pub async fn start(name: &str, addr: SocketAddr) -> io::Result<DemoMember> {
        let mut member = DemoMember {
            name: Arc::from(name),
            addr,
            task: None,
            listener: None,
        };
        member.restart().await?;
        Ok(member)
    }

    /// The member's name (its greeting).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the member listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and every open connection: new connects are refused.
    pub fn stop(&mut self) {
        self.shut_listener();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// [`DemoMember::stop`], returning once new connects are refused and the server task (the
    /// listener's, which owns every connection's task) is gone, so a test knows the moment
    /// after which the member takes nothing new. Its connections close as their aborted tasks
    /// are dropped, on whichever worker gets to each.
    pub async fn kill(&mut self) {
        self.shut_listener();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops the listening socket itself, not only our descriptor of it. Closing a descriptor
    /// closes the socket only when it is the last one: a process forked meanwhile (a test
    /// running `kill -HUP` or spawning a balancer) holds a copy of every descriptor until its
    /// exec, and meanwhile the kernel still completes handshakes into the accept queue, so a
    /// balancer's connect "succeeds" to a member that is gone and is reset once the copy closes
    /// (the chaos soak saw 8 clients reset together 13 ms after their member's kill returned).
    /// shutdown(2) on a listener resets its queue and refuses connects from now on, whoever
    /// else holds it.
    fn shut_listener(&mut self) {
        if let Some(listener) = self.listener.take() {
            let _ = socket2::SockRef::from(&*listener).shutdown(std::net::Shutdown::Both);
        }
    }

    /// Listens again on the same address; a running member is stopped first, with its
    /// connections.
    pub async fn restart(&mut self) -> io::Result<()> {
        // The old listener must be closed before we rebind.
        self.kill().await;
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        let listener = Arc::new(socket.listen(1024)?);
        self.addr = listener.local_addr()?;
        self.listener = Some(listener.clone());
        let name = self.name.clone();
        self.task = Some(tokio::spawn(async move {
            // Connections live in this set, so aborting the server task closes them too.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            conns.spawn(greet_and_echo(stream, name.clone()));
                        }
                        // Out of descriptors or similar: yield instead of spinning.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        }));
        Ok(())
    }
}

impl Drop for DemoMember {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn greet_and_echo(mut stream: TcpStream, name: Arc<str>) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    stream.write_all(format!("{name}\n").as_bytes()).await?;
    let (mut r, mut w) = stream.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}

/// Connects to `to` from source address `from` (any port), as a distinct client would.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Connects from `from` and returns the greeting of the member that answered, and the stream
/// positioned after it.
pub async fn greeting_from(from: IpAddr, to: SocketAddr) -> io::Result<(String, TcpStream)> {
    let stream = connect_from(from, to).await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a greeting",
        ));
    }
    line.pop();
    // The member sends nothing after its greeting until we send, so nothing is lost here.
    Ok((line, reader.into_inner()))
}

/// Which member serves client `from`: connects, reads the greeting, closes.
pub async fn who_serves(from: IpAddr, to: SocketAddr) -> io::Result<String> {
    greeting_from(from, to).await.map(|(name, _)| name)
}

/// The i-th distinct demo client address, 127.0.2.1 onwards (wrapping into 127.0.3.x, ...).
pub fn client_ip(i: u32) -> IpAddr {
    let n = 2 * 256 + 1 + i;
    IpAddr::V4(Ipv4Addr::new(127, 0, (n / 256) as u8, (n % 256) as u8))
}

/// Runs the demo until SIGTERM/SIGINT: members, balancer, a hashing walk-through, then serving.
/// The balancer listens on `listen`, the admin API and status page on `admin`.
pub async fn run(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    // Before anything listens, so an early Ctrl-C is not lost.
    let mut signals =
        Signals::new().map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;
    let mut dc1 = Vec::new();
    for (i, tag) in ["a", "b", "c"].iter().enumerate() {
        let ip = Ipv4Addr::new(127, 0, 1, 1 + i as u8);
        dc1.push(DemoMember::start(&format!("dc1-{tag}"), SocketAddr::new(ip.into(), 0)).await?);
    }
    let mut dc2 = Vec::new();
    for (i, tag) in ["a", "b"].iter().enumerate() {
        let ip = Ipv4Addr::new(127, 0, 1, 11 + i as u8);
        dc2.push(DemoMember::start(&format!("dc2-{tag}"), SocketAddr::new(ip.into(), 0)).await?);
    }
    let text = format!("[admin]\nlisten = \"{admin}\"\n\n") + &demo_config(listen, &dc1, &dc2);
    let admin_listener = tokio::net::TcpListener::bind(admin)
        .await
        .map_err(|e| anyhow::anyhow!("admin: cannot listen on {admin}: {e} (try --admin)"))?;
    // The config lives in a file, like a real deployment, so the drill below is an edit and a
    // reload, and the newcomer can do the same afterwards.
    let path = std::env::temp_dir().join(format!("tandem-demo-{}.toml", std::process::id()));
    std::fs::write(&path, &text)?;
    let cfg = config::load(&path)?;
    let mut app = App::start(cfg).await?;
    let mut admin_server =
        AdminServer::spawn(admin_listener, app.view(), admin::Options::default());
    let addr = app
        .local_addr("demo")
        .ok_or_else(|| anyhow::anyhow!("demo service did not start"))?;

    println!("tandem demo: a balancer on {addr} in front of pool dc1, paired with pool dc2.");
    println!("Status page: http://{admin}/   (also: tandem status --admin {admin})\n");
    println!("The config it runs:\n\n{text}");
    let clients: Vec<IpAddr> = (0..12).map(client_ip).collect();
    println!("Twelve clients, each from its own source address, connect (source-ip hashing):");
    let before = placement(&clients, addr).await;
    print_placement(&clients, &before, None);

    let victim = 1;
    let victim_addr = dc1[victim].addr();
    let mut events = app.events();
    println!(
        "\nMember {} stops (its port now refuses).",
        dc1[victim].name()
    );
    dc1[victim].stop();
    let reason = wait_for(&mut events, victim_addr, Verdict::Down).await;
    println!("    health: {} is down ({reason})", dc1[victim].name());
    println!("The same clients connect again:");
    let after = placement(&clients, addr).await;
    print_placement(&clients, &after, Some(&before));
    println!(
        "Only the clients of {} moved, spread over the others; everyone else kept their member.",
        dc1[victim].name()
    );

    println!(
        "\n{} starts again; its check must pass twice in a row (rise = 2).",
        dc1[victim].name()
    );
    dc1[victim].restart().await?;
    let reason = wait_for(&mut events, victim_addr, Verdict::Up).await;
    println!("    health: {} is up ({reason})", dc1[victim].name());
    let back = placement(&clients, addr).await;
    print_placement(&clients, &back, Some(&after));
    println!("Its clients are back; nobody else moved.");

    println!(
        "\nA failover drill: the demo edits {} to pin the service to dc2",
        path.display()
    );
    println!("(failover = \"remote\") and reloads, as `kill -HUP` would:");
    std::fs::write(
        &path,
        text.replace("failover = \"auto\"", "failover = \"remote\""),
    )?;
    let report = app.reload_file(&path).await?;
    println!("    reload applied in {:?}: {}", report.took, report.diff);
    let drill = placement(&clients, addr).await;
    print_placement(&clients, &drill, Some(&back));
    println!("Every new connection goes to dc2; open connections would stay where they are.");
    std::fs::write(&path, &text)?;
    let report = app.reload_file(&path).await?;
    println!(
        "Back to failover = \"auto\" ({}): dc1 never failed, so traffic returns at once.",
        report.diff
    );

    println!("\nAn unplanned failure: every member of dc1 stops.");
    // Listen from here on: the drill's own failover events are history.
    let mut events = app.events();
    for m in &mut dc1 {
        m.stop();
    }
    let reason = wait_failover(&mut events, Side::Backup).await;
    println!("    failover: dc2 takes new connections ({reason})");
    let failed_over = placement(&clients, addr).await;
    print_placement(&clients, &failed_over, None);
    println!(
        "\ndc1 comes back; traffic returns only after it stays healthy for failback_after (5s):"
    );
    for m in &mut dc1 {
        m.restart().await?;
    }
    let reason = wait_failover(&mut events, Side::Local).await;
    println!("    failback: {reason}");
    let home = placement(&clients, addr).await;
    print_placement(&clients, &home, None);

    println!(
        "\nTry it yourself (each source address is a different client):\n\
         \n    nc -s 127.0.2.7 {} {}\n\
         \nEvery member greets with its name, then echoes what you type. Edit {} and run\n\
         `kill -HUP {}` to reload it. Ctrl-C stops the demo.",
        addr.ip(),
        addr.port(),
        path.display(),
        std::process::id()
    );
    loop {
        let reload = tokio::select! {
            request = signals.next() => match request {
                Request::Stop => break,
                Request::Reload => None,
                Request::Upgrade => {
                    println!("the demo does not do binary upgrades; use tandem run");
                    continue;
                }
                Request::ReopenLogs => {
                    app.reopen_access_log();
                    continue;
                }
            },
            command = admin_server.next_command() => match command {
                admin::Command::Reload { reply } => Some(reply),
            },
        };
        let result = app.reload_file(&path).await;
        match &result {
            Ok(r) => println!("reload applied: {}", r.diff),
            Err(e) => println!("reload rejected, the running config keeps serving:\n{e}"),
        }
        if let Some(reply) = reload {
            let _ = reply.send(admin::ReloadOutcome::of(&result));
        }
    }
    admin_server.stop();
    println!("\nstopping");
    app.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Waits for the demo service to move to `to`, returning the reason (or a note after 15 s).
async fn wait_failover(events: &mut tokio::sync::broadcast::Receiver<Event>, to: Side) -> String {
    let found = events::wait_for(
        events,
        Duration::from_secs(15),
        |e| matches!(e, Event::Failover(f) if f.to == to),
    );
    match found.await {
        Some(Event::Failover(f)) => f.reason,
        _ => "no failover within 15 s".to_string(),
    }
}

/// Waits for `member` to reach `to`, returning the reason (or a note after 10 s).
async fn wait_for(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    member: SocketAddr,
    to: Verdict,
) -> String {
    let want = member.to_string();
    let found = events::wait_for(
        events,
        Duration::from_secs(10),
        |e| matches!(e, Event::Health(h) if *h.member == *want && h.to == to),
    );
    match found.await {
        Some(Event::Health(h)) => h.reason,
        _ => "no transition within 10 s".to_string(),
    }
}

async fn placement(clients: &[IpAddr], addr: SocketAddr) -> Vec<String> {
    let mut out = Vec::new();
    for &c in clients {
        out.push(match who_serves(c, addr).await {
            Ok(name) => name,
            Err(e) => format!("(failed: {e})"),
        });
    }
    out
}

fn print_placement(clients: &[IpAddr], now: &[String], before: Option<&[String]>) {
    for (i, (client, member)) in clients.iter().zip(now).enumerate() {
        let moved = match before.and_then(|b| b.get(i)) {
            Some(old) if old != member => format!("   (moved from {old})"),
            _ => String::new(),
        };
        println!("    client {client:<12} -> {member}{moved}");
    }
}

/// The demo pools' check: fast enough that a member's loss and return show within seconds.
const CHECK: &str = "  [[pool.check]]\n  kind = \"tcp\"\n  interval = \"500ms\"\n  timeout = \"300ms\"\n  rise = 2\n  fall = 2\n";

fn demo_config(listen: SocketAddr, dc1: &[DemoMember], dc2: &[DemoMember]) -> String {
    let members = |ms: &[DemoMember]| {
        ms.iter()
            .map(|m| format!("  {{ addr = \"{}\" }},  # {}\n", m.addr(), m.name()))
            .collect::<String>()
    };
    let mut t = String::new();
    let _ = write!(
        t,
        "[[pool]]\nname = \"dc1\"\nmembers = [\n{}]\n{CHECK}\n[[pool]]\nname = \"dc2\"\nmembers = [\n{}]\n{CHECK}\n\
         [[service]]\nname = \"demo\"\nlisten = \"{listen}\"\npool = \"dc1\"\nbackup_pool = \"dc2\"\n\
         failover = \"auto\"\nmin_healthy = 2\nfailback_after = \"5s\"\nconnect_timeout = \"500ms\"\n",
        members(dc1),
        members(dc2)
    );
    t
}
