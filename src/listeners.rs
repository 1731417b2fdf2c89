//! A service's listening sockets: one per worker, all bound to the service's address with
//! `SO_REUSEPORT` (a socket group), each registered with the runtime of the worker that serves
//! it.
//!
//! Why a socket per worker rather than one accept loop feeding every worker: the kernel spreads
//! new connections over the group by a hash of the 4-tuple, so each worker accepts its own
//! share without a lock, a cross-thread wakeup or a task moved between threads (see
//! [`crate::workers`]). For UDP the same hash keeps a client's datagrams on one socket while the
//! group is unchanged, and each socket has its own session table, so a session, its replies and
//! its worker stay together.
//!
//! Binding a new group checks first that nothing else holds the address: with `SO_REUSEPORT`
//! alone, a second tandem of the same user started by mistake on the same config would join
//! the group and quietly take half the traffic. A plain bind (no `SO_REUSEPORT`) on the address
//! fails with "address in use" when anything listens there, as a single socket did before.
//!
//! A group inherited in a binary upgrade is taken whole, whatever the new worker count: closing
//! a listening socket drops the connections queued in it (Linux migrates them only with
//! `net.ipv4.tcp_migrate_req`, off by default), so every inherited socket gets its accept loop,
//! spread over the workers in turn. With fewer inherited sockets than workers the group is
//! topped up by binding more; that fails (and the inherited ones serve alone) when the old
//! process's sockets were bound without `SO_REUSEPORT` (tandem before socket groups).
//!
//! Performs no accept and spawns nothing: [`crate::app`] starts the loops.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use tokio::net::{TcpListener, UdpSocket};
use tracing::{info, warn};

use crate::config::Protocol;
use crate::proxy::{tcp, udp};
use crate::workers::Workers;

/// A listening socket of either protocol, registered with its worker's runtime.
pub enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// A service's socket group, ready to serve: socket `i` is registered with worker `i` (modulo
/// the worker count), and has a duplicate kept to hand over in a binary upgrade.
pub struct Group {
    /// The address the group is bound to (the real port when the config said 0).
    pub local_addr: SocketAddr,
    pub sockets: Vec<Listener>,
    /// Duplicates of `sockets`, in the same order, for a binary upgrade.
    pub handoff: Vec<OwnedFd>,
}

/// A socket before it is registered with a runtime.
enum Unregistered {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl Unregistered {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Unregistered::Tcp(l) => l.local_addr(),
            Unregistered::Udp(s) => s.local_addr(),
        }
    }

    fn from_fd(protocol: Protocol, fd: OwnedFd) -> io::Result<Unregistered> {
        Ok(match protocol {
            Protocol::Tcp => {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                Unregistered::Tcp(l)
            }
            Protocol::Udp => {
                let s = std::net::UdpSocket::from(fd);
                s.set_nonblocking(true)?;
                Unregistered::Udp(s)
            }
        })
    }

    fn dup(&self) -> io::Result<OwnedFd> {
        match self {
            Unregistered::Tcp(l) => l.as_fd().try_clone_to_owned(),
            Unregistered::Udp(s) => s.as_fd().try_clone_to_owned(),
        }
    }

    /// Registers the socket with the I/O driver of the runtime `handle` belongs to: its
    /// readiness is then polled by that worker's epoll.
    fn register(self, handle: &tokio::runtime::Handle) -> io::Result<Listener> {
        let _in_worker = handle.enter();
        Ok(match self {
            Unregistered::Tcp(l) => Listener::Tcp(TcpListener::from_std(l)?),
            Unregistered::Udp(s) => Listener::Udp(UdpSocket::from_std(s)?),
        })
    }
}

