//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4).
//!
//! This module owns the lookup table that maps a flow key to a pool member and the per-key
//! preference order used to fail over when a member is unavailable. It is pure: it performs no
//! I/O, reads no clock and uses no per-process random state. Every hash is xxh3 with a fixed
//! seed, so every tandem instance on every platform builds the identical table from the same
//! member set; that is what lets independent balancers agree on where a flow goes.

use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Table size used by [`Table::build`]. Prime, and large enough that shares stay within about
/// 1% for pools of a few hundred members (the paper's recommendation is M >= 100 * N).
pub const DEFAULT_TABLE_SIZE: usize = 65537;

/// Largest table size accepted. Bounds memory (4 bytes per slot) and keeps the primality check
/// cheap, since the size is caller input.
pub const MAX_TABLE_SIZE: usize = 1 << 24;

/// Number of rehash rounds [`Candidates`] yields before falling back to a full sweep of members.
pub const REHASH_ROUNDS: u32 = 32;

// Arbitrary fixed constants. Changing any of them remaps every flow in a fleet, so they are
// pinned by the `golden_values` test.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_5f6f; // "maglev_o"
const SKIP_SEED: u64 = 0x6d61_676c_6576_5f73; // "maglev_s"
const KEY_SEED: u64 = 0x7461_6e64_656d_5f6b; // "tandem_k"
// Odd, so multiplying by it is a bijection on u64 and distinct rounds get distinct seeds.
const ROUND_SEED_STEP: u64 = 0x9e37_79b9_7f4a_7c15;

// Member indices are below MAX_TABLE_SIZE, so this can never collide with a real member.
const EMPTY: u32 = u32::MAX;

/// Reasons a table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MaglevError {
    /// The member list is empty; there is nothing to map keys to.
    #[error("maglev table needs at least one member")]
    NoMembers,
    /// A member has weight 0; remove it from the list instead.
    #[error("member #{index} has weight 0")]
    ZeroWeight {
        /// Position of the offending member in the caller's list.
        index: usize,
    },
    /// Two members share an identity, so their order (and thus the table) would be ambiguous.
    #[error("duplicate member identity {identity:?}")]
    DuplicateMember {
        /// The repeated identity.
        identity: String,
    },
    /// The table size is not prime, so some skips would not visit every slot.
    #[error("table size {size} is not prime")]
    SizeNotPrime {
        /// The rejected size.
        size: usize,
    },
    /// The table has fewer slots than there are members.
    #[error("table size {size} is smaller than the member count {members}")]
    SizeTooSmall {
        /// The rejected size.
        size: usize,
        /// Number of members requested.
        members: usize,
    },
    /// The table size exceeds [`MAX_TABLE_SIZE`].
    #[error("table size {size} exceeds the maximum {MAX_TABLE_SIZE}")]
    SizeTooLarge {
        /// The rejected size.
        size: usize,
    },
    /// After dividing by their gcd the weights add up to more than the table size, so the
    /// first round would not even complete and shares could not be proportional. Use a larger
    /// prime size (see [`Table::build_with_size`]) or smaller weights.
    #[error("normalised weights sum to {sum}, more than the table size {size}")]
    WeightSumTooLarge {
        /// Sum of the gcd-normalised weights.
        sum: u64,
        /// The table size.
        size: usize,
    },
    /// An explicit permutation has an offset outside the table or a skip outside `1..size`.
    #[error("permutation #{index} has an offset or skip outside the table")]
    InvalidPermutation {
        /// Position of the permutation in the caller's list.
        index: usize,
    },
}

/// One member's permutation of the table, `slot_j = (offset + j * skip) mod size`, and its
/// weight (turns per round). Exposed for tests that reproduce the paper's example.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permutation {
    /// First slot the member prefers, in `0..size`.
    pub offset: usize,
    /// Stride through the table, in `1..size`.
    pub skip: usize,
    /// Slots claimed per round, at least 1.
    pub weight: u32,
}

/// A populated Maglev lookup table: slot -> member index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    slots: Box<[u32]>,
    members: usize,
}

