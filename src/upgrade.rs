//! Binary upgrades without refusing a connection: the running process hands its listening
//! sockets to a new one over a Unix socket (`SCM_RIGHTS`), the new one starts on them, says
//! "ready", and only then does the old one stop accepting and drain.
//!
//! Why a handoff and not a fresh bind: the kernel socket (and its accept queue) stays the same
//! across the upgrade, so no SYN waiting in the queue is lost and no connect is refused; both
//! processes accept from it for a moment, then the old one closes its descriptor and the socket
//! lives on in the new one. systemd's file-descriptor store would also keep sockets across a
//! restart, but only for a stop-then-start, which leaves a gap with nobody accepting.
//!
//! The exchange on one connection to the control socket:
//! 1. the new process connects;
//! 2. the old one sends one frame: a 4-byte big-endian length, a JSON list of [`SocketInfo`],
//!    and, as `SCM_RIGHTS` on the same message, one descriptor per entry in list order. Linux
//!    takes at most [`MAX_SOCKETS`] (253, `SCM_MAX_FD`) descriptors per message, and a tandem
//!    with several workers has one socket per worker per service (24 services on 12 workers
//!    are 288): past 253, the descriptors go in chunks of 253, the first on the frame's first
//!    byte, each further chunk on one byte of its own after the frame (`+`), so the receiver
//!    reads `4 + length + chunks - 1` bytes. With 253 sockets or fewer this is the one-message
//!    frame of earlier versions, so either side may be the older binary;
//! 3. the new one validates its config, starts (first health round included) and writes
//!    `ready\n`; if it fails first, the connection closes without it and the old process keeps
//!    serving.
//! 4. the old one may send more frames of the same shape, JSON with descriptors beside it
//!    ([`send_frame`], [`receive_frame`]): the BGP sessions go this way after "ready"
//!    ([`crate::bgp::handoff`]);
//! 5. the old one closes the connection when it stops taking requests; the new one then reads
//!    its config file again and reloads if it changed: a reload the old one applied after step 2
//!    is one the new one, which had read the file already, has not seen.
//!
//! [`start_successor`] starts the new process itself (SIGUSR2), so that under systemd it runs in
//! the unit's cgroup and systemd accepts its `MAINPID=`.
//!
//! This module does the socket work, the matching and the spawning; it knows nothing of the app.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

/// Where `tandem run` listens for upgrade requests unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/tandem/upgrade.sock";
/// Most descriptors one `SCM_RIGHTS` message carries on Linux (`SCM_MAX_FD`).
pub const MAX_SOCKETS: usize = 253;
/// Most sockets one handoff carries: 64 chunks, far past any config (a socket per worker per
/// service), and a bound on what a malformed frame can make the receiver wait for.
pub const MAX_HANDOFF: usize = 64 * MAX_SOCKETS;
/// The byte each chunk of descriptors after the first travels on.
const CHUNK_MARK: u8 = b'+';
/// Largest handoff frame accepted (the JSON list, not the descriptors).
const MAX_FRAME: usize = 1 << 20;
/// What the new process writes once it serves.
const READY: &[u8] = b"ready\n";

/// Why a handoff failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed handoff: {0}")]
    Protocol(String),
}

/// What a handed-over socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A TCP service's listener.
    Tcp,
    /// A UDP service's listening socket.
    Udp,
    /// The admin API's listener.
    Admin,
}

/// One handed-over socket, as described next to its descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    pub kind: Kind,
    /// Service name (`admin` for the admin API).
    pub name: String,
    /// The address in the old process's config (port 0 stays 0).
    pub listen: SocketAddr,
    /// The address the socket is bound to.
    pub local: SocketAddr,
}

impl SocketInfo {
    /// Whether this socket serves `kind` `name` configured on `listen`: the bound address
    /// when the config names a port; with port 0 (tests), the same name and configured address.
    pub fn serves(&self, kind: Kind, name: &str, listen: SocketAddr) -> bool {
        self.kind == kind
            && if listen.port() == 0 {
                self.name == name && self.listen == listen
            } else {
                self.local == listen
            }
    }
}

/// Sockets received from the old process, taken one by one as the new one starts.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<(SocketInfo, OwnedFd)>,
}

impl Inherited {
    /// The socket for `kind` `name` on `listen`, if the old process handed one over.
    pub fn take(&mut self, kind: Kind, name: &str, listen: SocketAddr) -> Option<OwnedFd> {
        let i = self
            .sockets
            .iter()
            .position(|(s, _)| s.serves(kind, name, listen))?;
        Some(self.sockets.swap_remove(i).1)
    }

