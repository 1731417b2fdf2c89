//! The demo member's kill, which the churn soaks' verdicts rest on (`tests/common/churn.rs`,
//! `Kill::done`): once `kill` returns, the member takes no new connection.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::Command;

use tandem::demo::DemoMember;

/// A process forked while a member is killed (the soaks run `kill -HUP` and spawn balancers
/// while they kill members) holds a copy of every descriptor until its exec. Closing ours does
/// not close the listener then, and the kernel goes on completing handshakes into its queue:
/// the chaos soak's balancer connected to a member whose kill had returned, and its clients
/// were reset when the copy closed. The member must refuse all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_refuses_while_a_forked_process_holds_its_descriptors() {
    let mut member = DemoMember::start("m", "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("member starts");
    let addr = member.addr();
    // The child says it has forked, then waits for us before its exec, holding the copies.
    let (mut forked_r, forked_w) = std::io::pipe().expect("pipe");
    let (go_r, mut go_w) = std::io::pipe().expect("pipe");
    let mut command = Command::new("true");
    // SAFETY: the closure only writes and reads pipes (async-signal-safe system calls, no
    // allocation), as code between fork and exec must.
    unsafe {
        command.pre_exec(move || {
            (&forked_w).write_all(b"f")?;
            (&go_r).read_exact(&mut [0u8; 1])
        });
    }
    // `status` returns after the exec, which waits for us: on its own thread.
    let child = std::thread::spawn(move || command.status());
    tokio::task::spawn_blocking(move || forked_r.read_exact(&mut [0u8; 1]))
        .await
        .expect("reader thread")
        .expect("the child forked");

    member.kill().await;
    let connect = tokio::net::TcpStream::connect(addr).await;

    go_w.write_all(b"g").expect("release the child");
    let status = child.join().expect("spawning thread").expect("child runs");
    assert!(status.success());
    match connect {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("connect to the killed member: {e}, expected refused"),
        Ok(_) => panic!(
            "a connect to the killed member succeeded: its listener lived on in the forked \
             process's copy of the descriptor"
        ),
    }
}
