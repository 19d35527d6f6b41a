//! `cell_move`: one crowded cell (2,000 entities, 100 clients by default) moved from shard 0 to
//! shard 1 under load, in-process; each shard's tick time before, during and after the move,
//! and the move's duration. Issue 8's bar: tick p99 during the move ≤ 2× the steady p99, on
//! source and target.
//!
//! See `benches/README.md` ("Cell move") for what is and is not measured.

use clap::Parser;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;
use zonescaler_benches::cell_move::{MoveConfig, MoveRun, Percentiles, least_of, run};
use zonescaler_benches::cluster::TickTime;
use zonescaler_shared::limits;

/// Cell move under load: source and target tick times before, during and after one move.
#[derive(Parser, Debug)]
#[command(name = "cell_move", version)]
struct Args {
    /// NPCs placed in the moving cell.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=limits::NPC_COUNT_MAX as u64 / 2))]
    entities: u64,
    /// Clients (real sans-IO bots) crowding the moving cell.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=limits::CLIENTS_PER_SHARD_MAX as u64 / 2))]
    clients: u64,
    /// NPCs in the rest of the world (each shard places its share in its own cells).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=limits::NPC_COUNT_MAX as u64 / 2))]
    background: u64,
    /// `cluster.cell_move_batch` values to measure (comma-separated); the runs alternate them.
    #[arg(long, value_delimiter = ',', default_value = "200", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: Vec<u32>,
    /// Runs (moves) per batch size; the report gives medians over them.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Unmeasured ticks before the steady phase (logins, first full snapshots).
    #[arg(long, default_value_t = 90)]
    warmup: u64,
    /// Times each run is repeated: the scene is deterministic, so the tick-by-tick least of
    /// the repeats filters the machine's noise out of the "least" rows (see the README).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    /// Measured ticks before the move.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    steady: u64,
    /// Measured ticks after the move.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    after: u64,
    /// Seed of run 1 (run k uses seed + k − 1, the same for every batch size).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the numbers to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also write every measured tick to this file as CSV (run, batch, phase, tick, and the
    /// source's and target's CPU and wall milliseconds), to look at a phase tick by tick.
    #[arg(long, value_name = "FILE")]
    series: Option<PathBuf>,
}

/// The measured phases.
const PHASES: [&str; 3] = ["before", "during", "after"];
/// The two shards, as indices into a run's `[source, target]` tick pairs.
const SIDES: [&str; 2] = ["source", "target"];

fn phase(r: &MoveRun, p: usize) -> &[[TickTime; 2]] {
    match p {
        0 => &r.steady,
        1 => &r.during,
        _ => &r.after,
    }
}

/// One run's numbers for one shard, CPU (`cpu`) or wall time.
#[derive(Clone, Copy, Debug)]
struct SideRun {
    phases: [Percentiles; 3],
}

impl SideRun {
    fn of(r: &MoveRun, side: usize, cpu: bool) -> Self {
        Self {
            phases: [0, 1, 2].map(|p| Percentiles::of(phase(r, p), side, cpu)),
        }
    }
    /// During-p99 over before-p99, over after-p99, and over the larger of the two (the shard's
    /// steady state on the side of the move where it carries the cell).
    fn ratios(&self) -> [f64; 3] {
        let [b, d, a] = self.phases.map(|p| p.p99);
        [d / b, d / a, d / b.max(a)]
    }
}

/// The median (the mean of the middle two for an even count); NaN for none.
fn median(xs: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = xs.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// A JSON number (`null` for NaN and infinities, which JSON cannot carry).
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

/// Which numbers: thread CPU or wall time, of every run or of the least of each run's repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clock {
    /// Thread CPU time, tick by tick the least of the repeats.
    CpuLeast,
    /// Thread CPU time of every run.
    Cpu,
    /// Wall time of every run.
    Wall,
}

impl Clock {
    const ALL: [Clock; 3] = [Clock::CpuLeast, Clock::Cpu, Clock::Wall];
    fn name(self) -> &'static str {
        match self {
            Self::CpuLeast => "cpu_least",
            Self::Cpu => "cpu",
            Self::Wall => "wall",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Self::CpuLeast => "thread CPU, least of repeats",
            Self::Cpu => "thread CPU, every run",
            Self::Wall => "wall, every run",
        }
    }
}

