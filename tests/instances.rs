//! More than one tandem in front of the same pool (behind a VRRP virtual IP or ECMP): with the
//! same config every instance builds the same Maglev table from fixed seeds, so a client lands
//! on the same member whichever instance its connection reaches, also when a member is down,
//! and also when an instance lists the members in another order.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use tandem::health::state::Verdict;

/// Distinct client source addresses, as the issue asks.
const CLIENTS: u32 = 600;

fn pool_and_service(ms: &[DemoMember]) -> String {
    pool_toml("p", ms) + &fast_tcp_check(2, 2) + &service_toml("s", "p", "")
}

fn differences(a: &[String], b: &[String]) -> Vec<(usize, String, String)> {
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| (i, x.clone(), y.clone()))
        .collect()
}

#[tokio::test]
async fn two_instances_with_the_same_config_send_every_client_to_the_same_member() {
    let mut ms = members("m", 60, 5).await;
    let toml = pool_and_service(&ms);
    let one = balancer(&toml).await;
    let two = balancer(&toml).await;
    let (addr1, addr2) = (
        one.local_addr("s").expect("bound"),
        two.local_addr("s").expect("bound"),
    );

    let via_one = placement(CLIENTS, addr1).await;
    let via_two = placement(CLIENTS, addr2).await;
    assert_eq!(
        differences(&via_one, &via_two),
        vec![],
        "clients placed differently by the two instances"
    );
    let used: HashSet<&String> = via_one.iter().collect();
    assert_eq!(
        used.len(),
        ms.len(),
        "600 clients must reach every member: {:?}",
        counts(&via_one)
    );

    // A member dies; both instances see it (each checks on its own) and still agree: its
    // clients move to the same other members through both, everyone else stays put.
    let mut events1 = one.events();
    let mut events2 = two.events();
    ms[2].stop();
    let limit = Duration::from_secs(10);
    wait_health(&mut events1, ms[2].addr(), Verdict::Down, limit).await;
    wait_health(&mut events2, ms[2].addr(), Verdict::Down, limit).await;

    let down_one = placement(CLIENTS, addr1).await;
    let down_two = placement(CLIENTS, addr2).await;
    assert_eq!(
        differences(&down_one, &down_two),
        vec![],
        "with m3 down the two instances place clients differently"
    );
    for (before, now) in via_one.iter().zip(&down_one) {
        assert_ne!(now, "m3", "a client reached the dead member");
        if before != "m3" {
            assert_eq!(before, now, "a client of a healthy member moved");
        }
    }
}

#[tokio::test]
async fn member_order_in_the_config_does_not_change_the_placement() {
    let ms = members("r", 70, 4).await;
    let one = balancer(&pool_and_service(&ms)).await;
    let reversed: Vec<String> = ms
        .iter()
        .rev()
        .map(|m| format!("{{ addr = \"{}\" }}", m.addr()))
        .collect();
    let two = balancer(
        &(format!(
            "[[pool]]\nname = \"p\"\nmembers = [{}]\n",
            reversed.join(", ")
        ) + &fast_tcp_check(2, 2)
            + &service_toml("s", "p", "")),
    )
    .await;

    let via_one = placement(CLIENTS, one.local_addr("s").expect("bound")).await;
    let via_two = placement(CLIENTS, two.local_addr("s").expect("bound")).await;
    assert_eq!(
        differences(&via_one, &via_two),
        vec![],
        "reordering the member list moved clients"
    );
}