/// Opens the socket group of a service listening on `listen`: the `inherited` sockets when a
/// binary upgrade handed some over (all of them, topped up to one per worker), else a new
/// group of one socket per worker.
pub fn open(
    protocol: Protocol,
    listen: SocketAddr,
    inherited: Vec<OwnedFd>,
    workers: &Workers,
) -> io::Result<Group> {
    let mut sockets = Vec::with_capacity(workers.len().max(inherited.len()));
    let fresh = inherited.is_empty();
    for fd in inherited {
        sockets.push(Unregistered::from_fd(protocol, fd)?);
    }
    if fresh {
        ensure_free(protocol, listen)?;
        sockets.push(bind(protocol, listen)?);
    }
    // With port 0 the first socket chose the port; the others join it there.
    let local_addr = sockets
        .first()
        .ok_or_else(|| io::Error::other("no socket"))?
        .local_addr()?;
    while sockets.len() < workers.len() {
        match bind(protocol, local_addr) {
            Ok(s) => sockets.push(s),
            Err(e) if !fresh => {
                warn!(listen = %local_addr, error = %e, sockets = sockets.len(),
                      workers = workers.len(),
                      "cannot add a socket to the inherited group; its sockets serve alone");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    if !fresh {
        info!(listen = %local_addr, sockets = sockets.len(), workers = workers.len(),
              "upgrade: socket group inherited");
    }
    let mut group = Group {
        local_addr,
        sockets: Vec::with_capacity(sockets.len()),
        handoff: Vec::with_capacity(sockets.len()),
    };
    for (i, socket) in sockets.into_iter().enumerate() {
        group.handoff.push(socket.dup()?);
        group.sockets.push(socket.register(workers.handle(i))?);
    }
    Ok(group)
}

fn bind(protocol: Protocol, addr: SocketAddr) -> io::Result<Unregistered> {
    Ok(match protocol {
        Protocol::Tcp => Unregistered::Tcp(tcp::bind(addr)?),
        Protocol::Udp => Unregistered::Udp(udp::bind(addr)?),
    })
}

/// Fails with "address in use" when another socket holds `addr`: a plain bind (without
/// `SO_REUSEPORT`) conflicts with any socket bound there, a group included. SO_REUSEADDR on TCP
/// as the listeners have it, so connections of ours in TIME_WAIT do not count. Port 0 is always
/// free.
fn ensure_free(protocol: Protocol, addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let (kind, proto) = match protocol {
        Protocol::Tcp => (socket2::Type::STREAM, socket2::Protocol::TCP),
        Protocol::Udp => (socket2::Type::DGRAM, socket2::Protocol::UDP),
    };
    let probe = socket2::Socket::new(socket2::Domain::for_address(addr), kind, Some(proto))?;
    if protocol == Protocol::Tcp {
        probe.set_reuse_address(true)?;
    }
    tcp::freebind(&probe, addr);
    probe.bind(&addr.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn a_group_has_one_socket_per_worker_on_one_address() {
        let workers = Workers::start(3).unwrap();
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let group = open(protocol, local(0), Vec::new(), &workers).unwrap();
            assert_eq!(group.sockets.len(), 3);
            assert_eq!(group.handoff.len(), 3);
            assert_ne!(group.local_addr.port(), 0);
        }
    }

    #[tokio::test]
    async fn a_port_held_by_another_socket_is_refused() {
        let workers = Workers::ambient();
        // Another process's listener, with SO_REUSEPORT set as a second tandem's would be.
        let other = open(Protocol::Tcp, local(0), Vec::new(), &workers).unwrap();
        let err = open(Protocol::Tcp, other.local_addr, Vec::new(), &workers)
            .err()
            .expect("the port is taken");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let udp = std::net::UdpSocket::bind(local(0)).unwrap();
        let err = open(
            Protocol::Udp,
            udp.local_addr().unwrap(),
            Vec::new(),
            &workers,
        )
        .err()
        .expect("the port is taken");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn an_inherited_group_is_kept_whole_and_topped_up() {
        let one = Workers::ambient();
        let three = Workers::start(3).unwrap();
        let old = open(Protocol::Tcp, local(0), Vec::new(), &three).unwrap();
        // More inherited sockets than workers: all of them serve.
        let fds = old.handoff.iter().map(|f| f.try_clone().unwrap()).collect();
        let kept = open(Protocol::Tcp, local(0), fds, &one).unwrap();
        assert_eq!(kept.sockets.len(), 3);
        assert_eq!(kept.local_addr, old.local_addr);
        // Fewer: topped up to one per worker, on the same port.
        let fds = vec![old.handoff[0].try_clone().unwrap()];
        let topped = open(Protocol::Tcp, local(0), fds, &three).unwrap();
        assert_eq!(topped.sockets.len(), 3);
        assert_eq!(topped.local_addr, old.local_addr);
    }

    #[tokio::test]
    async fn a_socket_without_reuseport_is_served_alone() {
        let three = Workers::start(3).unwrap();
        let plain = std::net::TcpListener::bind(local(0)).unwrap();
        let fd = plain.as_fd().try_clone_to_owned().unwrap();
        let group = open(Protocol::Tcp, local(0), vec![fd], &three).unwrap();
        assert_eq!(group.sockets.len(), 1);
    }
}