    /// Every socket for `kind` `name` on `listen` (a service's `SO_REUSEPORT` group: one per
    /// worker of the old process), in the order the old process listed them.
    pub fn take_all(&mut self, kind: Kind, name: &str, listen: SocketAddr) -> Vec<OwnedFd> {
        let (taken, kept) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|(s, _)| s.serves(kind, name, listen));
        self.sockets = kept;
        taken.into_iter().map(|(_, fd)| fd).collect()
    }

    /// How many sockets are left.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether none is left.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Closes the sockets no service of the new config took (in this process only: the old
    /// one keeps serving on them until it stops).
    pub fn close_unused(&mut self) {
        for (s, _) in self.sockets.drain(..) {
            info!(service = %s.name, listen = %s.local,
                  "upgrade: inherited socket not in the new config; closed");
        }
    }
}

/// The old process's side: the control socket new processes connect to.
#[derive(Debug)]
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file we created, so we only ever remove our own.
    id: (u64, u64),
}

impl Control {
    /// Listens on `path`. A file left by a process that is gone is replaced; one another
    /// process still answers on is not, unless `replace` (the successor of that process).
    pub fn bind(path: &Path, replace: bool) -> io::Result<Control> {
        if path.exists() {
            if !replace && std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process listens on it",
                ));
            }
            // Already gone is fine: the process that made it may just have stopped.
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let listener = UnixListener::bind(path)?;
        let meta = std::fs::metadata(path)?;
        Ok(Control {
            listener,
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        })
    }

    /// The next process asking to take over. Only our own user (or root) gets the sockets: a
    /// peer of another user is logged and turned away (the socket file's mode already keeps
    /// others out unless the umask let them in).
    pub async fn accept(&self) -> io::Result<UnixStream> {
        let ours = rustix::process::geteuid().as_raw();
        loop {
            let (stream, _) = self.listener.accept().await?;
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == ours || cred.uid() == 0 => return Ok(stream),
                Ok(cred) => warn!(
                    uid = cred.uid(),
                    "upgrade: request from another user refused"
                ),
                Err(e) => warn!(error = %e, "upgrade: cannot tell who asks; request refused"),
            }
        }
    }

    /// Stops listening and removes the socket file if it is still ours (a successor may have
    /// replaced it).
    pub fn close(self) {
        let ours = std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.id)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Old process: sends `sockets` (descriptions and descriptors) to the new process on `stream`:
/// the frame with the first [`MAX_SOCKETS`] descriptors, then one marker byte per further chunk.
pub async fn hand_over(
    stream: &mut UnixStream,
    sockets: &[(SocketInfo, BorrowedFd<'_>)],
) -> Result<(), UpgradeError> {
    if sockets.len() > MAX_HANDOFF {
        return Err(UpgradeError::Protocol(format!(
            "{} sockets, at most {MAX_HANDOFF} go in one handoff",
            sockets.len()
        )));
    }
    let infos: Vec<&SocketInfo> = sockets.iter().map(|(s, _)| s).collect();
    let frame = encode(&infos)?;
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
    let mut chunks = fds.chunks(MAX_SOCKETS);
    let first = chunks.next().unwrap_or(&[]);
    let sent = send_with_fds(stream, &frame, first).await?;
    // The descriptors went with the first byte; the rest of a long frame follows plainly.
    stream.write_all(&frame[sent..]).await?;
    for chunk in chunks {
        send_with_fds(stream, &[CHUNK_MARK], chunk).await?;
    }
    Ok(())
}

/// Sends `bytes` (at least its first byte) with `fds` attached; returns how many bytes went.
async fn send_with_fds(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    stream
        .async_io(Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(io::Error::other(
                    "descriptors do not fit the control buffer",
                ));
            }
            Ok(sendmsg(
                stream,
                &[IoSlice::new(bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            )?)
        })
        .await
}

/// Old process: waits for the new one to say it serves. `false` when the connection closed
/// (or failed) without it. Cancel-safe.
pub async fn wait_ready(stream: &mut UnixStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if buf[..n].starts_with(READY) => return true,
            Ok(_) => {}
        }
    }
}

/// New process: connects to the old one at `path` and receives its sockets. Keep the returned
/// stream until [`ready`].
pub async fn receive(path: &Path) -> Result<(UnixStream, Inherited), UpgradeError> {
    let mut stream = UnixStream::connect(path).await?;
    let (infos, fds) = receive_listeners(&mut stream).await?;
    Ok((
        stream,
        Inherited {
            sockets: infos.into_iter().zip(fds).collect(),
        },
    ))
}

