//! `source = "client"` in the routed topology of README "Edge A/V without SNAT": a client
//! namespace, tandem's namespace routing between two links (set up by
//! `examples/transparent-routing.sh`, as an operator would), and a member namespace whose
//! default route points at tandem. Members see the client's address over TCP and UDP, bytes and
//! half-closes pass intact, a member's reset reaches the client, UDP replies come from the VIP,
//! health checks still come from tandem's own address, and a reload switches the source for new
//! connections only.

mod common;
mod topology;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{balancer, eventually, pseudo_random};
use tandem::app::AppView;
use tandem::config;
use tandem::health::state::Verdict;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use topology::{IPTABLES, LB_MEMBER_SIDE, MEMBER, Routed, VIP, VIP2, client_addr};

const TEST: &str = "transparent";
/// A second member address in the member namespace.
const MEMBER2: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 3);

/// Peers a member saw, in order (health checks included).
type Seen = Arc<Mutex<Vec<SocketAddr>>>;

/// The TCP member: sends the peer address it sees as a line, then echoes. `FIN\n` alone in a
/// chunk: it shuts its sending side and counts what still comes in (into `after_fin`); `RST\n`:
/// it aborts the connection with a reset.
async fn tcp_member(listener: std::net::TcpListener, seen: Seen, after_fin: Arc<Mutex<u64>>) {
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    loop {
        let Ok((mut s, peer)) = listener.accept().await else {
            return;
        };
        seen.lock().expect("seen").push(peer);
        let after_fin = after_fin.clone();
        tokio::spawn(async move {
            if s.write_all(format!("{peer}\n").as_bytes()).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 65536];
            let mut fin = false;
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if fin {
                    *after_fin.lock().expect("count") += n as u64;
                } else if &buf[..n] == b"FIN\n" {
                    let _ = s.shutdown().await;
                    fin = true;
                } else if &buf[..n] == b"RST\n" {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    return;
                } else if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            let _ = s.shutdown().await;
        });
    }
}

/// The UDP member: answers each datagram with `name|peer|payload`.
async fn udp_member(name: &'static str, socket: std::net::UdpSocket, seen: Seen) {
    socket.set_nonblocking(true).expect("nonblocking");
    let socket = UdpSocket::from_std(socket).expect("udp");
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            return;
        };
        seen.lock().expect("seen").push(peer);
        let mut reply = format!("{name}|{peer}|").into_bytes();
        reply.extend_from_slice(&buf[..n]);
        let _ = socket.send_to(&reply, peer).await;
    }
}

/// What the test asks of tandem, which runs on a thread inside its namespace.
enum Command {
    Reload(String, oneshot::Sender<Result<(), String>>),
    Stop,
}

/// Connects from client address `i` (in the client namespace) to `to`.
fn tcp_client(topo: &Routed, i: u8, to: SocketAddr) -> TcpStream {
    let std = topo.client.run(move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.bind(&SocketAddr::new(client_addr(i), 0).into())?;
        s.connect_timeout(&to.into(), Duration::from_secs(5))?;
        s.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(std::net::TcpStream::from(s))
    });
    TcpStream::from_std(std.expect("client connects through tandem")).expect("tokio stream")
}

/// A connected UDP client socket on client address `i`.
fn udp_client(topo: &Routed, i: u8, to: SocketAddr) -> UdpSocket {
    let std = topo.client.run(move || {
        let s = std::net::UdpSocket::bind(SocketAddr::new(client_addr(i), 0))?;
        s.connect(to)?;
        s.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(s)
    });
    UdpSocket::from_std(std.expect("udp client")).expect("tokio udp")
}

/// The first line (the peer address the member saw) and the stream after it.
async fn greeting(stream: TcpStream) -> (SocketAddr, TcpStream) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .expect("greeting in time")
        .expect("greeting");
    let peer = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not an address: {line:?}"));
    (peer, reader.into_inner())
}

async fn ask(socket: &UdpSocket, payload: &[u8]) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    for _ in 0..5 {
        socket.send(payload).await.expect("send");
        // A connected socket takes replies from the VIP it sent to, nothing else.
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
        {
            let n = r.expect("recv");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let mut parts = text.splitn(3, '|');
            let name = parts.next().expect("name").to_string();
            let peer = parts.next().expect("peer").parse().expect("peer addr");
            assert_eq!(parts.next().expect("payload").as_bytes(), payload);
            return (name, peer);
        }
    }
    panic!("no reply from the VIP");
}