impl Table {
    /// Builds a table of [`DEFAULT_TABLE_SIZE`] slots.
    ///
    /// `members` are `(identity, weight)` pairs; the identity is the member's address string,
    /// e.g. `"10.1.0.11:5061"`, and must be unique. The result does not depend on the order of
    /// `members`, but the member indices it returns are positions in `members`.
    pub fn build(members: &[(&str, u32)]) -> Result<Table, MaglevError> {
        Self::build_with_size(members, DEFAULT_TABLE_SIZE)
    }

    /// Like [`Table::build`] with an explicit table size, which must be prime, at least the
    /// member count, at most [`MAX_TABLE_SIZE`], and at least the sum of the gcd-normalised
    /// weights.
    pub fn build_with_size(members: &[(&str, u32)], size: usize) -> Result<Table, MaglevError> {
        check_size(size, members.len())?;
        if let Some(index) = members.iter().position(|&(_, w)| w == 0) {
            return Err(MaglevError::ZeroWeight { index });
        }
        // Sorting by identity is what makes the table independent of configuration order:
        // the fill is turn-based, so whoever goes first wins contested slots.
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_unstable_by(|&a, &b| members[a].0.cmp(members[b].0));
        if let Some(pair) = order
            .windows(2)
            .find(|p| members[p[0]].0 == members[p[1]].0)
        {
            return Err(MaglevError::DuplicateMember {
                identity: members[pair[0]].0.to_owned(),
            });
        }
        let m = size as u64;
        let perms: Vec<Permutation> = order
            .iter()
            .map(|&i| {
                let (identity, weight) = members[i];
                let id = identity.as_bytes();
                Permutation {
                    offset: (xxh3_64_with_seed(id, OFFSET_SEED) % m) as usize,
                    skip: (xxh3_64_with_seed(id, SKIP_SEED) % (m - 1) + 1) as usize,
                    weight,
                }
            })
            .collect();
        let mut table = Self::from_permutations(&perms, size)?;
        for slot in table.slots.iter_mut() {
            *slot = order[*slot as usize] as u32;
        }
        Ok(table)
    }

    /// Populates a table from explicit permutations, taking turns in the given order. Member
    /// indices in the result are positions in `perms`. This is the core of the algorithm;
    /// [`Table::build`] derives the permutations from hashed identities and calls it.
    #[doc(hidden)]
    pub fn from_permutations(perms: &[Permutation], size: usize) -> Result<Table, MaglevError> {
        check_size(size, perms.len())?;
        let mut divisor = 0;
        for (index, p) in perms.iter().enumerate() {
            if p.weight == 0 {
                return Err(MaglevError::ZeroWeight { index });
            }
            if p.offset >= size || p.skip == 0 || p.skip >= size {
                return Err(MaglevError::InvalidPermutation { index });
            }
            divisor = gcd(divisor, p.weight as usize);
        }
        // Without normalisation 2:4 would take twice as many turns per round as 1:2 and end
        // the fill at a different point, giving a (slightly) different table for the same ratio.
        let turns: Vec<usize> = perms.iter().map(|p| p.weight as usize / divisor).collect();
        let sum: u64 = turns.iter().map(|&t| t as u64).sum();
        if sum > size as u64 {
            return Err(MaglevError::WeightSumTooLarge { sum, size });
        }

        let mut slots = vec![EMPTY; size].into_boxed_slice();
        // Permutation entries are generated on the fly: `next[i]` is the slot at member i's
        // current position, so memory stays O(N + M) rather than O(N * M). It is left on the
        // slot just claimed, which the probe loop steps past on the member's next turn.
        let mut next: Vec<usize> = perms.iter().map(|p| p.offset).collect();
        let mut filled = 0;
        'fill: loop {
            for (i, p) in perms.iter().enumerate() {
                for _ in 0..turns[i] {
                    // Terminates: the table is not full and, as `size` is prime and
                    // `skip < size`, the permutation visits every slot.
                    let mut c = next[i];
                    while slots[c] != EMPTY {
                        c += p.skip;
                        if c >= size {
                            c -= size;
                        }
                    }
                    slots[c] = i as u32;
                    next[i] = c;
                    filled += 1;
                    if filled == size {
                        break 'fill;
                    }
                }
            }
        }
        Ok(Table {
            slots,
            members: perms.len(),
        })
    }

    /// Number of slots (M).
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// Number of members the table was built from.
    pub fn member_count(&self) -> usize {
        self.members
    }

    /// Member index stored in slot `i`. Indices wrap modulo [`Table::size`], as in
    /// [`Table::lookup`], so this never panics.
    pub fn slot(&self, i: usize) -> usize {
        self.slots[i % self.slots.len()] as usize
    }

    /// Member index for a key hash: `table[key_hash % M]`.
    #[inline]
    pub fn lookup(&self, key_hash: u64) -> usize {
        self.slots[(key_hash % self.slots.len() as u64) as usize] as usize
    }

    /// The key's preference order over member indices; see [`Candidates`]. Does not allocate.
    pub fn candidates<'a>(&'a self, key: &'a [u8]) -> Candidates<'a> {
        Candidates {
            table: self,
            key,
            phase: Phase::Rehash(0),
        }
    }
}

