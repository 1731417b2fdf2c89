//! Kill switches: how shutdown, a removed service and a retired member reach the open
//! connections they end.
//!
//! Each connection registers one [`Switch`] with the app's [`Switches`] and watches only it.
//! The app ends a [`Scope`] (a service, a member) or everything at once, and the switches
//! concerned are flipped and their tasks woken. A connection's relay then pays one atomic load
//! per wake-up to see whether it was woken for its switch, instead of polling three
//! cancellation tokens (six mutex acquisitions per wake-up, two of them on the token every
//! connection of the process shares). Registration costs one allocation and one uncontended
//! lock when the connection starts, and one lock when it ends; the register is sharded by worker thread so that
//! workers do not meet on one lock.
//!
//! What the signals mean is the caller's: [`Signal::Force`] ends a connection now; the two
//! drain signals start its `drain_timeout`, after which it ends (a later `Force` still ends it
//! at once). The strongest signal received wins, so the access log names the same cause the
//! tokens did (shutdown, then member retired, then service removed).
//!
//! Ending a scope visits every registered connection: it happens on a reload or a shutdown,
//! never per connection (a lookup by scope would cost a map operation per connection instead).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Sleep;

/// Shards of the register. More than the workers of a large machine would keep two workers off
/// one lock most of the time; each shard is a mutex and an empty vector when unused.
const SHARDS: usize = 16;

/// Why a connection is told to end, weakest first: a switch keeps the strongest one it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Signal {
    /// Not told to end.
    Running = 0,
    /// A reload removed the connection's service: it drains.
    ServiceRemoved = 1,
    /// A reload removed the connection's member or took it out of service: it drains.
    MemberRetired = 2,
    /// Shutdown grace is over: it ends now.
    Force = 3,
}

impl Signal {
    fn from_u8(v: u8) -> Signal {
        match v {
            0 => Signal::Running,
            1 => Signal::ServiceRemoved,
            2 => Signal::MemberRetired,
            _ => Signal::Force,
        }
    }
}

/// Something whose connections can be ended together: a running service or a member. Its
/// identity is a number, not its address, so a scope freed and another allocated at the same
/// place never catch each other's connections.
#[derive(Debug)]
pub struct Scope {
    id: u64,
    ended: AtomicBool,
}

impl Default for Scope {
    fn default() -> Scope {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Scope {
            id: NEXT.fetch_add(1, Relaxed),
            ended: AtomicBool::new(false),
        }
    }
}

impl Scope {
    /// Whether the scope has been ended (its connections were told to drain).
    pub fn is_ended(&self) -> bool {
        self.ended.load(Acquire)
    }
}

/// The kill switch of one connection.
#[derive(Debug)]
pub struct Switch {
    signal: AtomicU8,
    /// The task to wake, registered at its first poll (a task's waker does not change).
    waker: Mutex<Option<Waker>>,
    service: u64,
    /// The member's scope id once connected; 0 before.
    member: AtomicU64,
}

impl Switch {
    /// The strongest signal received so far.
    pub fn signal(&self) -> Signal {
        Signal::from_u8(self.signal.load(Acquire))
    }

    fn raise(&self, to: Signal) {
        if self.signal.fetch_max(to as u8, SeqCst) < to as u8
            && let Some(w) = &*lock(&self.waker)
        {
            w.wake_by_ref();
        }
    }

    /// Registers `cx`'s waker unless `registered` already wakes the same task, and returns
    /// the signal as seen after registering (a raise that found no waker is seen here).
    fn poll_signal(&self, cx: &mut Context<'_>, registered: &mut Option<Waker>) -> Signal {
        let now = self.signal();
        if now == Signal::Force {
            return now;
        }
        if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *lock(&self.waker) = Some(cx.waker().clone());
            *registered = Some(cx.waker().clone());
            return self.signal();
        }
        now
    }
}

/// The register of one app's open connections.
#[derive(Debug)]
pub struct Switches {
    shards: Box<[Mutex<Slots>]>,
    forced: AtomicBool,
}

#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Option<Arc<Switch>>>,
    free: Vec<u32>,
}