/// Reads one handoff: the frame and every chunk of descriptors after it. Every read is a
/// `recvmsg`, as a plain read would drop (close) descriptors arriving on the bytes it reads.
async fn receive_listeners(
    stream: &mut UnixStream,
) -> Result<(Vec<SocketInfo>, Vec<OwnedFd>), UpgradeError> {
    let mut fds = Vec::new();
    let mut frame = Vec::new();
    // The length, then the JSON list.
    while frame.len() < 4 {
        receive_more(stream, &mut frame, 4, &mut fds).await?;
    }
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    if len > MAX_FRAME {
        return Err(UpgradeError::Protocol(format!("frame of {len} bytes")));
    }
    while frame.len() < 4 + len {
        receive_more(stream, &mut frame, 4 + len, &mut fds).await?;
    }
    let infos = decode(&frame[4..4 + len])?;
    if infos.len() > MAX_HANDOFF {
        return Err(UpgradeError::Protocol(format!(
            "{} sockets described",
            infos.len()
        )));
    }
    // One marker byte per chunk after the first.
    let total = 4 + len + infos.len().div_ceil(MAX_SOCKETS).saturating_sub(1);
    while frame.len() < total {
        receive_more(stream, &mut frame, total, &mut fds).await?;
    }
    if frame[4 + len..].iter().any(|&b| b != CHUNK_MARK) {
        return Err(UpgradeError::Protocol(
            "unexpected bytes after the frame".into(),
        ));
    }
    if infos.len() != fds.len() {
        return Err(UpgradeError::Protocol(format!(
            "{} sockets described, {} received",
            infos.len(),
            fds.len()
        )));
    }
    Ok((infos, fds))
}

/// One `recvmsg`: appends at most `upto - got.len()` bytes to `got` and the descriptors that
/// came with them to `fds`. The kernel ends a read after a message that carried descriptors, so
/// one read never holds two chunks, and the control buffer has room for one.
async fn receive_some(
    stream: &mut UnixStream,
    got: &mut Vec<u8>,
    upto: usize,
    fds: &mut Vec<OwnedFd>,
) -> Result<usize, UpgradeError> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let start = got.len();
    got.resize(upto, 0);
    let read = stream
        .async_io(Interest::READABLE, || {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = recvmsg(
                &*stream,
                &mut [IoSliceMut::new(&mut got[start..])],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            Ok((msg.bytes, msg.flags))
        })
        .await;
    let (n, flags) = match read {
        Ok(r) => r,
        Err(e) => {
            got.truncate(start);
            return Err(e.into());
        }
    };
    got.truncate(start + n);
    if flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(UpgradeError::Protocol(
            "descriptors cut off (more than one chunk in a message)".into(),
        ));
    }
    Ok(n)
}

/// [`receive_some`], where the connection closing is an error: the handoff is incomplete.
async fn receive_more(
    stream: &mut UnixStream,
    got: &mut Vec<u8>,
    upto: usize,
    fds: &mut Vec<OwnedFd>,
) -> Result<(), UpgradeError> {
    match receive_some(stream, got, upto, fds).await? {
        0 => Err(UpgradeError::Protocol(
            "connection closed before the handoff was complete".into(),
        )),
        _ => Ok(()),
    }
}

/// New process: tells the old one it serves; the old one stops accepting and drains. Keep the
/// stream for [`wait_closed`].
pub async fn ready(stream: &mut UnixStream) -> io::Result<()> {
    stream.write_all(READY).await?;
    stream.shutdown().await
}