/// A key's preference order over member indices, from [`Table::candidates`].
///
/// The first item is `lookup(hash_key(key, 0))`, the key's primary member. The next
/// [`REHASH_ROUNDS`]` - 1` items rehash the key with seeds 1, 2, ...: a caller that skips an
/// unavailable member therefore lands on a weight-proportional random other member, so a dead
/// member's keys spread evenly and keys of healthy members never move. After that, every member
/// index is yielded exactly once in a key-dependent order, so a caller filtering on
/// availability always finds an available member, and then the iterator ends. Items may
/// repeat; the caller filters out unavailable or already-tried members.
#[derive(Debug, Clone)]
pub struct Candidates<'a> {
    table: &'a Table,
    key: &'a [u8],
    phase: Phase,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Rehash(u32),
    Sweep {
        pos: usize,
        step: usize,
        left: usize,
    },
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self.phase {
            Phase::Rehash(round) if round < REHASH_ROUNDS => {
                self.phase = Phase::Rehash(round + 1);
                Some(self.table.lookup(hash_key(self.key, u64::from(round))))
            }
            Phase::Rehash(_) => {
                let n = self.table.members;
                let h = hash_key(self.key, u64::from(REHASH_ROUNDS));
                // A stride coprime to n visits every index once; deriving it from the key
                // keeps the sweep from piling every stranded key onto the same member.
                let mut step = if n > 1 {
                    1 + ((h >> 32) % (n as u64 - 1)) as usize
                } else {
                    1
                };
                while gcd(step, n) != 1 {
                    step = if step + 1 >= n { 1 } else { step + 1 };
                }
                let pos = (h % n as u64) as usize;
                self.phase = Phase::Sweep {
                    pos: (pos + step) % n,
                    step,
                    left: n - 1,
                };
                Some(pos)
            }
            Phase::Sweep { left: 0, .. } => None,
            Phase::Sweep { pos, step, left } => {
                self.phase = Phase::Sweep {
                    pos: (pos + step) % self.table.members,
                    step,
                    left: left - 1,
                };
                Some(pos)
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = match self.phase {
            Phase::Rehash(round) => (REHASH_ROUNDS - round) as usize + self.table.members,
            Phase::Sweep { left, .. } => left,
        };
        (left, Some(left))
    }
}

impl ExactSizeIterator for Candidates<'_> {}
impl std::iter::FusedIterator for Candidates<'_> {}

/// Hashes a flow key for round `seed` (0 for the primary lookup, 1, 2, ... for rehashes):
/// xxh3-64 with a seed derived from `seed` by a fixed formula, identical on every platform.
#[inline]
pub fn hash_key(key: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(key, KEY_SEED ^ seed.wrapping_mul(ROUND_SEED_STEP))
}

fn check_size(size: usize, members: usize) -> Result<(), MaglevError> {
    if members == 0 {
        return Err(MaglevError::NoMembers);
    }
    if size > MAX_TABLE_SIZE {
        return Err(MaglevError::SizeTooLarge { size });
    }
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime { size });
    }
    if size < members {
        return Err(MaglevError::SizeTooSmall { size, members });
    }
    Ok(())
}

