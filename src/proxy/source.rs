//! The source address of the member side: a service's `source` key.
//!
//! - `auto`: the socket is left unbound and the kernel picks the address the route to the
//!   member names (tandem's own), as before this key existed.
//! - `client`: transparent proxying. The socket gets IP_TRANSPARENT (IPV6_TRANSPARENT), which
//!   lets it bind an address that is not local, and is bound to the client's address before it
//!   connects, so members see the client (HAProxy `usesrc clientip`, NGINX
//!   `proxy_bind $remote_addr transparent`). The client's IP only, not its port: the kernel
//!   picks a port, so two connections of one client to the same member never collide. Replies
//!   reach tandem only with the routing of README "Edge A/V without SNAT".
//! - a list of addresses: an SNAT pool. A client's IP hashes (fixed seed) to one address of
//!   the member's family, so a client keeps its source; when that address has no port left
//!   towards the member (EADDRNOTAVAIL), the next ones are tried, so the pool's whole capacity
//!   is used before a client is turned away. TCP sockets are bound with
//!   IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect, by the full 4-tuple, so each
//!   address brings a whole ephemeral port range per member rather than one range shared by
//!   all members.
//!
//! [`check`] runs when a service is bound or a reload brings a new `source`: transparency is
//! refused without CAP_NET_ADMIN and a pool address may not be local, and both should fail the
//! start or the reload with a clear message rather than every connection later.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;

use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::config::{Service, Source};
use crate::local_error;

/// Seed of the client-to-source-address hash; fixed so every instance and restart maps a client
/// to the same address.
const SOURCE_SEED: u64 = 0x7461_6e64_656d_5352;

/// Why a service's `source` cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "service \"{service}\": source = \"client\" needs CAP_NET_ADMIN: the kernel refused \
         IP_TRANSPARENT ({error}); give tandem the capability (systemd/transparent.conf)"
    )]
    Transparent {
        service: String,
        #[source]
        error: io::Error,
    },
    #[error(
        "service \"{service}\": source address {addr} cannot be bound ({error}); list only \
         addresses of this machine"
    )]
    Address {
        service: String,
        addr: IpAddr,
        #[source]
        error: io::Error,
    },
}

/// Checks that `service`'s `source` can be used here: the transparent option is granted, and
/// every pool address can be bound. A few syscalls, no traffic.
pub fn check(service: &Service) -> Result<(), SourceError> {
    match &service.source {
        Source::Auto => Ok(()),
        Source::Client => {
            let mut families = vec![Domain::IPV4];
            if service.listen.is_ipv6() {
                families.push(Domain::IPV6);
            }
            for domain in families {
                let transparent = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
                    .and_then(|s| set_transparent(&s, domain == Domain::IPV6));
                if let Err(error) = transparent {
                    return Err(SourceError::Transparent {
                        service: service.name.clone(),
                        error,
                    });
                }
            }
            Ok(())
        }
        Source::Pool(addrs) => {
            for &addr in addrs {
                let bound = Socket::new(
                    Domain::for_address(SocketAddr::new(addr, 0)),
                    Type::STREAM,
                    Some(Protocol::TCP),
                )
                .and_then(|s| {
                    no_port(&s);
                    s.bind(&SocketAddr::new(addr, 0).into())
                });
                if let Err(error) = bound {
                    return Err(SourceError::Address {
                        service: service.name.clone(),
                        addr,
                        error,
                    });
                }
            }
            Ok(())
        }
    }
}

/// Connects to `member` from the address `source` names for a client at `client`. `tune` sets
/// the socket's options before the connect, on the one socket it creates per attempt.
pub async fn connect_tcp(
    source: &Source,
    client: IpAddr,
    member: SocketAddr,
    tune: fn(&Socket),
) -> io::Result<TcpStream> {
    match source {
        Source::Auto => connect(tcp_socket(member, tune)?, member).await,
        Source::Client => {
            let socket = tcp_socket(member, tune)?;
            // A client of the other family cannot be the source: tandem's own address is.
            if let Some(ip) = client_source(client, member) {
                set_transparent(&socket, member.is_ipv6())?;
                no_port(&socket);
                socket.bind(&SocketAddr::new(ip, 0).into())?;
            }
            connect(socket, member).await
        }
        // Boxed: its loop state would double the size of every connect in place (600 bytes
        // against 350), and with it the per-connection allocation that holds the connect phase.
        Source::Pool(addrs) => Box::pin(connect_from_pool(addrs, client, member, tune)).await,
    }
}