/// Medians over one batch size's runs.
struct Summary<'a> {
    batch: u32,
    /// Every run, repeats included.
    raw: &'a [MoveRun],
    /// Per seed, the least of its repeats.
    least: &'a [MoveRun],
}

impl Summary<'_> {
    fn runs(&self, clock: Clock) -> &[MoveRun] {
        match clock {
            Clock::CpuLeast => self.least,
            Clock::Cpu | Clock::Wall => self.raw,
        }
    }
    /// The median over every run of `f`.
    fn m(&self, f: impl Fn(&MoveRun) -> f64) -> f64 {
        median(self.raw.iter().map(f))
    }
    fn sides(&self, clock: Clock, side: usize) -> Vec<SideRun> {
        self.runs(clock)
            .iter()
            .map(|r| SideRun::of(r, side, clock != Clock::Wall))
            .collect()
    }
    fn side(&self, clock: Clock, side: usize, phase: usize, f: fn(&Percentiles) -> f64) -> f64 {
        median(self.sides(clock, side).iter().map(|s| f(&s.phases[phase])))
    }
    fn ratio(&self, clock: Clock, side: usize, which: usize) -> f64 {
        median(self.sides(clock, side).iter().map(|s| s.ratios()[which]))
    }
    fn ratios_per_run(&self, clock: Clock, side: usize) -> Vec<f64> {
        self.sides(clock, side)
            .iter()
            .map(|s| s.ratios()[2])
            .collect()
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let tick_ms = self.raw.first().map_or(f64::NAN, |r| r.tick_ms);
        let _ = writeln!(
            out,
            "batch {} (cluster.cell_move_batch): {} runs, {} of them filtered; medians over runs",
            self.batch,
            self.raw.len(),
            self.least.len()
        );
        let _ = writeln!(
            out,
            "  move: {:.0} ticks to the flip = {:.0} ms at {:.1} ms/tick; {:.0} ticks until both shards hold the new map; bench wall for those ticks {:.0} ms",
            self.m(|r| r.ticks_to_flip as f64),
            self.m(|r| r.ticks_to_flip as f64 * r.tick_ms),
            tick_ms,
            self.m(|r| r.ticks_to_settle as f64),
            self.m(|r| r.bench_wall.as_secs_f64() * 1e3),
        );
        let _ = writeln!(
            out,
            "  entities: {:.0} in the cell at the order, {:.0} of them on the target after; source handoffs during the move {:.0}; world {:.0} before, {:.0} after",
            self.m(|r| r.in_cell as f64),
            self.m(|r| r.arrived as f64),
            self.m(|r| r.handoffs as f64),
            self.m(|r| r.entities_before as f64),
            self.m(|r| r.entities_after as f64),
        );
        let _ = writeln!(
            out,
            "  clients: {:.0} redirected during the move, {:.0} playing on the target after (they follow their redirects in-process)",
            self.m(|r| r.redirects as f64),
            self.m(|r| r.clients_on_target as f64),
        );
        for clock in Clock::ALL {
            let _ = writeln!(
                out,
                "  tick ms, {:<30}{:>20}{:>20}{:>20}   p99 during / p99 of",
                clock.label(),
                "before p50/p99/max",
                "during p50/p99/max",
                "after p50/p99/max"
            );
            for (side, name) in SIDES.iter().enumerate() {
                let cells: Vec<String> = (0..3)
                    .map(|p| {
                        format!(
                            "{:.2}/{:.2}/{:.2}",
                            self.side(clock, side, p, |x| x.p50),
                            self.side(clock, side, p, |x| x.p99),
                            self.side(clock, side, p, |x| x.max),
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "    {name:<37}{:>20}{:>20}{:>20}   before {:.2}, after {:.2}, steady {:.2}",
                    cells[0],
                    cells[1],
                    cells[2],
                    self.ratio(clock, side, 0),
                    self.ratio(clock, side, 1),
                    self.ratio(clock, side, 2),
                );
            }
        }
        for clock in [Clock::CpuLeast, Clock::Cpu] {
            for (side, name) in SIDES.iter().enumerate() {
                let list: Vec<String> = self
                    .ratios_per_run(clock, side)
                    .iter()
                    .map(|x| format!("{x:.2}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {name} p99 during / steady per run ({}): {}",
                    clock.label(),
                    list.join(" ")
                );
            }
        }
        out.pop();
        out
    }

    fn json(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            concat!(
                "{{\"batch\": {}, \"runs\": {}, \"runs_filtered\": {}, \"ticks_to_flip\": {}, ",
                "\"ms_to_flip\": {}, \"ticks_to_settle\": {}, \"bench_wall_ms\": {}, ",
                "\"entities_in_cell\": {}, \"arrived\": {}, \"source_handoffs\": {}, ",
                "\"entities_before\": {}, \"entities_after\": {}, \"redirects\": {}, ",
                "\"clients_on_target\": {}"
            ),
            self.batch,
            self.raw.len(),
            self.least.len(),
            num(self.m(|r| r.ticks_to_flip as f64)),
            num(self.m(|r| r.ticks_to_flip as f64 * r.tick_ms)),
            num(self.m(|r| r.ticks_to_settle as f64)),
            num(self.m(|r| r.bench_wall.as_secs_f64() * 1e3)),
            num(self.m(|r| r.in_cell as f64)),
            num(self.m(|r| r.arrived as f64)),
            num(self.m(|r| r.handoffs as f64)),
            num(self.m(|r| r.entities_before as f64)),
            num(self.m(|r| r.entities_after as f64)),
            num(self.m(|r| r.redirects as f64)),
            num(self.m(|r| r.clients_on_target as f64)),
        );
        for clock in Clock::ALL {
            for (side, name) in SIDES.iter().enumerate() {
                let _ = write!(s, ", \"{name}_{}_ms\": {{", clock.name());
                for (p, ph) in PHASES.iter().enumerate() {
                    let _ = write!(
                        s,
                        "{}\"{ph}\": {{\"p50\": {}, \"p99\": {}, \"max\": {}}}",
                        if p == 0 { "" } else { ", " },
                        num(self.side(clock, side, p, |x| x.p50)),
                        num(self.side(clock, side, p, |x| x.p99)),
                        num(self.side(clock, side, p, |x| x.max)),
                    );
                }
                let per_run: Vec<String> = self
                    .ratios_per_run(clock, side)
                    .into_iter()
                    .map(num)
                    .collect();
                let _ = write!(
                    s,
                    concat!(
                        ", \"p99_during_over_before\": {}, \"p99_during_over_after\": {}, ",
                        "\"p99_during_over_steady\": {}, \"runs_p99_during_over_steady\": [{}]}}"
                    ),
                    num(self.ratio(clock, side, 0)),
                    num(self.ratio(clock, side, 1)),
                    num(self.ratio(clock, side, 2)),
                    per_run.join(", "),
                );
            }
        }
        s.push('}');
        s
    }
}

fn main() {
    let args = Args::parse();
    let mut batches = args.batch.clone();
    batches.sort_unstable_by(|a, b| b.cmp(a));
    batches.dedup();
    println!(
        "cell_move: {} NPCs + {} clients in one border cell of shard 0, {} NPCs elsewhere, 2 shards, default world; {} warm-up, {} before, {} after; {} runs × {} repeats per batch {:?}, seed {}",
        args.entities,
        args.clients,
        args.background,
        args.warmup,
        args.steady,
        args.after,
        args.runs,
        args.repeat,
        batches,
        args.seed
    );
    let (raw, least) = measure(&args, &batches);
    let summaries: Vec<Summary> = batches
        .iter()
        .zip(raw.iter().zip(&least))
        .map(|(b, (r, l))| Summary {
            batch: *b,
            raw: r,
            least: l,
        })
        .collect();
    for s in &summaries {
        println!("{}", s.table());
    }
    println!(
        "p99 during / p99 of steady: of the larger of before and after (the source carries the cell before the move, the target after it)"
    );
    for s in &summaries {
        println!(
            "batch {}: move {:.0} ticks = {:.0} ms; p99 during / steady, thread CPU least of repeats: source {:.2}, target {:.2} (every run: {:.2}, {:.2})",
            s.batch,
            s.m(|r| r.ticks_to_flip as f64),
            s.m(|r| r.ticks_to_flip as f64 * r.tick_ms),
            s.ratio(Clock::CpuLeast, 0, 2),
            s.ratio(Clock::CpuLeast, 1, 2),
            s.ratio(Clock::Cpu, 0, 2),
            s.ratio(Clock::Cpu, 1, 2),
        );
    }

    if let Some(path) = &args.series {
        write_series(path, &raw, args.repeat);
    }
    if let Some(path) = &args.json {
        write_json(path, &args, &summaries);
    }
}

/// Every run of every batch size, and per seed the least of its repeats.
fn measure(args: &Args, batches: &[u32]) -> (Vec<Vec<MoveRun>>, Vec<Vec<MoveRun>>) {
    let mut raw: Vec<Vec<MoveRun>> = vec![Vec::new(); batches.len()];
    let mut least: Vec<Vec<MoveRun>> = vec![Vec::new(); batches.len()];
    let started = Instant::now();
    for k in 0..args.runs {
        // Alternate the order of the batch sizes, so a shared machine's drift hits each alike.
        let mut order: Vec<usize> = (0..batches.len()).collect();
        if k % 2 == 1 {
            order.reverse();
        }
        for b in order {
            let cfg = MoveConfig {
                entities: args.entities as usize,
                clients: args.clients as usize,
                background: args.background as usize,
                warmup: args.warmup,
                steady: args.steady,
                after: args.after,
                seed: args.seed + k,
                ..MoveConfig::new(batches[b])
            };
            let mut reps = Vec::with_capacity(args.repeat as usize);
            for rep in 0..args.repeat {
                let r = run(&cfg).unwrap_or_else(|e| {
                    eprintln!(
                        "cell_move: FAILED (run {}, repeat {}, batch {}, seed {}): {e}",
                        k + 1,
                        rep + 1,
                        cfg.batch,
                        cfg.seed
                    );
                    std::process::exit(1);
                });
                let [s, t] = [0, 1].map(|side| SideRun::of(&r, side, true));
                eprintln!(
                    "run {}/{} repeat {} batch {}: cell {} ({} entities) flipped after {} ticks; CPU p99 before/during/after: source {:.2}/{:.2}/{:.2} ms, target {:.2}/{:.2}/{:.2} ms ({:.0} s elapsed)",
                    k + 1,
                    args.runs,
                    rep + 1,
                    r.batch,
                    r.cell,
                    r.in_cell,
                    r.ticks_to_flip,
                    s.phases[0].p99,
                    s.phases[1].p99,
                    s.phases[2].p99,
                    t.phases[0].p99,
                    t.phases[1].p99,
                    t.phases[2].p99,
                    started.elapsed().as_secs_f64(),
                );
                reps.push(r);
            }
            match least_of(&reps) {
                Some(l) => least[b].push(l),
                None => eprintln!(
                    "  warning: the repeats of seed {} differ (not deterministic?): no filtered run for it",
                    cfg.seed
                ),
            }
            raw[b].extend(reps);
        }
    }

    (raw, least)
}

/// `--series`: every tick of every run, CSV.
fn write_series(path: &std::path::Path, raw: &[Vec<MoveRun>], repeat: u64) {
    let mut s = String::from(
        "run,repeat,batch,phase,tick,source_cpu_ms,source_wall_ms,target_cpu_ms,target_wall_ms\n",
    );
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    for rs in raw {
        for (n, r) in rs.iter().enumerate() {
            let (k, rep) = (n as u64 / repeat + 1, n as u64 % repeat + 1);
            for (p, name) in PHASES.iter().enumerate() {
                for (i, t) in phase(r, p).iter().enumerate() {
                    let _ = writeln!(
                        s,
                        "{k},{rep},{},{name},{i},{:.4},{:.4},{:.4},{:.4}",
                        r.batch,
                        ms(t[0].cpu),
                        ms(t[0].wall),
                        ms(t[1].cpu),
                        ms(t[1].wall)
                    );
                }
            }
        }
    }
    write_or_exit(path, &s);
}

/// `--json`: the summaries.
fn write_json(path: &std::path::Path, args: &Args, summaries: &[Summary]) {
    let mut s = String::new();
    let _ = writeln!(
        s,
        concat!(
            "{{\n  \"entities\": {}, \"clients\": {}, \"background\": {}, \"warmup\": {}, ",
            "\"steady\": {}, \"after\": {}, \"runs\": {}, \"repeat\": {}, \"seed\": {},\n",
            "  \"batches\": ["
        ),
        args.entities,
        args.clients,
        args.background,
        args.warmup,
        args.steady,
        args.after,
        args.runs,
        args.repeat,
        args.seed
    );
    let list: Vec<String> = summaries
        .iter()
        .map(|x| format!("    {}", x.json()))
        .collect();
    s.push_str(&list.join(",\n"));
    s.push_str("\n  ]\n}\n");
    write_or_exit(path, &s);
}

fn write_or_exit(path: &std::path::Path, text: &str) {
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("cell_move: cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
}