// Trial division is enough: sizes are capped at MAX_TABLE_SIZE, so at most ~4096 divisions.
fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:5061", i / 250, i % 250 + 1))
            .collect()
    }

    fn equal(names: &[String]) -> Vec<(&str, u32)> {
        names.iter().map(|s| (s.as_str(), 1)).collect()
    }

    fn counts(t: &Table) -> Vec<usize> {
        let mut c = vec![0; t.member_count()];
        for i in 0..t.size() {
            c[t.slot(i)] += 1;
        }
        c
    }

    fn perm(offset: usize, skip: usize) -> Permutation {
        let weight = 1;
        Permutation {
            offset,
            skip,
            weight,
        }
    }

    /// (total share of slots that changed, share that moved between two surviving members).
    fn disruption(n: usize, removed: usize) -> (f64, f64) {
        let all = names(n);
        let before = Table::build(&equal(&all)).unwrap();
        let rest: Vec<String> = all
            .iter()
            .filter(|s| **s != all[removed])
            .cloned()
            .collect();
        let after = Table::build(&equal(&rest)).unwrap();
        let (mut changed, mut extra) = (0, 0);
        for i in 0..before.size() {
            let (b, a) = (&all[before.slot(i)], &rest[after.slot(i)]);
            if b != a {
                changed += 1;
                if *b != all[removed] {
                    extra += 1;
                }
            }
        }
        let m = before.size() as f64;
        (changed as f64 / m, extra as f64 / m)
    }

    #[test]
    fn paper_example() {
        let (b1, b2, b3) = (perm(3, 4), perm(0, 2), perm(3, 1));
        let slots = |t: Table| (0..t.size()).map(|i| t.slot(i)).collect::<Vec<_>>();
        let t = Table::from_permutations(&[b1, b2, b3], 7).unwrap();
        assert_eq!(slots(t), [1, 0, 1, 0, 2, 2, 0]);
        let t = Table::from_permutations(&[b1, b3], 7).unwrap();
        assert_eq!(slots(t), [0, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn equal_weights_are_balanced() {
        for n in [3, 10, 100, 1000] {
            let t = Table::build(&equal(&names(n))).unwrap();
            let c = counts(&t);
            let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(max - min <= 1, "n={n}: min {min} max {max}");
        }
    }

    #[test]
    fn removal_disruption() {
        for (n, lo, hi) in [(3, 0.30, 0.40), (10, 0.08, 0.13), (100, 0.009, 2.5 / 100.0)] {
            let (total, extra) = disruption(n, 1);
            println!("n={n}: total {total:.4}, extra {extra:.4}");
            assert!((lo..=hi).contains(&total), "n={n}: total {total}");
            if n == 3 {
                assert!(extra < 0.02, "n=3: extra {extra}");
            }
        }
    }

    #[test]
    fn order_independent() {
        let all = names(50);
        let mut shuffled = all.clone();
        let mut s: u64 = 12345;
        for i in (1..shuffled.len()).rev() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        assert_ne!(all, shuffled);
        let a = Table::build(&equal(&all)).unwrap();
        let b = Table::build(&equal(&shuffled)).unwrap();
        for i in 0..a.size() {
            assert_eq!(all[a.slot(i)], shuffled[b.slot(i)], "slot {i}");
        }
    }

    #[test]
    fn weights_are_proportional() {
        let t = Table::build(&[("10.0.0.1:5061", 1), ("10.0.0.2:5061", 2)]).unwrap();
        let c = counts(&t);
        let m = t.size() as f64;
        assert!((c[0] as f64 / m - 1.0 / 3.0).abs() < 0.01, "{c:?}");
        assert!((c[1] as f64 / m - 2.0 / 3.0).abs() < 0.01, "{c:?}");
        let doubled = Table::build(&[("10.0.0.1:5061", 2), ("10.0.0.2:5061", 4)]).unwrap();
        assert_eq!(t, doubled);
    }

    #[test]
    fn heavy_weights_fill_proportionally() {
        let all = names(120);
        let members: Vec<(&str, u32)> = all
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), (i as u32 * 379) % 1000 + 1))
            .collect();
        let sum: u32 = members.iter().map(|m| m.1).sum();
        assert!(sum as usize <= DEFAULT_TABLE_SIZE && sum > 50_000, "{sum}");
        let t = Table::build(&members).unwrap();
        let c = counts(&t);
        // A member takes `w` turns per round and the fill stops mid-round, so each count is
        // within one round's worth of turns of its exact share.
        for (&(_, w), &got) in members.iter().zip(&c) {
            let exact = w as f64 * t.size() as f64 / sum as f64;
            assert!(
                (got as f64 - exact).abs() <= w as f64 + 1.0,
                "w={w} got={got}"
            );
        }
    }

    #[test]
    fn candidates_fail_over_evenly() {
        let all = names(5);
        let t = Table::build(&equal(&all)).unwrap();
        let down = 2;
        let mut moved = vec![0usize; 5];
        for k in 0u32..10_000 {
            let key = k.to_le_bytes();
            let first = t.candidates(&key).next().unwrap();
            assert_eq!(first, t.lookup(hash_key(&key, 0)));
            let pick = t.candidates(&key).find(|&m| m != down).unwrap();
            if first != down {
                assert_eq!(pick, first);
            } else {
                moved[pick] += 1;
            }
        }
        let total: usize = moved.iter().sum();
        let even = total as f64 / 4.0;
        assert!(total > 1000, "{moved:?}");
        for (m, &c) in moved.iter().enumerate().filter(|&(m, _)| m != down) {
            assert!(
                (c as f64 - even).abs() <= 0.25 * even,
                "member {m}: {moved:?}"
            );
        }
    }

    #[test]
    fn candidates_cover_every_member_and_end() {
        for n in [1, 2, 6, 97, 1000] {
            let t = Table::build(&equal(&names(n))).unwrap();
            for k in 0u32..20 {
                let key = k.to_be_bytes();
                let it = t.candidates(&key);
                assert_eq!(it.len(), REHASH_ROUNDS as usize + n);
                let items: Vec<usize> = it.collect();
                let mut sweep = items[REHASH_ROUNDS as usize..].to_vec();
                sweep.sort_unstable();
                assert_eq!(sweep, (0..n).collect::<Vec<_>>());
                let mut it = t.candidates(&key);
                it.by_ref().for_each(drop);
                assert_eq!(it.next(), None);
            }
        }
    }

    #[test]
    fn errors() {
        use MaglevError::*;
        assert_eq!(Table::build(&[]), Err(NoMembers));
        let zero = Table::build(&[("a", 1), ("b", 0)]);
        assert_eq!(zero, Err(ZeroWeight { index: 1 }));
        let dup = Table::build(&[("a", 1), ("b", 1), ("a", 2)]);
        assert!(matches!(dup, Err(DuplicateMember { identity }) if identity == "a"));
        assert_eq!(
            Table::build_with_size(&[("a", 1)], 65536),
            Err(SizeNotPrime { size: 65536 })
        );
        assert_eq!(
            Table::build_with_size(&[("a", 1)], 1),
            Err(SizeNotPrime { size: 1 })
        );
        let three = [("a", 1), ("b", 1), ("c", 1)];
        let small = Table::build_with_size(&three, 2);
        assert!(matches!(
            small,
            Err(SizeTooSmall {
                size: 2,
                members: 3
            })
        ));
        let big = Table::build_with_size(&three, MAX_TABLE_SIZE + 1);
        assert!(matches!(big, Err(SizeTooLarge { .. })));
        let heavy = Table::build_with_size(&[("a", 1), ("b", 7)], 7);
        assert_eq!(heavy, Err(WeightSumTooLarge { sum: 8, size: 7 }));
        let bad = Table::from_permutations(&[perm(1, 2), perm(0, 7)], 7);
        assert_eq!(bad, Err(InvalidPermutation { index: 1 }));
    }

    #[test]
    fn tiny_tables_fill() {
        let t = Table::build_with_size(&[("a", 1), ("b", 1)], 2).unwrap();
        assert_eq!(counts(&t), [1, 1]);
        let t = Table::build_with_size(&[("a", 1), ("b", 6)], 7).unwrap();
        assert_eq!(counts(&t), [1, 6]);
    }

    // Pins the seeds and fill order: a change here remaps every flow in a mixed-version fleet.
    #[test]
    fn golden_values() {
        let t = Table::build(&equal(&names(3))).unwrap();
        let head: Vec<usize> = (0..12).map(|i| t.slot(i)).collect();
        assert_eq!(hash_key(b"flow", 0), 0x4974_2e53_8742_e24b);
        assert_eq!(head, [2, 2, 1, 1, 0, 2, 1, 1, 1, 2, 0, 0]);
    }
}
