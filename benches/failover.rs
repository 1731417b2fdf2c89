//! Failover timing on loopback, measured end to end with the library: the time from the last
//! local member dying to (a) the first client connection served by the backup pool and (b) the
//! failover decision, with the default checks and with a fast check configuration; and the time
//! a reload takes to apply. Run with `cargo bench --bench failover`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tandem::app::App;
use tandem::config;
use tandem::demo::{DemoMember, client_ip, who_serves};
use tandem::events::Event;
use tandem::failover::Side;

async fn members(prefix: &str, first: u8) -> Vec<DemoMember> {
    let mut out = Vec::new();
    for i in 0..3u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, first + i));
        let m = DemoMember::start(&format!("{prefix}{i}"), SocketAddr::new(ip, 0))
            .await
            .expect("member starts");
        out.push(m);
    }
    out
}

fn pool(name: &str, ms: &[DemoMember], check: &str) -> String {
    let list: Vec<String> = ms
        .iter()
        .map(|m| format!("{{ addr = \"{}\" }}", m.addr()))
        .collect();
    format!(
        "[[pool]]\nname = \"{name}\"\nmembers = [{}]\n{check}",
        list.join(", ")
    )
}

async fn failover_run(label: &str, check: &str, first_host: u8) {
    let mut local = members("local", first_host).await;
    let backup = members("backup", first_host + 3).await;
    let text = pool("dc1", &local, check)
        + &pool("dc2", &backup, check)
        + "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"dc1\"\nbackup_pool = \"dc2\"\n";
    let cfg = config::parse(&text, "bench.toml").expect("valid");
    let app = App::start(cfg).await.expect("starts");
    let addr = app.local_addr("s").expect("bound");
    let mut events = app.events();

    for m in &mut local {
        m.stop();
    }
    let died = Instant::now();
    // A client every 10 ms until the failover is decided (its failed connects feed passive
    // detection, as real traffic would).
    let mut first_backup = None;
    let mut decided = None;
    let mut i = 0;
    while decided.is_none() && died.elapsed() < Duration::from_secs(30) {
        if let Ok(name) = who_serves(client_ip(i % 200), addr).await
            && name.starts_with("backup")
            && first_backup.is_none()
        {
            first_backup = Some(died.elapsed());
        }
        while let Ok(e) = events.try_recv() {
            if let Event::Failover(f) = e
                && f.to == Side::Backup
            {
                decided = Some(died.elapsed());
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{label:<40} first connection served by backup: {:>8}   failover decided: {:>8}",
        fmt(first_backup),
        fmt(decided)
    );
    app.shutdown(Duration::from_secs(1)).await;
}

fn fmt(d: Option<Duration>) -> String {
    d.map_or("none".to_string(), |d| format!("{:.0?}", d))
}

async fn reload_run() {
    let local = members("local", 150).await;
    let backup = members("backup", 153).await;
    let base = pool("dc1", &local, "") + &pool("dc2", &backup, "");
    let a = base.clone()
        + "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"dc1\"\nbackup_pool = \"dc2\"\n";
    let b = a.replace(
        "backup_pool = \"dc2\"\n",
        "backup_pool = \"dc2\"\nfailover = \"remote\"\n",
    );
    alternate_reloads(
        &a,
        &b,
        "reload apply (validated config to snapshot swap, 200 drills)",
    )
    .await;
}

/// Starts on config text `a`, reloads 200 times alternating `b` and `a`, and prints the median
/// and max time a reload took to apply.
async fn alternate_reloads(a: &str, b: &str, what: &str) {
    let (a, b) = (
        config::parse(a, "a.toml").expect("valid"),
        config::parse(b, "b.toml").expect("valid"),
    );
    let mut app = App::start(a.clone()).await.expect("starts");
    let mut took = Vec::new();
    for i in 0..200 {
        let next = if i % 2 == 0 { b.clone() } else { a.clone() };
        took.push(app.reload(next).await.expect("reload").took);
    }
    took.sort();
    println!(
        "{what}: median {:.0?}, max {:.0?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    app.shutdown(Duration::from_secs(1)).await;
}

/// Reloads that drain and undrain one member of a 1000-member pool: membership and weights are
/// unchanged, so the Maglev table is kept and no probe round runs (the pool has no checks).
async fn drain_reload_run() {
    let members: Vec<String> = (0..1000)
        .map(|i| format!("{{ addr = \"127.0.{}.{}:9\" }}", 40 + i / 250, 1 + i % 250))
        .collect();
    let text = format!(
        "[[pool]]\nname = \"big\"\nmembers = [{}]\n\
         [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"big\"\n",
        members.join(", ")
    );
    let drained = text.replacen(":9\" }", ":9\", state = \"drain\" }", 1);
    alternate_reloads(
        &text,
        &drained,
        "reload apply, drain one of 1000 members (200 reloads)",
    )
    .await;
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        failover_run(
            "default checks (tcp 2s / 1s, fall 3)",
            "  [[pool.check]]\n  kind = \"tcp\"\n",
            130,
        )
        .await;
        failover_run(
            "fast checks (tcp 200ms / 200ms, fall 2)",
            "  [[pool.check]]\n  kind = \"tcp\"\n  interval = \"200ms\"\n  timeout = \"200ms\"\n  fall = 2\n",
            140,
        )
        .await;
        reload_run().await;
        drain_reload_run().await;
    });
}
