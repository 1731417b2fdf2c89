//! Maglev table build and per-connection lookup costs at small, medium and large pool sizes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tandem::hash::maglev::{Table, hash_key};

const POOL_SIZES: [usize; 3] = [3, 100, 1000];

fn identities(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.1.{}.{}:5061", i / 250, i % 250 + 1))
        .collect()
}

fn table(names: &[String]) -> Table {
    let members: Vec<(&str, u32)> = names.iter().map(|s| (s.as_str(), 1)).collect();
    Table::build(&members).expect("valid benchmark pool")
}

// Varies the key every iteration so the benchmark sees realistic cache behaviour instead of
// one hot slot.
fn next_key(counter: &mut u64) -> [u8; 16] {
    *counter = counter.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&counter.to_le_bytes());
    key[8..].copy_from_slice(&(!*counter).to_be_bytes());
    key
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in POOL_SIZES {
        let names = identities(n);
        let members: Vec<(&str, u32)> = names.iter().map(|s| (s.as_str(), 1)).collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &members, |b, m| {
            b.iter(|| Table::build(black_box(m)))
        });
    }
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_lookup");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in POOL_SIZES {
        let t = table(&identities(n));
        let mut counter = 0;
        group.bench_function(BenchmarkId::new("hash_and_lookup", n), |b| {
            b.iter(|| {
                let key = next_key(&mut counter);
                t.lookup(hash_key(black_box(&key), 0))
            })
        });
        group.bench_function(BenchmarkId::new("first_candidate", n), |b| {
            b.iter(|| {
                let key = next_key(&mut counter);
                t.candidates(black_box(&key)).next()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, build, lookup);
criterion_main!(benches);
