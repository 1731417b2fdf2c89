//! Replies from the VIP on a wildcard UDP listener.
//!
//! A UDP socket bound to `0.0.0.0` (or `::`) receives datagrams sent to every address of the
//! machine, and a plain `sendto` on it leaves from whatever source address the route picks: a
//! client that sent to VIP A may get its reply from the machine's primary address, which a
//! connected client socket (and any NAT or firewall on the way) drops. So on a wildcard
//! listener the destination of each datagram is read with IP_PKTINFO / IPV6_RECVPKTINFO, and
//! each reply is sent with that address as its source (the same ancillary message on
//! `sendmsg`), as NGINX and unbound do.
//!
//! Chosen over one socket per local address (bind each address of the machine): that misses
//! addresses added after start (a VIP moved in by VRRP), needs a socket per address to hand
//! over in a binary upgrade, and splits one service over many receive loops. The cost here is
//! one control message per datagram, only on wildcard listeners: a listener on a specific
//! address already replies from it and keeps the plain calls.
//!
//! Hot path: no allocation per datagram. The receive side fills a control buffer the receive
//! loop owns; the send side uses `sendmmsg` with headers preallocated once per thread (nix's
//! `sendmsg` would allocate the control buffer on every call). The `unsafe` of building
//! control messages lives in nix; this crate forbids its own.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6,
    SockaddrStorage, recvmsg, sendmmsg, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Space for the one control message a receive asks for (the IPv6 one is the larger).
pub const CONTROL_SPACE: usize = nix::sys::socket::cmsg_space::<libc::in6_pktinfo>();

/// Asks the kernel to tell the destination of every datagram on `socket`, bound to `local`.
/// Returns whether it is on: only for a wildcard address (a specific one replies from itself).
pub fn enable(socket: &UdpSocket, local: SocketAddr) -> io::Result<bool> {
    if !local.ip().is_unspecified() {
        return Ok(false);
    }
    let fd = socket.as_fd();
    match local {
        SocketAddr::V4(_) => setsockopt(&fd, sockopt::Ipv4PacketInfo, &true)?,
        // Also covers IPv4 datagrams on a dual-stack socket (reported as v4-mapped).
        SocketAddr::V6(_) => setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)?,
    }
    Ok(true)
}

/// Receives one datagram without waiting: its length, the sender, and the address it was sent
/// to (when the kernel reported it). `control` is scratch space of [`CONTROL_SPACE`] bytes.
pub fn try_recv(
    socket: &UdpSocket,
    buf: &mut [u8],
    control: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    socket.try_io(Interest::READABLE, || {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut *control),
            MsgFlags::MSG_DONTWAIT,
        )?;
        let peer = msg
            .address
            .as_ref()
            .and_then(socket_addr)
            .ok_or_else(|| io::Error::other("datagram without a sender address"))?;
        let mut local = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                match cmsg {
                    ControlMessageOwned::Ipv4PacketInfo(info) => {
                        local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            info.ipi_addr.s_addr,
                        ))));
                    }
                    ControlMessageOwned::Ipv6PacketInfo(info) => {
                        // An IPv4 datagram on a dual-stack socket shows as v4-mapped, as its
                        // sender does; the reply's control message takes it in that form.
                        local = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
        }
        Ok((msg.bytes, peer, local))
    })
}

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

thread_local! {
    /// One preallocated `sendmmsg` header per family, its control buffer sized exactly for
    /// one pktinfo message (the kernel rejects a control length with trailing empty space).
    static SEND_V4: RefCell<MultiHeaders<SockaddrIn>> = RefCell::new(MultiHeaders::preallocate(
        1,
        Some(nix::cmsg_space!(libc::in_pktinfo)),
    ));
    static SEND_V6: RefCell<MultiHeaders<SockaddrIn6>> = RefCell::new(MultiHeaders::preallocate(
        1,
        Some(nix::cmsg_space!(libc::in6_pktinfo)),
    ));
}

/// Sends `datagram` to `to` with `from` as its source address, without waiting.
pub fn try_send_from(
    socket: &UdpSocket,
    datagram: &[u8],
    to: SocketAddr,
    from: IpAddr,
) -> io::Result<usize> {
    socket.try_io(Interest::WRITABLE, || send_once(socket, datagram, to, from))
}

/// [`try_send_from`], waiting for room in the socket's send buffer.
pub async fn send_from(
    socket: &UdpSocket,
    datagram: &[u8],
    to: SocketAddr,
    from: IpAddr,
) -> io::Result<usize> {
    socket
        .async_io(Interest::WRITABLE, || send_once(socket, datagram, to, from))
        .await
}

fn send_once(
    socket: &UdpSocket,
    datagram: &[u8],
    to: SocketAddr,
    from: IpAddr,
) -> io::Result<usize> {
    let fd = socket.as_raw_fd();
    let iov = [IoSlice::new(datagram)];
    let flags = MsgFlags::MSG_DONTWAIT;
    let sent = match (to, from) {
        (SocketAddr::V4(to), IpAddr::V4(from)) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(from).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            let cmsg = [ControlMessage::Ipv4PacketInfo(&info)];
            SEND_V4.with_borrow_mut(|headers| {
                sendmmsg(
                    fd,
                    headers,
                    [&iov],
                    [Some(SockaddrIn::from(to))],
                    cmsg,
                    flags,
                )
                .map(|mut r| r.next().map_or(0, |r| r.bytes))
            })
        }
        (SocketAddr::V6(to), from) => {
            let from = match from {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            };
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: from.octets(),
                },
                ipi6_ifindex: 0,
            };
            let cmsg = [ControlMessage::Ipv6PacketInfo(&info)];
            SEND_V6.with_borrow_mut(|headers| {
                sendmmsg(
                    fd,
                    headers,
                    [&iov],
                    [Some(SockaddrIn6::from(to))],
                    cmsg,
                    flags,
                )
                .map(|mut r| r.next().map_or(0, |r| r.bytes))
            })
        }
        // An IPv4 client on an IPv4 socket always has an IPv4 destination; never reached.
        (SocketAddr::V4(_), IpAddr::V6(_)) => {
            return Err(io::Error::other("IPv6 source for an IPv4 client"));
        }
    };
    Ok(sent?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two addresses of loopback, a listener on the wildcard: each client hears back from the
    /// address it wrote to.
    #[tokio::test]
    async fn replies_leave_from_the_address_the_client_sent_to() {
        let listener = UdpSocket::bind("0.0.0.0:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(enable(&listener, listener.local_addr().expect("addr")).expect("pktinfo"));
        let mut control = [0u8; CONTROL_SPACE];
        let mut buf = [0u8; 64];
        for vip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
            let vip: IpAddr = vip.parse().expect("ip");
            let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
            client.connect((vip, port)).await.expect("connect");
            client.send(b"hello").await.expect("send");
            let (n, peer, local) = loop {
                listener.readable().await.expect("readable");
                match try_recv(&listener, &mut buf, &mut control) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => break r.expect("recv"),
                }
            };
            assert_eq!(&buf[..n], b"hello");
            assert_eq!(peer, client.local_addr().expect("addr"));
            assert_eq!(local, Some(vip));
            send_from(&listener, b"back", peer, vip)
                .await
                .expect("send from the vip");
            // A connected socket only takes datagrams from the address it connected to.
            let n = client.recv(&mut buf).await.expect("reply");
            assert_eq!(&buf[..n], b"back");
        }
    }
}