impl Default for Switches {
    fn default() -> Switches {
        Switches {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            forced: AtomicBool::new(false),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while one of these is held; if something did, the data is still whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The shard of the current thread: threads take turns, so the workers of a runtime each get
/// their own.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.try_with(|s| *s).unwrap_or(0)
}

impl Switches {
    /// Registers a connection of `service`. It is told at once if `service` or everything has
    /// already been ended.
    pub fn register<'a>(&'a self, service: &Scope) -> Registration<'a> {
        let switch = Arc::new(Switch {
            signal: AtomicU8::new(0),
            waker: Mutex::new(None),
            service: service.id,
            member: AtomicU64::new(0),
        });
        let shard = shard_index();
        let slot = {
            let mut slots = lock(&self.shards[shard]);
            let entry = Some(switch.clone());
            match slots.free.pop() {
                Some(i) => {
                    slots.entries[i as usize] = entry;
                    i
                }
                None => {
                    slots.entries.push(entry);
                    // Fewer than 2^32 connections per shard: each holds two descriptors.
                    (slots.entries.len() - 1) as u32
                }
            }
        };
        // After the insert: an end that ran before it is seen here, one that runs after it
        // finds the entry (the shard's lock orders the two).
        if self.forced.load(SeqCst) {
            switch.raise(Signal::Force);
        } else if service.ended.load(SeqCst) {
            switch.raise(Signal::ServiceRemoved);
        }
        Registration {
            switches: Some(self),
            ticket: Ticket {
                switch,
                // One of `SHARDS`.
                shard: shard as u32,
                slot,
            },
        }
    }

    /// Tells every registered connection, and every one registered from now on, to end now.
    pub fn force_all(&self) {
        self.forced.store(true, SeqCst);
        self.each(|_| true, Signal::Force);
    }

    /// Tells the connections of a removed service to drain.
    pub fn end_service(&self, service: &Scope) {
        service.ended.store(true, SeqCst);
        self.each(|s| s.service == service.id, Signal::ServiceRemoved);
    }

    /// Takes a connection's ticket out of the register (see [`Registration::into_ticket`]).
    pub fn unregister(&self, ticket: &Ticket) {
        let mut slots = lock(&self.shards[ticket.shard as usize]);
        if let Some(entry) = slots.entries.get_mut(ticket.slot as usize) {
            *entry = None;
            slots.free.push(ticket.slot);
        }
    }

    /// Tells the connections to a retired member to drain.
    pub fn retire_member(&self, member: &Scope) {
        member.ended.store(true, SeqCst);
        self.each(
            |s| s.member.load(SeqCst) == member.id,
            Signal::MemberRetired,
        );
    }

    fn each(&self, matches: impl Fn(&Switch) -> bool, signal: Signal) {
        for shard in self.shards.iter() {
            let slots = lock(shard);
            for switch in slots.entries.iter().flatten() {
                if matches(switch) {
                    switch.raise(signal);
                }
            }
        }
    }

    /// Connections registered now (for tests and the status of a drain).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let slots = lock(s);
                slots.entries.len() - slots.free.len()
            })
            .sum()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's place in the register; leaves it when dropped.
#[derive(Debug)]
pub struct Registration<'a> {
    /// None once the ticket was handed over.
    switches: Option<&'a Switches>,
    ticket: Ticket,
}

impl Registration<'_> {
    /// The connection is now relayed to the member of `scope`: it drains when that member
    /// retires, including if it already has.
    pub fn attach_member(&self, member: &Scope) {
        let switch = &self.ticket.switch;
        // Both sides store then load with SeqCst: either `retire_member` sees the id, or this
        // sees the flag.
        switch.member.store(member.id, SeqCst);
        if member.ended.load(SeqCst) {
            switch.raise(Signal::MemberRetired);
        }
    }

    /// The strongest signal received so far.
    pub fn signal(&self) -> Signal {
        self.ticket.signal()
    }

    /// Completes when the connection is told to end now.
    pub fn forced(&self) -> Stop<'_> {
        Stop {
            ticket: &self.ticket,
            drain: None,
            state: StopState::default(),
        }
    }

    /// Completes when the connection must end: at once on [`Signal::Force`], `drain` after a
    /// drain signal.
    pub fn stop(&self, drain: Duration) -> Stop<'_> {
        Stop {
            ticket: &self.ticket,
            drain: Some(drain),
            state: StopState::default(),
        }
    }

    /// The place in the register without the borrow of the register, for a connection that
    /// keeps the register's owner itself: it leaves the register only when that connection
    /// hands it to [`Switches::unregister`], exactly once.
    pub fn into_ticket(mut self) -> Ticket {
        // Dropped without leaving the register: the ticket now holds the place.
        self.switches = None;
        Ticket {
            switch: Arc::clone(&self.ticket.switch),
            shard: self.ticket.shard,
            slot: self.ticket.slot,
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some(switches) = self.switches {
            switches.unregister(&self.ticket);
        }
    }
}

/// A connection's place in the register: its switch and where the register keeps it.
#[derive(Debug)]
pub struct Ticket {
    switch: Arc<Switch>,
    // 32-bit: a ticket lives as long as its connection, and is 8 bytes smaller so.
    shard: u32,
    slot: u32,
}

impl Ticket {
    /// The strongest signal received so far.
    pub fn signal(&self) -> Signal {
        self.switch.signal()
    }