/// New process, after [`ready`]: resolves once the old process has closed its end, which it
/// does when it stops taking requests (or exits). Until then it may still apply a reload that
/// the new process, having read the config earlier, has not seen. Cancel-safe.
pub async fn wait_closed(stream: &mut UnixStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Sends one more frame on the control connection, after the sockets: `value` as JSON (a
/// 4-byte big-endian length first) and `fds`, at most [`MAX_SOCKETS`], as `SCM_RIGHTS` on its
/// first byte. The other side reads it with [`receive_frame`].
pub async fn send_frame<T: Serialize + ?Sized>(
    stream: &mut UnixStream,
    value: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), UpgradeError> {
    if fds.len() > MAX_SOCKETS {
        return Err(UpgradeError::Protocol(format!(
            "{} descriptors, at most {MAX_SOCKETS} go in one frame",
            fds.len()
        )));
    }
    let frame = encode(value)?;
    let sent = send_with_fds(stream, &frame, fds).await?;
    stream.write_all(&frame[sent..]).await?;
    Ok(())
}

/// Reads a frame sent with [`send_frame`]: the value and the descriptors that came with it.
/// `None` when the connection closed before the frame began (an old process that sends none).
/// Not cancel-safe: run it on a task of its own if it must race something.
pub async fn receive_frame<T: serde::de::DeserializeOwned>(
    stream: &mut UnixStream,
) -> Result<Option<(T, Vec<OwnedFd>)>, UpgradeError> {
    let mut head = Vec::with_capacity(4);
    let mut fds = Vec::new();
    // The descriptors ride on the first byte: read that one alone with recvmsg, the rest plainly.
    let got = receive_some(stream, &mut head, 1, &mut fds).await?;
    if got == 0 {
        return Ok(None);
    }
    head.resize(4, 0);
    stream.read_exact(&mut head[1..]).await?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > MAX_FRAME {
        return Err(UpgradeError::Protocol(format!("frame of {len} bytes")));
    }
    let mut json = vec![0u8; len];
    stream.read_exact(&mut json).await?;
    let value = serde_json::from_slice(&json).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    Ok(Some((value, fds)))
}

/// Starts this binary again with the arguments this process got, plus `--upgrade-from socket`.
/// The program is `argv[0]` (the path the service manager started, where a package upgrade put
/// the new binary), not `/proc/self/exe` (the old binary). The child inherits stderr (the log)
/// and `NOTIFY_SOCKET`, and stays in this process's cgroup, so systemd accepts its `MAINPID=`.
pub fn start_successor(socket: &Path) {
    let mut args = std::env::args_os();
    let Some(program) = args.next() else {
        warn!("upgrade: no argv[0]; cannot start a new process");
        return;
    };
    let mut kept = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--upgrade-from" {
            args.next();
        } else if !arg.to_string_lossy().starts_with("--upgrade-from=") {
            kept.push(arg);
        }
    }
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&kept)
        .arg("--upgrade-from")
        .arg(socket)
        .stdin(std::process::Stdio::null());
    match command.spawn() {
        Ok(mut child) => {
            info!(program = %Path::new(&program).display(), pid = child.id(),
                  "upgrade: new process started");
            // Reaped here, so a new process that fails does not linger as a zombie.
            tokio::spawn(async move {
                if let Ok(status) = child.wait().await
                    && !status.success()
                {
                    warn!(%status, "upgrade: new process exited");
                }
            });
        }
        Err(e) => warn!(program = %Path::new(&program).display(), error = %e,
                        "upgrade: cannot start a new process"),
    }
}

/// A frame: big-endian length, then `value` as JSON.
fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, UpgradeError> {
    let json = serde_json::to_vec(value).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or_else(|| UpgradeError::Protocol(format!("frame of {} bytes", json.len())))?;
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(&json);
    Ok(frame)
}