/// [`connect_tcp`] from an SNAT pool: the client's address first, then the next ones while an
/// address has no port left towards the member.
async fn connect_from_pool(
    addrs: &[IpAddr],
    client: IpAddr,
    member: SocketAddr,
    tune: fn(&Socket),
) -> io::Result<TcpStream> {
    let mut last = None;
    for ip in pool_order(addrs, client, member) {
        let socket = tcp_socket(member, tune)?;
        no_port(&socket);
        let attempt = match socket.bind(&SocketAddr::new(ip, 0).into()) {
            Ok(()) => connect(socket, member).await,
            Err(e) => Err(e),
        };
        match attempt {
            Err(e) if local_error::classify(&e) == Some(local_error::LocalReason::Ports) => {
                last = Some(e);
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(no_address))
}

/// A non-blocking connect that asks for the socket's error only when the connect failed.
///
/// Tokio's own connect reads SO_ERROR after every connect, one syscall per connection that
/// the readiness event already answers: a refused, reset or unreachable connect ends in state
/// CLOSE, which epoll reports as EPOLLHUP (with EPOLLERR), and a completed one never does.
async fn connect(socket: Socket, member: SocketAddr) -> io::Result<TcpStream> {
    match socket.connect(&member.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into())?;
    // Waiting for readiness leaves it set, so the first write goes straight to the socket.
    let ready = stream.ready(Interest::WRITABLE).await?;
    if ready.is_write_closed() {
        return Err(stream
            .take_error()?
            .unwrap_or_else(|| io::ErrorKind::NotConnected.into()));
    }
    Ok(stream)
}

/// A UDP socket for a session of `client` with `member`, bound as `source` says (not yet
/// connected).
pub fn udp_socket(
    source: &Source,
    client: IpAddr,
    member: SocketAddr,
) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(member),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    let any = unspecified(member);
    match source {
        Source::Auto => socket.bind(&SocketAddr::new(any, 0).into())?,
        Source::Client => match client_source(client, member) {
            Some(ip) => {
                set_transparent(&socket, member.is_ipv6())?;
                socket.bind(&SocketAddr::new(ip, 0).into())?;
            }
            None => socket.bind(&SocketAddr::new(any, 0).into())?,
        },
        Source::Pool(addrs) => {
            let mut result = Err(no_address());
            for ip in pool_order(addrs, client, member) {
                result = socket.bind(&SocketAddr::new(ip, 0).into());
                match &result {
                    Err(e) if local_error::classify(e) == Some(local_error::LocalReason::Ports) => {
                    }
                    _ => break,
                }
            }
            result?;
        }
    }
    Ok(socket.into())
}

/// The client's address as a source towards `member`: itself, unmapped from a dual-stack
/// listener's IPv4-mapped form, when the families match.
fn client_source(client: IpAddr, member: SocketAddr) -> Option<IpAddr> {
    let client = client.to_canonical();
    (client.is_ipv4() == member.is_ipv4()).then_some(client)
}

/// The pool's addresses of `member`'s family, starting at the one `client` hashes to.
fn pool_order(
    addrs: &[IpAddr],
    client: IpAddr,
    member: SocketAddr,
) -> impl Iterator<Item = IpAddr> + '_ {
    let family = move |a: &&IpAddr| a.is_ipv4() == member.is_ipv4();
    let n = addrs.iter().filter(family).count();
    let start = if n == 0 {
        0
    } else {
        let client = client.to_canonical();
        let hash = match client {
            IpAddr::V4(v4) => xxh3_64_with_seed(&v4.octets(), SOURCE_SEED),
            IpAddr::V6(v6) => xxh3_64_with_seed(&v6.octets(), SOURCE_SEED),
        };
        (hash % n as u64) as usize
    };
    addrs
        .iter()
        .filter(family)
        .cycle()
        .skip(start)
        .take(n)
        .copied()
}

fn no_address() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::ADDRNOTAVAIL.raw_os_error())
}

fn unspecified(member: SocketAddr) -> IpAddr {
    match member {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// A non-blocking TCP socket (one `socket` call: the flag goes with it) with `tune`'s options.
fn tcp_socket(member: SocketAddr, tune: fn(&Socket)) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(member),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    tune(&socket);
    Ok(socket)
}

fn set_transparent(socket: &Socket, v6: bool) -> io::Result<()> {
    if v6 {
        socket.set_ip_transparent_v6(true)
    } else {
        socket.set_ip_transparent_v4(true)
    }
}

/// IP_BIND_ADDRESS_NO_PORT: the bind takes the address only, the port comes at connect.
/// Best effort: without it (kernels before 4.2) a bind takes a port from the range at once,
/// which works with one range per address instead of one per address and member.
fn no_port(socket: &Socket) {
    let _ = setsockopt(&socket.as_fd(), sockopt::IpBindAddressNoPort, &true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_client_keeps_its_pool_address_and_the_others_follow() {
        let pool = [
            ip("10.0.0.1"),
            ip("2001:db8::1"),
            ip("10.0.0.2"),
            ip("10.0.0.3"),
        ];
        let member: SocketAddr = "10.1.0.11:443".parse().expect("addr");
        let order: Vec<IpAddr> = pool_order(&pool, ip("192.0.2.7"), member).collect();
        assert_eq!(order.len(), 3, "IPv4 addresses only");
        assert!(order.iter().all(IpAddr::is_ipv4));
        let again: Vec<IpAddr> = pool_order(&pool, ip("192.0.2.7"), member).collect();
        assert_eq!(order, again, "the same client gets the same order");
        // A dual-stack listener's mapped form is the same client.
        let mapped: Vec<IpAddr> = pool_order(&pool, ip("::ffff:192.0.2.7"), member).collect();
        assert_eq!(order, mapped);
        // Clients spread over the addresses.
        let firsts: std::collections::HashSet<IpAddr> = (0..64u8)
            .filter_map(|i| pool_order(&pool, ip(&format!("192.0.2.{i}")), member).next())
            .collect();
        assert_eq!(firsts.len(), 3);
        let v6: Vec<IpAddr> = pool_order(
            &pool,
            ip("2001:db8:9::1"),
            "[2001:db8::9]:443".parse().expect("addr"),
        )
        .collect();
        assert_eq!(v6, vec![ip("2001:db8::1")]);
    }

    #[test]
    fn the_client_is_the_source_only_within_its_family() {
        let v4: SocketAddr = "10.1.0.11:443".parse().expect("addr");
        assert_eq!(
            client_source(ip("::ffff:192.0.2.7"), v4),
            Some(ip("192.0.2.7"))
        );
        assert_eq!(client_source(ip("2001:db8::7"), v4), None);
    }
}
