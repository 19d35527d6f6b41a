//! One shard tick: `Receive` → … → `Send`, with 1k/10k entities and 0/100/500 clients.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::time::{Duration, Instant};
use zonescaler_benches::TickFixture;

/// Which part of a fixture's tick cycle a benchmark times.
#[derive(Clone, Copy)]
enum Timed {
    /// `ShardApp::tick` alone.
    Shard,
    /// Delivering the tick's output to the bots (decoding and applying their snapshots).
    Bots,
}

/// `iters` whole cycles (inputs, tick, delivery) of `f`, timing only `part`.
fn cycles(f: &mut TickFixture, iters: u64, part: Timed) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        f.before_tick();
        let t0 = Instant::now();
        f.app.tick();
        let t1 = Instant::now();
        f.after_tick();
        total += match part {
            Timed::Shard => t1 - t0,
            Timed::Bots => t1.elapsed(),
        };
    }
    total
}

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
                |b, _| b.iter_custom(|iters| cycles(&mut f, iters, Timed::Shard)),
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

/// The bots' side of a tick in a crowd: decoding and applying one tick's snapshots for every
/// client (what bounds how many bots one load-test machine can run).
fn bot_snapshots(c: &mut Criterion) {
    let mut group = c.benchmark_group("bot_snapshots");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let (entities, clients) = (600usize, 200usize);
    let mut f = TickFixture::crowd(entities, clients);
    group.bench_with_input(
        BenchmarkId::new("crowd", format!("{entities}_entities_{clients}_clients")),
        &(),
        |b, _| b.iter_custom(|iters| cycles(&mut f, iters, Timed::Bots)),
    );
    eprintln!(
        "  crowd: {:.0} entities in a client's view (mean)",
        f.mean_view_len()
    );
    group.finish();
}

criterion_group!(benches, shard_tick, bot_snapshots);
criterion_main!(benches);
