//! `tick_count ENTITIES CLIENTS TICKS`: 30 warm-up ticks, then TICKS more, of the shard-tick
//! bench's fixture, for instruction counts under callgrind: a measure of a tick's work that a
//! noisy, shared machine does not distort (see benches/README.md, "Instructions per tick").
//! Run it twice (TICKS = 0 and TICKS = N) and divide the difference by N.
use zonescaler_benches::TickFixture;

fn args() -> Option<(usize, usize, usize)> {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    match a[..] {
        [entities, clients, ticks] => Some((entities, clients, ticks)),
        _ => None,
    }
}

fn main() {
    let Some((entities, clients, ticks)) = args() else {
        eprintln!("usage: tick_count ENTITIES CLIENTS TICKS (three whole numbers)");
        std::process::exit(2);
    };
    let mut f = TickFixture::new(entities, clients);
    for _ in 0..30 + ticks {
        f.before_tick();
        f.app.tick();
        f.after_tick();
    }
    println!("{}", f.app.tick_number());
}
