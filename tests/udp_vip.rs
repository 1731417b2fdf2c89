//! A UDP service on the wildcard address answers each client from the address the client sent
//! to: two loopback addresses stand for two VIPs of the machine (no root needed). Clients use
//! connected sockets, which take datagrams only from the address they connected to, as a STUN
//! or TURN client behind a stateful firewall effectively does.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;

#[tokio::test]
async fn a_wildcard_udp_service_replies_from_the_address_it_was_sent_to() {
    let ms = udp_members("u", 100, 2).await;
    let toml = format!(
        "{}{}",
        udp_pool_toml("p", &ms, ""),
        udp_service_toml("s", "p", "").replace("127.0.0.1:0", "0.0.0.0:0")
    );
    let app = balancer(&toml).await;
    let port = app.view().services()[0].local_addr.port();
    let mut buf = [0u8; 256];
    for (i, vip) in ["127.0.0.1", "127.0.0.2"].into_iter().enumerate() {
        let vip: IpAddr = vip.parse().expect("ip");
        let to = SocketAddr::new(vip, port);
        // Clients on other loopback addresses, so the kernel's own choice of source for a reply
        // (127.0.0.1 for any 127/8 destination) differs from the second VIP.
        for c in 0..3 {
            let client = udp_client(client_ip(600 + 10 * i as u32 + c)).await;
            client.connect(to).await.expect("connect");
            let mut answered = None;
            for _ in 0..5 {
                client.send(b"who").await.expect("send");
                if let Ok(r) =
                    tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf)).await
                {
                    answered = Some(r.expect("a reply from the address sent to"));
                    break;
                }
            }
            let n = answered.unwrap_or_else(|| panic!("no reply from {to}"));
            let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(reply.ends_with("|who"), "{reply}");
            // Affinity and the session still hold: the next exchanges are answered by the
            // same member.
            let name = reply.split('|').next().expect("name").to_string();
            for _ in 0..5 {
                client.send(b"again").await.expect("send");
                let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
                    .await
                    .expect("reply")
                    .expect("recv");
                assert_eq!(String::from_utf8_lossy(&buf[..n]), format!("{name}|again"));
            }
        }
    }
    let st = app.view().services()[0].stats.snapshot();
    assert_eq!(st.sessions_created, 6, "one session per client");
    app.shutdown(Duration::from_secs(1)).await;
}