fn decode(json: &[u8]) -> Result<Vec<SocketInfo>, UpgradeError> {
    serde_json::from_slice(json).map_err(|e| UpgradeError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn info(kind: Kind, name: &str, listen: &str, local: &str) -> SocketInfo {
        SocketInfo {
            kind,
            name: name.into(),
            listen: listen.parse().unwrap(),
            local: local.parse().unwrap(),
        }
    }

    #[test]
    fn a_named_port_matches_by_bound_address_whatever_the_name() {
        let s = info(Kind::Tcp, "web", "0.0.0.0:443", "0.0.0.0:443");
        assert!(s.serves(Kind::Tcp, "renamed", "0.0.0.0:443".parse().unwrap()));
        assert!(!s.serves(Kind::Udp, "web", "0.0.0.0:443".parse().unwrap()));
        assert!(!s.serves(Kind::Tcp, "web", "0.0.0.0:444".parse().unwrap()));
    }

    #[test]
    fn port_zero_matches_by_name_and_configured_address() {
        let s = info(Kind::Tcp, "fe", "127.0.0.1:0", "127.0.0.1:40000");
        assert!(s.serves(Kind::Tcp, "fe", "127.0.0.1:0".parse().unwrap()));
        assert!(!s.serves(Kind::Tcp, "other", "127.0.0.1:0".parse().unwrap()));
    }

    #[test]
    fn frame_round_trips() {
        let a = info(Kind::Admin, "admin", "127.0.0.1:9900", "127.0.0.1:9900");
        let frame = encode(&[&a]).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode(&frame[4..]).unwrap(), vec![a]);
    }

    /// More sockets than one `SCM_RIGHTS` message carries: three chunks (253, 253, 94), each
    /// descriptor arriving in its place in the list.
    #[tokio::test]
    async fn a_handoff_past_253_sockets_goes_in_several_messages() {
        let (mut old, mut new) = UnixStream::pair().unwrap();
        let listeners: Vec<std::net::UdpSocket> = (0..600)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let sockets: Vec<(SocketInfo, BorrowedFd<'_>)> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let local = l.local_addr().unwrap().to_string();
                (info(Kind::Udp, &format!("s{i}"), &local, &local), l.as_fd())
            })
            .collect();
        let (sent, got) = tokio::join!(hand_over(&mut old, &sockets), receive_listeners(&mut new));
        sent.unwrap();
        let (infos, fds) = got.unwrap();
        assert_eq!(infos.len(), 600);
        assert_eq!(fds.len(), 600);
        for ((info, fd), l) in infos.iter().zip(fds).zip(&listeners) {
            let received = std::net::UdpSocket::from(fd);
            assert_eq!(received.local_addr().unwrap(), l.local_addr().unwrap());
            assert_eq!(info.local, l.local_addr().unwrap());
        }
    }

    #[tokio::test]
    async fn a_handoff_cut_short_is_an_error_not_a_hang() {
        let (mut old, mut new) = UnixStream::pair().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = l.local_addr().unwrap().to_string();
        // 300 described, only the first chunk sent, then the old process goes away.
        let infos: Vec<SocketInfo> = (0..300)
            .map(|i| info(Kind::Tcp, &format!("s{i}"), &local, &local))
            .collect();
        let frame = encode(&infos.iter().collect::<Vec<_>>()).unwrap();
        let fds = vec![l.as_fd(); MAX_SOCKETS];
        let sent = send_with_fds(&old, &frame, &fds).await.unwrap();
        old.write_all(&frame[sent..]).await.unwrap();
        drop(old);
        let err = receive_listeners(&mut new).await.unwrap_err();
        assert!(err.to_string().contains("closed before"), "{err}");
    }

    #[tokio::test]
    async fn a_group_is_taken_whole_and_in_order() {
        let mut inherited = Inherited::default();
        for i in 0..3 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let fd = l.as_fd().try_clone_to_owned().unwrap();
            let name = if i == 1 { "other" } else { "fe" };
            let local = l.local_addr().unwrap().to_string();
            inherited
                .sockets
                .push((info(Kind::Tcp, name, "127.0.0.1:0", &local), fd));
        }
        let group = inherited.take_all(Kind::Tcp, "fe", "127.0.0.1:0".parse().unwrap());
        assert_eq!(group.len(), 2);
        assert_eq!(inherited.len(), 1);
    }

    #[tokio::test]
    async fn sockets_cross_the_control_socket_and_ready_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let control = Control::bind(&path, false).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let described = info(Kind::Tcp, "fe", "127.0.0.1:0", &local.to_string());

        let new = tokio::spawn({
            let path = path.clone();
            async move {
                let (mut stream, mut inherited) = receive(&path).await.unwrap();
                let fd = inherited
                    .take(Kind::Tcp, "fe", "127.0.0.1:0".parse().unwrap())
                    .unwrap();
                let got = std::net::TcpListener::from(fd);
                assert_eq!(got.local_addr().unwrap(), local);
                ready(&mut stream).await.unwrap();
                // The old process closes its end once it takes no more requests.
                wait_closed(&mut stream).await;
            }
        });
        let mut stream = control.accept().await.unwrap();
        hand_over(&mut stream, &[(described, listener.as_fd())])
            .await
            .unwrap();
        assert!(wait_ready(&mut stream).await);
        drop(stream);
        new.await.unwrap();
        assert!(
            Control::bind(&path, false).is_err(),
            "a live socket is not taken"
        );
        control.close();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_later_frame_carries_json_and_descriptors_after_ready() {
        let (mut old, mut new) = UnixStream::pair().unwrap();
        let conn = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = conn.local_addr().unwrap();
        ready(&mut new).await.unwrap();
        assert!(wait_ready(&mut old).await);
        send_frame(&mut old, &vec!["one".to_string()], &[conn.as_fd()])
            .await
            .unwrap();
        drop(old);
        let (value, fds) = receive_frame::<Vec<String>>(&mut new)
            .await
            .unwrap()
            .expect("a frame");
        assert_eq!(value, ["one"]);
        let [fd] = <[OwnedFd; 1]>::try_from(fds).expect("one descriptor");
        assert_eq!(std::net::TcpListener::from(fd).local_addr().unwrap(), local);
        // Then the connection ends: no more frames.
        assert!(
            receive_frame::<Vec<String>>(&mut new)
                .await
                .unwrap()
                .is_none()
        );
    }
}
