//! Pieces of the multi-instance tests (tests/vrrp.rs, tests/ecmp.rs): members that say which
//! tandem brought a connection, and a client that connects from a chosen source address.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::IP;

/// The members: for each name, on port PORT, PORT+1, ...: over TCP a greeting line `NAME PEER`
/// (PEER: the address the connection came from, so the tandem instance that carried it), then
/// an echo; over UDP the name, a space and the datagram back.
const MEMBERS_PY: &str = r#"
import socket, sys, threading
host, port, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def serve(c, peer, name):
    try:
        c.sendall((name + " " + peer + "\n").encode())
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()
def tcp(s, name):
    while True:
        c, a = s.accept()
        threading.Thread(target=serve, args=(c, a[0], name), daemon=True).start()
def udp(u, name):
    while True:
        d, a = u.recvfrom(65536)
        u.sendto(name.encode() + b" " + d, a)
for i, name in enumerate(names):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port + i))
    s.listen(512)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((host, port + i))
    threading.Thread(target=tcp, args=(s, name), daemon=True).start()
    threading.Thread(target=udp, args=(u, name), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"#;

/// Starts the members `names` on `host`:`first_port`.. in the namespace `ns`; returns once
/// they listen. `Err` says what did not run.
pub fn start_members(
    ns: &str,
    host: &str,
    first_port: u16,
    names: &[&str],
) -> Result<Child, String> {
    let mut child = Command::new(IP)
        .args(["netns", "exec", ns, "python3", "-c", MEMBERS_PY])
        .args([host, &first_port.to_string()])
        .args(names)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(|e| format!("the members' first line: {e}"))?;
    if line.trim() != "listening" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("the members did not start ({line:?})"));
    }
    Ok(child)
}

/// What a member said when a connection reached it.
#[derive(Debug)]
pub struct Greeting {
    /// The member's name.
    pub member: String,
    /// The address the member saw the connection come from: the tandem that carried it.
    pub via: IpAddr,
}

/// A TCP connection from `source` (port chosen by the kernel) to `to`, and the member's
/// greeting; both the connect and the greeting within `timeout`.
pub fn connect(
    source: Ipv4Addr,
    to: SocketAddr,
    timeout: Duration,
) -> Result<(Greeting, TcpStream), String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    socket
        .connect_timeout(&to.into(), timeout)
        .map_err(|e| format!("connect: {e}"))?;
    let conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(&conn)
        .read_line(&mut line)
        .map_err(|e| format!("greeting: {e}"))?;
    let parsed = line
        .strip_suffix('\n')
        .and_then(|l| l.split_once(' '))
        .and_then(|(member, via)| {
            Some(Greeting {
                member: member.to_string(),
                via: via.parse().ok()?,
            })
        });
    parsed
        .map(|g| (g, conn))
        .ok_or_else(|| format!("no greeting line ({line:?})"))
}