    /// Ready when the connection must end: at once on [`Signal::Force`], `drain` after a drain
    /// signal (never, with `drain` None). `state` is the caller's, kept between polls.
    ///
    /// Polling costs one atomic load and a waker comparison; the waker is handed to the switch
    /// once. The drain timer, which almost never runs, is boxed when it starts rather than kept
    /// in every connection's state.
    pub fn poll_stop(
        &self,
        cx: &mut Context<'_>,
        state: &mut StopState,
        drain: Option<Duration>,
    ) -> Poll<()> {
        match self.switch.poll_signal(cx, &mut state.waker) {
            Signal::Running => Poll::Pending,
            Signal::Force => Poll::Ready(()),
            Signal::ServiceRemoved | Signal::MemberRetired => match drain {
                None => Poll::Pending,
                Some(drain) => state
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(drain)))
                    .as_mut()
                    .poll(cx),
            },
        }
    }
}

/// What [`Ticket::poll_stop`] keeps between polls.
#[derive(Debug, Default)]
pub struct StopState {
    waker: Option<Waker>,
    timer: Option<Pin<Box<Sleep>>>,
}

/// See [`Registration::stop`] and [`Registration::forced`].
#[derive(Debug)]
pub struct Stop<'a> {
    ticket: &'a Ticket,
    /// None: only `Force` completes it.
    drain: Option<Duration>,
    state: StopState,
}

impl Future for Stop<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.ticket.poll_stop(cx, &mut this.state, this.drain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::pin::pin;

    /// Polls `f` once.
    async fn ready<F: Future + Unpin>(f: &mut F) -> bool {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn force_ends_a_connection_now_even_while_it_drains() {
        let switches = Switches::default();
        let service = Scope::default();
        let conn = switches.register(&service);
        let mut stop = pin!(conn.stop(Duration::from_secs(300)));
        assert!(!ready(&mut stop).await);
        switches.end_service(&service);
        assert_eq!(conn.signal(), Signal::ServiceRemoved);
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(!ready(&mut stop).await, "draining");
        switches.force_all();
        assert!(ready(&mut stop).await);
        assert_eq!(conn.signal(), Signal::Force);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_service_drains_for_drain_timeout_then_ends() {
        let switches = Switches::default();
        let (removed, kept) = (Scope::default(), Scope::default());
        let gone = switches.register(&removed);
        let stays = switches.register(&kept);
        let drain = Duration::from_secs(300);
        let mut kept_stop = pin!(stays.stop(drain));
        switches.end_service(&removed);
        let started = tokio::time::Instant::now();
        tokio::select! {
            _ = gone.stop(drain) => {}
            _ = &mut kept_stop => panic!("a kept service's connection was ended"),
        }
        assert_eq!(started.elapsed(), drain);
        assert_eq!(gone.signal(), Signal::ServiceRemoved);
        tokio::select! {
            _ = &mut kept_stop => panic!("a kept service's connection was ended"),
            _ = tokio::time::sleep(drain * 2) => {}
        }
        assert_eq!(stays.signal(), Signal::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_member_drains_its_connections_only() {
        let switches = Switches::default();
        let service = Scope::default();
        let (retired, other) = (Scope::default(), Scope::default());
        let a = switches.register(&service);
        let b = switches.register(&service);
        a.attach_member(&retired);
        b.attach_member(&other);
        switches.retire_member(&retired);
        assert_eq!(a.signal(), Signal::MemberRetired);
        assert_eq!(b.signal(), Signal::Running);
        let started = tokio::time::Instant::now();
        a.stop(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // A connection that picked the member before it retired and connects after: drains too.
        let late = switches.register(&service);
        late.attach_member(&retired);
        assert_eq!(late.signal(), Signal::MemberRetired);
        // The strongest cause is kept.
        switches.end_service(&service);
        assert_eq!(late.signal(), Signal::MemberRetired);
        assert_eq!(b.signal(), Signal::ServiceRemoved);
    }

    #[tokio::test]
    async fn registered_after_the_end_is_told_at_once_and_slots_are_reused() {
        let switches = Switches::default();
        let service = Scope::default();
        switches.end_service(&service);
        let conn = switches.register(&service);
        assert_eq!(conn.signal(), Signal::ServiceRemoved);
        assert!(!ready(&mut pin!(conn.forced())).await, "drain is not force");
        drop(conn);
        assert!(switches.is_empty());
        switches.force_all();
        let conn = switches.register(&Scope::default());
        conn.forced().await;
        assert_eq!(switches.len(), 1);
    }

    #[tokio::test]
    async fn the_task_is_woken_by_its_switch() {
        let switches = Arc::new(Switches::default());
        let service = Arc::new(Scope::default());
        let (s2, sv2) = (switches.clone(), service.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let conn = s2.register(&sv2);
            let mut forced = pin!(conn.forced());
            assert!(!ready(&mut forced).await);
            let _ = tx.send(());
            forced.await;
        });
        rx.await.expect("registered");
        switches.force_all();
        task.await.expect("woken and ended");
    }
}
