//! Generation and validation throughput at a large shape: nF1B with W = 64, N = 64 and 1000
//! mini-batches (about 4.2 million actions). Both must stay linear in the number of actions.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use timeprest_schedule::{ScheduleConfig, ScheduleKind, generate, validate};

fn nf1b_large(c: &mut Criterion) {
    let config = ScheduleConfig::new(64, 64, 1000);
    let mut group = c.benchmark_group("nf1b_w64_n64_m1000");
    group.sample_size(10);
    group.bench_function("generate", |b| {
        b.iter(|| generate(ScheduleKind::Nf1b, black_box(&config)).unwrap())
    });
    let schedule = generate(ScheduleKind::Nf1b, &config).unwrap();
    group.bench_function("validate", |b| {
        b.iter(|| validate(black_box(&schedule)).unwrap())
    });
    group.bench_function("generate_and_validate", |b| {
        b.iter(|| {
            let schedule = generate(ScheduleKind::Nf1b, black_box(&config)).unwrap();
            validate(&schedule).unwrap();
            schedule
        })
    });
    group.finish();
}

criterion_group!(benches, nf1b_large);
criterion_main!(benches);