fn config(tcp_port: u16, udp_ports: [u16; 2], source: &str) -> String {
    format!(
        r#"
[[pool]]
name = "tcp"
members = [{{ addr = "{MEMBER}:{tcp_port}" }}]
  [[pool.check]]
  kind = "tcp"
  interval = "100ms"
  timeout = "500ms"
  rise = 1
  fall = 1
[[pool]]
name = "udp"
members = [{{ addr = "{MEMBER}:{u0}" }}, {{ addr = "{MEMBER2}:{u1}" }}]
[[service]]
name = "av-tcp"
listen = "{VIP}:0"
pool = "tcp"
source = "{source}"
[[service]]
name = "av-udp"
listen = "0.0.0.0:0"
protocol = "udp"
pool = "udp"
source = "{source}"
"#,
        u0 = udp_ports[0],
        u1 = udp_ports[1],
    )
}

#[test]
#[ignore = "needs root, ip netns and iptables-legacy (CI runs it: cargo test -- --include-ignored)"]
fn members_see_the_client_and_replies_come_from_the_vip() {
    let topo = Routed::new(TEST);
    if let Err(e) = topology::run(IPTABLES, &["--version"]) {
        topology::missing(TEST, &format!("{IPTABLES} ({e}; apt-get install iptables)"));
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/transparent-routing.sh"
    );
    let routing = std::process::Command::new(topology::IP)
        .args(["netns", "exec", &topo.lb.name, "sh", script, "-t", "100"])
        .env("IPTABLES", IPTABLES)
        .output()
        .expect("run the routing script");
    assert!(
        routing.status.success(),
        "examples/transparent-routing.sh failed (the kernel needs the xt_socket match): {}",
        String::from_utf8_lossy(&routing.stderr)
    );

    // Members, their sockets made in the member namespace.
    topo.member
        .ip(&["addr", "add", &format!("{MEMBER2}/24"), "dev", "m0"]);
    let (tcp_listener, udp0, udp1) = topo.member.run(|| {
        (
            std::net::TcpListener::bind((MEMBER, 0)).expect("tcp member"),
            std::net::UdpSocket::bind((MEMBER, 0)).expect("udp member"),
            std::net::UdpSocket::bind((MEMBER2, 0)).expect("udp member 2"),
        )
    });
    let tcp_port = tcp_listener.local_addr().expect("addr").port();
    let udp_ports = [
        udp0.local_addr().expect("addr").port(),
        udp1.local_addr().expect("addr").port(),
    ];

    // tandem, on a thread inside its namespace.
    let (commands, mut inbox) = mpsc::unbounded_channel::<Command>();
    let (view_tx, view_rx) = std::sync::mpsc::channel::<AppView>();
    let first = config(tcp_port, udp_ports, "client");
    let tandem = topo.lb.block_on(move || async move {
        let mut app = balancer(&first).await;
        view_tx.send(app.view()).expect("send view");
        while let Some(command) = inbox.recv().await {
            match command {
                Command::Reload(toml, done) => {
                    let result = match config::parse(&toml, "reload.toml") {
                        Ok(cfg) => app.reload(cfg).await.map(drop).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = done.send(result);
                }
                Command::Stop => break,
            }
        }
        app.shutdown(Duration::from_secs(1)).await;
    });
    let view = view_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("tandem starts in its namespace");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tcp_seen: Seen = Seen::default();
        let after_fin = Arc::new(Mutex::new(0u64));
        tokio::spawn(tcp_member(
            tcp_listener,
            tcp_seen.clone(),
            after_fin.clone(),
        ));
        let udp_seen: Seen = Seen::default();
        tokio::spawn(udp_member("u1", udp0, udp_seen.clone()));
        tokio::spawn(udp_member("u2", udp1, udp_seen.clone()));

        let services = view.services();
        let tcp_vip = SocketAddr::new(IpAddr::V4(VIP), services[0].local_addr.port());
        let udp_port = services[1].local_addr.port();

        // TCP: the member sees the client's address; 10 MB echoed intact after the client
        // half-closes.
        let (peer, mut s) = greeting(tcp_client(&topo, 0, tcp_vip)).await;
        assert_eq!(peer.ip(), client_addr(0), "the member sees the client");
        let data = pseudo_random(14, 10 << 20);
        let (mut rd, mut wr) = s.split();
        let send = async {
            wr.write_all(&data).await.expect("send 10 MB");
            wr.shutdown().await.expect("half-close");
        };
        let mut echoed = Vec::with_capacity(data.len());
        let recv = rd.read_to_end(&mut echoed);
        let (_, got) = tokio::join!(send, recv);
        got.expect("echo until the member's FIN");
        assert!(
            echoed == data,
            "10 MB echoed intact ({} bytes back)",
            echoed.len()
        );

        // The member half-closes first; the client keeps sending and the member gets it all.
        let (_, mut s) = greeting(tcp_client(&topo, 1, tcp_vip)).await;
        s.write_all(b"FIN\n").await.expect("ask for a FIN");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .await
            .expect("the member's FIN arrives");
        assert!(rest.is_empty());
        let tail = pseudo_random(15, 100_000);
        s.write_all(&tail)
            .await
            .expect("send after the member's FIN");
        s.shutdown().await.expect("client FIN");
        eventually(
            "the member received every byte after its FIN",
            Duration::from_secs(5),
            || {
                let after_fin = after_fin.clone();
                async move { *after_fin.lock().expect("count") == 100_000 }
            },
        )
        .await;

        // A member aborting mid-stream: the client sees a reset.
        let (_, mut s) = greeting(tcp_client(&topo, 2, tcp_vip)).await;
        s.write_all(b"RST\n").await.expect("ask for a reset");
        let mut buf = [0u8; 16];
        let err = s
            .read(&mut buf)
            .await
            .expect_err("a reset, not a clean end");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);

        // Health checks come from tandem's own address and keep the member up.
        assert!(
            tcp_seen
                .lock()
                .expect("seen")
                .iter()
                .any(|p| p.ip() == IpAddr::V4(LB_MEMBER_SIDE)),
            "health checks come from tandem's own address"
        );
        let snapshot = view.snapshot();
        for pool in snapshot.pools() {
            for m in &pool.members {
                if pool.name == "tcp" {
                    assert_eq!(m.health.verdict(), Verdict::Up, "{}", m.health.member());
                }
            }
        }

        // UDP on a wildcard listener, to either VIP: every reply from the VIP it was sent to
        // (the socket is connected), the member sees the client, affinity over 100 datagrams.
        for (i, vip) in [VIP, VIP2].into_iter().enumerate() {
            let i = 3 + i as u8;
            let to = SocketAddr::new(IpAddr::V4(vip), udp_port);
            let client = udp_client(&topo, i, to);
            let (name, peer) = ask(&client, b"hello").await;
            assert_eq!(peer.ip(), client_addr(i), "the member sees the client");
            for n in 0..100 {
                let (again, p) = ask(&client, format!("d{n}").as_bytes()).await;
                assert_eq!((again.as_str(), p), (name.as_str(), peer), "affinity");
            }
        }

        // Reload to `auto`: the open connection keeps working; new ones come from tandem.
        let (peer, mut open) = greeting(tcp_client(&topo, 5, tcp_vip)).await;
        assert_eq!(peer.ip(), client_addr(5));
        let (done, result) = oneshot::channel();
        commands
            .send(Command::Reload(config(tcp_port, udp_ports, "auto"), done))
            .expect("tandem runs");
        result
            .await
            .expect("reply")
            .expect("reload to auto applied");
        let (peer, _) = greeting(tcp_client(&topo, 6, tcp_vip)).await;
        assert_eq!(
            peer.ip(),
            IpAddr::V4(LB_MEMBER_SIDE),
            "auto: tandem's own address"
        );
        let udp = udp_client(&topo, 7, SocketAddr::new(IpAddr::V4(VIP), udp_port));
        let (_, p) = ask(&udp, b"auto").await;
        assert_eq!(p.ip(), IpAddr::V4(LB_MEMBER_SIDE));
        open.write_all(b"still here").await.expect("write");
        let mut buf = [0u8; 10];
        open.read_exact(&mut buf)
            .await
            .expect("the open connection still echoes");
        assert_eq!(&buf, b"still here");

        // And back to `client`.
        let (done, result) = oneshot::channel();
        commands
            .send(Command::Reload(config(tcp_port, udp_ports, "client"), done))
            .expect("tandem runs");
        result
            .await
            .expect("reply")
            .expect("reload to client applied");
        let (peer, _) = greeting(tcp_client(&topo, 8, tcp_vip)).await;
        assert_eq!(peer.ip(), client_addr(8));
    });
    let _ = commands.send(Command::Stop);
    tandem
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    drop(runtime);
}
