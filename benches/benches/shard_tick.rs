//! One shard tick: `Receive` → … → `Send`, with 1k/10k entities and 0/100/500 clients.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::time::{Duration, Instant};
use zonescaler_benches::TickFixture;

fn shard_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_tick");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for entities in [1_000usize, 10_000] {
        for clients in [0usize, 100, 500] {
            let mut f = TickFixture::new(entities, clients);
            group.bench_with_input(
                BenchmarkId::new(format!("{entities}_entities"), format!("{clients}_clients")),
                &(),
                |b, _| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            f.before_tick();
                            let t0 = Instant::now();
                            f.app.tick();
                            total += t0.elapsed();
                            f.after_tick();
                        }
                        total
                    })
                },
            );
            if let Some(b) = f.bytes_per_entity_update() {
                eprintln!(
                    "  {entities} entities, {clients} clients: {b:.2} bytes per entity update"
                );
            }
        }
    }
    group.finish();
}

criterion_group!(benches, shard_tick);
criterion_main!(benches);
