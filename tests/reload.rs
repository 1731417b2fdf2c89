//! A reload applies whole or not at all: when one part of a new config cannot be served, no
//! other part of it is left running, the old config keeps serving, and the same reload applies
//! once the obstacle is gone.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use common::*;
use tandem::app::{ReloadError, ServeError};
use tandem::config::{self, Config};

fn parse(toml: &str) -> Config {
    config::parse(toml, "test.toml").unwrap_or_else(|p| panic!("invalid test config:\n{p}"))
}

/// A port nobody listens on: bound by the test, then released.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test]
async fn a_reload_whose_second_new_service_cannot_bind_leaves_the_first_unbound() {
    let pool = members("whole", 244, 2).await;
    let base = pool_toml("p", &pool) + &service_toml("s", "p", "");
    let mut app = balancer(&base).await;
    let view = app.view();
    let addr = app.local_addr("s").expect("bound");
    who_serves(client_ip(1), addr).await.expect("serves");

    // Services bind in config order: "first" binds, then "second" finds its port taken.
    let first = free_port();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr");
    let two_more = format!(
        "{base}[[service]]\nname = \"first\"\nlisten = \"{first}\"\npool = \"p\"\n\
         [[service]]\nname = \"second\"\nlisten = \"{taken}\"\npool = \"p\"\n"
    );
    let err = app
        .reload(parse(&two_more))
        .await
        .expect_err("a port in use rejects the reload");
    assert!(
        matches!(&err, ReloadError::Serve(ServeError::Bind { service, .. }) if service == "second"),
        "{err}"
    );
    assert_eq!(app.snapshot().generation, 1);
    assert_eq!(view.reloads().rejected.load(Ordering::Relaxed), 1);
    assert_eq!(view.reloads().applied.load(Ordering::Relaxed), 0);
    assert!(app.snapshot().route("first").is_none());
    assert!(app.local_addr("first").is_none());
    assert!(view.services().iter().all(|s| s.name == "s"));
    // The listener "first" got was closed with the rejected reload.
    let refused = tokio::net::TcpStream::connect(first)
        .await
        .expect_err("nothing listens for the rejected service");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    who_serves(client_ip(2), addr)
        .await
        .expect("the running service still serves");

    // With the port released, the same reload applies, both services included.
    drop(squatter);
    let report = app.reload(parse(&two_more)).await.expect("reload applies");
    assert_eq!(report.generation, 2);
    assert_eq!(report.diff.services_added, vec!["first", "second"]);
    assert_eq!(view.reloads().applied.load(Ordering::Relaxed), 1);
    assert_eq!(view.reloads().rejected.load(Ordering::Relaxed), 1);
    assert_eq!(app.local_addr("first"), Some(first));
    for (i, service) in ["s", "first", "second"].into_iter().enumerate() {
        let addr = app.local_addr(service).expect("bound");
        who_serves(client_ip(3 + i as u32), addr)
            .await
            .unwrap_or_else(|e| panic!("{service} does not serve: {e}"));
    }
}

#[tokio::test]
async fn a_reload_whose_checks_cannot_be_set_up_leaves_its_new_listener_closed_and_old_checks_running()
 {
    let mut pool = members("whole", 247, 2).await;
    let base = pool_toml("p", &pool) + &fast_tcp_check(1, 1) + &service_toml("s", "p", "");
    let mut app = balancer(&base).await;
    let mut events = app.events();
    let view = app.view();
    let addr = app.local_addr("s").expect("bound");

    // A CA file that does not exist passes validation (the file may appear before the reload)
    // but fails when the check is set up, after "first" is bound.
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing-ca.pem");
    let first = free_port();
    let more = format!(
        "{base}[[pool]]\nname = \"q\"\nmembers = [{{ addr = \"{}\" }}]\n  [[pool.check]]\n  \
         kind = \"tls\"\n  ca_file = \"{}\"\n\
         [[service]]\nname = \"first\"\nlisten = \"{first}\"\npool = \"q\"\n",
        pool[0].addr(),
        missing.display()
    );
    let err = app
        .reload(parse(&more))
        .await
        .expect_err("a check that cannot be set up rejects the reload");
    assert!(
        matches!(&err, ReloadError::Serve(ServeError::Check(_))),
        "{err}"
    );
    assert_eq!(app.snapshot().generation, 1);
    assert_eq!(view.reloads().rejected.load(Ordering::Relaxed), 1);
    assert!(app.snapshot().pool("q").is_none());
    let refused = tokio::net::TcpStream::connect(first)
        .await
        .expect_err("nothing listens for the rejected service");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    who_serves(client_ip(1), addr)
        .await
        .expect("the running service still serves");

    // The running pool's check loops were not touched: they still notice a member going down.
    pool[1].stop();
    wait_health(
        &mut events,
        pool[1].addr(),
        tandem::health::state::Verdict::Down,
        std::time::Duration::from_secs(10),
    )
    .await;
}
