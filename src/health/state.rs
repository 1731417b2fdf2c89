//! The rise/fall state machine of one check of one member. Pure: no I/O, no clock; the checker
//! feeds it results in order.
//!
//! A member's first result decides at once (success: up, failure: down): before it nothing is
//! known and no routing decision waits on hysteresis that has no history to smooth. After that,
//! `fall` consecutive failures take an up member down and `rise` consecutive successes bring a
//! down member up; a result that agrees with the current state resets the opposite streak.

use std::fmt;

/// What is known of a member (or of one of its checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Verdict {
    /// No result yet.
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl Verdict {
    /// Decodes the `u8` form used in atomics; anything unexpected reads as `Unknown`.
    pub fn from_u8(v: u8) -> Verdict {
        match v {
            1 => Verdict::Up,
            2 => Verdict::Down,
            _ => Verdict::Unknown,
        }
    }

    /// Lower-case name for logs, events and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Unknown => "unknown",
            Verdict::Up => "up",
            Verdict::Down => "down",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rise/fall hysteresis over consecutive results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    state: Verdict,
    /// Consecutive results against the current state.
    streak: u32,
}

impl RiseFall {
    /// A machine with no result yet. `rise` and `fall` of 0 act as 1.
    pub fn new(rise: u32, fall: u32) -> RiseFall {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            state: Verdict::Unknown,
            streak: 0,
        }
    }

    /// A machine that continues from a known verdict (a check loop restarted by a reload).
    pub fn resume(rise: u32, fall: u32, state: Verdict) -> RiseFall {
        RiseFall {
            state,
            ..RiseFall::new(rise, fall)
        }
    }

    /// The current verdict.
    pub fn state(&self) -> Verdict {
        self.state
    }

    /// Feeds one result; returns the new verdict when it changed.
    pub fn record(&mut self, ok: bool) -> Option<Verdict> {
        let next = match (self.state, ok) {
            (Verdict::Unknown, true) => Some(Verdict::Up),
            (Verdict::Unknown, false) => Some(Verdict::Down),
            (Verdict::Up, true) | (Verdict::Down, false) => {
                self.streak = 0;
                None
            }
            (Verdict::Up, false) => {
                self.streak += 1;
                (self.streak >= self.fall).then_some(Verdict::Down)
            }
            (Verdict::Down, true) => {
                self.streak += 1;
                (self.streak >= self.rise).then_some(Verdict::Up)
            }
        };
        if let Some(v) = next {
            self.state = v;
            self.streak = 0;
        }
        next
    }

    /// Marks the check down from outside (passive detection); it then needs `rise` successes.
    /// Returns whether this changed the verdict.
    pub fn force_down(&mut self) -> bool {
        let changed = self.state != Verdict::Down;
        self.state = Verdict::Down;
        self.streak = 0;
        changed
    }

    /// Feeds one result of a check whose member passive detection may have taken down
    /// (`passive_down`): a check that still says up is forced down first, so the member needs
    /// `rise` successes to return. Returns whether this result ends the passive down (the
    /// check came back up), which the caller then clears.
    pub fn record_after_passive(&mut self, ok: bool, passive_down: bool) -> bool {
        if passive_down && self.state != Verdict::Down {
            self.force_down();
        }
        self.record(ok) == Some(Verdict::Up) && passive_down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(m: &mut RiseFall, results: &str) -> Vec<Option<Verdict>> {
        results.chars().map(|c| m.record(c == '+')).collect()
    }

    #[test]
    fn a_passive_down_needs_rise_successes_to_end() {
        let mut m = RiseFall::new(2, 3);
        assert_eq!(m.record(true), Some(Verdict::Up));
        // Passive detection took the member down: the up check is forced down.
        assert!(!m.record_after_passive(true, true));
        assert_eq!(m.state(), Verdict::Down);
        assert!(
            m.record_after_passive(true, true),
            "second success: rise reached"
        );
        assert_eq!(m.state(), Verdict::Up);
        // Without a passive down, results are plain rise/fall.
        assert!(!m.record_after_passive(false, false));
        assert_eq!(m.state(), Verdict::Up);
    }

    #[test]
    fn first_result_decides() {
        let mut m = RiseFall::new(2, 3);
        assert_eq!(m.state(), Verdict::Unknown);
        assert_eq!(m.record(true), Some(Verdict::Up));
        let mut m = RiseFall::new(2, 3);
        assert_eq!(m.record(false), Some(Verdict::Down));
    }

    #[test]
    fn fall_consecutive_failures_take_it_down() {
        let mut m = RiseFall::new(2, 3);
        m.record(true);
        assert_eq!(feed(&mut m, "--"), vec![None, None]);
        assert_eq!(m.state(), Verdict::Up);
        assert_eq!(m.record(false), Some(Verdict::Down));
    }

    #[test]
    fn rise_consecutive_successes_bring_it_up() {
        let mut m = RiseFall::new(2, 3);
        m.record(false);
        assert_eq!(m.record(true), None);
        assert_eq!(m.record(true), Some(Verdict::Up));
    }

    #[test]
    fn flapping_input_never_changes_state() {
        let mut up = RiseFall::new(2, 3);
        up.record(true);
        // Alternating results never make `fall` failures or `rise` successes in a row.
        assert!(feed(&mut up, "-+--+--+-+--+").iter().all(Option::is_none));
        assert_eq!(up.state(), Verdict::Up);
        let mut down = RiseFall::new(2, 3);
        down.record(false);
        assert!(feed(&mut down, "+-+-+-+-+-").iter().all(Option::is_none));
        assert_eq!(down.state(), Verdict::Down);
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut m = RiseFall::new(1, 2);
        m.record(true);
        assert_eq!(feed(&mut m, "-+-+-"), vec![None; 5]);
        assert_eq!(m.record(false), Some(Verdict::Down));
    }

    #[test]
    fn rise_and_fall_of_one_follow_every_result() {
        let mut m = RiseFall::new(1, 1);
        assert_eq!(
            feed(&mut m, "+-+"),
            vec![Some(Verdict::Up), Some(Verdict::Down), Some(Verdict::Up)]
        );
        let mut z = RiseFall::new(0, 0);
        assert_eq!(
            feed(&mut z, "+-"),
            vec![Some(Verdict::Up), Some(Verdict::Down)]
        );
    }

    #[test]
    fn forced_down_needs_rise_successes() {
        let mut m = RiseFall::new(3, 3);
        m.record(true);
        assert!(m.force_down());
        assert!(!m.force_down());
        assert_eq!(feed(&mut m, "++"), vec![None, None]);
        assert_eq!(m.record(true), Some(Verdict::Up));
    }

    #[test]
    fn verdict_round_trips_through_u8() {
        for v in [Verdict::Unknown, Verdict::Up, Verdict::Down] {
            assert_eq!(Verdict::from_u8(v as u8), v);
        }
        assert_eq!(Verdict::from_u8(200), Verdict::Unknown);
    }
}
