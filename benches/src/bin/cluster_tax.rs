//! `cluster_tax`: the sharding tax. The same scene (NPCs, and bots walking back and forth across
//! the borders of the split) runs on one shard and on N, in-process and single-threaded; it
//! prints the shard CPU-seconds per entity-tick of each and their ratio (the goal: ≤ 1.25 for
//! 4 shards).
//!
//! See `benches/README.md` ("Sharding tax") for what is and is not measured.

use clap::{CommandFactory, Parser, ValueEnum, error::ErrorKind};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;
use zonescaler_benches::cluster::{ClusterScene, border_bots, equal_split};
use zonescaler_bots::BotConfig;
use zonescaler_shared::cellmap::{CellGrid, CellMap};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::limits;

/// Sharding tax: shard CPU-seconds per entity-tick of one scene on 1 shard and on N shards.
#[derive(Parser, Debug)]
#[command(name = "cluster_tax", version)]
struct Args {
    /// Networked entities in the whole world: the bots' avatars plus wandering NPCs.
    #[arg(
        long,
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..=limits::ENTITIES_PER_SHARD_MAX as u64)
    )]
    entities: u64,
    /// Bots walking back and forth across the borders of the N-shard split.
    #[arg(long, default_value_t = 500)]
    bots: u64,
    /// Measured ticks per run (after the warm-up).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    ticks: u64,
    /// Ticks run before measuring (logins, first full snapshots, first handoffs).
    #[arg(long, default_value_t = 90)]
    warmup: u64,
    /// Runs of each scene; the report gives medians. The two scenes alternate.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Shards of the split scene (equal contiguous regions of the default world).
    #[arg(
        long,
        default_value_t = 4,
        value_parser = clap::value_parser!(u64).range(2..=limits::SHARDS_MAX as u64)
    )]
    shards: u64,
    /// Seed of the world (NPC placement and wandering) and of the bots' walks.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the numbers to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Run only one of the two scenes (to profile it); no ratio is printed.
    #[arg(long, value_enum)]
    only: Option<Side>,
}

/// The two scenes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Side {
    /// The world on one shard.
    Single,
    /// The world on `--shards` shards.
    Split,
}

/// One measured run of one scene.
#[derive(Clone, Debug)]
struct Run {
    ticks: u64,
    shards: usize,
    /// Entities of the world when measuring started.
    entities: usize,
    shard_s: f64,
    busiest_shard_s: f64,
    link_s: f64,
    handoffs: u64,
    bot_handoffs: u64,
    proxies_mean: f64,
    link_messages: u64,
    link_bytes: u64,
    bots_playing: usize,
    /// Share of the run's wall time this thread waited for a CPU (`None` where unreadable).
    cpu_wait: Option<f64>,
}

impl Run {
    fn cpu_s_per_entity_tick(&self) -> f64 {
        self.shard_s / (self.entities as f64 * self.ticks as f64)
    }
    fn ms_per_tick(&self) -> f64 {
        1e3 * self.shard_s / self.ticks as f64
    }
}

/// This thread's time waiting on a run queue, in ns (`/proc/thread-self/schedstat`, field 2):
/// on a shared machine, how much of a run's wall time went to other processes.
fn run_queue_wait_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

fn measure(world: &WorldConfig, map: &CellMap, bots: &[BotConfig], args: &Args) -> Run {
    let mut scene = ClusterScene::new(world, map, bots);
    for _ in 0..args.warmup {
        scene.step();
    }
    scene.reset_counters();
    let entities = scene.entities();
    let wait0 = run_queue_wait_ns();
    let t0 = Instant::now();
    for _ in 0..args.ticks {
        scene.step();
    }
    let wall_ns = t0.elapsed().as_nanos() as f64;
    let cpu_wait = wait0
        .zip(run_queue_wait_ns())
        .map(|(a, b)| b.saturating_sub(a) as f64 / wall_ns);
    let time = scene.time();
    let c = scene.counters();
    Run {
        ticks: c.ticks,
        shards: scene.shards(),
        entities,
        shard_s: time.total().as_secs_f64(),
        busiest_shard_s: time
            .per_shard
            .iter()
            .map(|d| d.as_secs_f64())
            .fold(0.0, f64::max),
        link_s: time.links.as_secs_f64(),
        handoffs: scene.handoffs(),
        bot_handoffs: scene.bot_handoffs(),
        proxies_mean: c.proxy_ticks as f64 / c.ticks as f64,
        link_messages: c.link_messages,
        link_bytes: c.link_bytes,
        bots_playing: scene.bots_playing(),
        cpu_wait,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => 0.5 * (xs[n / 2 - 1] + xs[n / 2]),
    }
}

/// Medians over the runs of one scene.
#[derive(Clone, Debug)]
struct Summary {
    shards: usize,
    cpu_s_per_entity_tick: f64,
    ms_per_tick: f64,
    ms_per_tick_per_shard: f64,
    ms_per_tick_busiest_shard: f64,
    link_ms_per_tick: f64,
    handoffs: f64,
    bot_handoffs: f64,
    proxies_mean: f64,
    link_messages_per_tick: f64,
    link_bytes_per_tick: f64,
    entities: f64,
    bots_playing: f64,
    cpu_wait: Option<f64>,
    runs_cpu_s_per_entity_tick: Vec<f64>,
}

impl Summary {
    fn of(runs: &[Run]) -> Self {
        let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let shards = runs.first().map_or(0, |r| r.shards);
        let waits: Option<Vec<f64>> = runs.iter().map(|r| r.cpu_wait).collect();
        Self {
            shards,
            cpu_s_per_entity_tick: m(&Run::cpu_s_per_entity_tick),
            ms_per_tick: m(&Run::ms_per_tick),
            ms_per_tick_per_shard: m(&|r| r.ms_per_tick() / r.shards as f64),
            ms_per_tick_busiest_shard: m(&|r| 1e3 * r.busiest_shard_s / r.ticks as f64),
            link_ms_per_tick: m(&|r| 1e3 * r.link_s / r.ticks as f64),
            handoffs: m(&|r| r.handoffs as f64),
            bot_handoffs: m(&|r| r.bot_handoffs as f64),
            proxies_mean: m(&|r| r.proxies_mean),
            link_messages_per_tick: m(&|r| r.link_messages as f64 / r.ticks as f64),
            link_bytes_per_tick: m(&|r| r.link_bytes as f64 / r.ticks as f64),
            entities: m(&|r| r.entities as f64),
            bots_playing: m(&|r| r.bots_playing as f64),
            cpu_wait: waits.map(median),
            runs_cpu_s_per_entity_tick: runs.iter().map(Run::cpu_s_per_entity_tick).collect(),
        }
    }

    fn json(&self) -> String {
        let runs: Vec<String> = self
            .runs_cpu_s_per_entity_tick
            .iter()
            .map(|x| num(*x))
            .collect();
        format!(
            concat!(
                "{{\"shards\": {}, \"cpu_s_per_entity_tick\": {}, \"ms_per_tick\": {}, ",
                "\"ms_per_tick_per_shard\": {}, \"ms_per_tick_busiest_shard\": {}, ",
                "\"link_ms_per_tick\": {}, \"handoffs\": {}, \"bot_handoffs\": {}, ",
                "\"proxies_mean\": {}, \"link_messages_per_tick\": {}, ",
                "\"link_bytes_per_tick\": {}, \"entities\": {}, \"bots_playing\": {}, ",
                "\"cpu_wait_fraction\": {}, \"runs_cpu_s_per_entity_tick\": [{}]}}"
            ),
            self.shards,
            num(self.cpu_s_per_entity_tick),
            num(self.ms_per_tick),
            num(self.ms_per_tick_per_shard),
            num(self.ms_per_tick_busiest_shard),
            num(self.link_ms_per_tick),
            num(self.handoffs),
            num(self.bot_handoffs),
            num(self.proxies_mean),
            num(self.link_messages_per_tick),
            num(self.link_bytes_per_tick),
            num(self.entities),
            num(self.bots_playing),
            self.cpu_wait.map_or("null".into(), num),
            runs.join(", "),
        )
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

fn fail(kind: ErrorKind, message: String) -> ! {
    Args::command().error(kind, message).exit()
}

fn main() {
    let args = Args::parse();
    let shards = args.shards as usize;
    let (entities, bot_count) = (args.entities as usize, args.bots as usize);
    if args.bots > args.entities {
        fail(
            ErrorKind::ValueValidation,
            format!(
                "--bots {} is more than --entities {}: every bot's avatar is one of the entities",
                args.bots, args.entities
            ),
        );
    }
    if bot_count > limits::CLIENTS_PER_SHARD_MAX {
        fail(
            ErrorKind::ValueValidation,
            format!(
                "--bots {}: the one-shard scene takes at most {} clients (CLIENTS_PER_SHARD_MAX)",
                args.bots,
                limits::CLIENTS_PER_SHARD_MAX
            ),
        );
    }
    if entities - bot_count > limits::NPC_COUNT_MAX {
        fail(
            ErrorKind::ValueValidation,
            format!(
                "--entities {} with --bots {} makes {} NPCs; the most is {} (NPC_COUNT_MAX)",
                args.entities,
                args.bots,
                entities - bot_count,
                limits::NPC_COUNT_MAX
            ),
        );
    }
    let mut world = WorldConfig::default();
    world.simulation.seed = args.seed;
    world.npc.count = entities - bot_count;
    if let Err(e) = world.validate(std::path::Path::new("<default world>")) {
        fail(ErrorKind::ValueValidation, format!("--entities: {e}"));
    }
    let grid = CellGrid::from_config(&world);
    let cells = grid.cols() as usize * grid.rows() as usize;
    if shards > cells.min(limits::SHARDS_MAX) {
        fail(
            ErrorKind::ValueValidation,
            format!(
                "--shards {shards}: the default world has {cells} base cells, so at most {} shards",
                cells.min(limits::SHARDS_MAX)
            ),
        );
    }
    let split = equal_split(&world, shards).unwrap_or_else(|e| {
        fail(
            ErrorKind::ValueValidation,
            format!("--shards {shards}: {e}"),
        )
    });
    let single = equal_split(&world, 1)
        .unwrap_or_else(|e| fail(ErrorKind::ValueValidation, format!("one shard: {e}")));
    // The same bots on both sides: their walks cross the borders of the split, and follow the
    // same lines on one shard, where nothing happens there.
    let bots = border_bots(&split, bot_count, args.seed);

    println!(
        "cluster_tax: {} entities ({} NPCs + {} border bots), default world, {} ticks after {} warm-up, {} runs, seed {}",
        args.entities, world.npc.count, args.bots, args.ticks, args.warmup, args.runs, args.seed
    );
    let sides: Vec<Side> = match args.only {
        Some(s) => vec![s],
        None => vec![Side::Single, Side::Split],
    };
    let (mut single_runs, mut split_runs) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for run in 0..args.runs {
        // Alternate the order, so slow drift of a shared machine's load hits both alike.
        let mut order = sides.clone();
        if run % 2 == 1 {
            order.reverse();
        }
        for side in order {
            let (map, out) = match side {
                Side::Single => (&single, &mut single_runs),
                Side::Split => (&split, &mut split_runs),
            };
            let r = measure(&world, map, &bots, &args);
            eprintln!(
                "run {}/{}: {} shard(s): {:.1} ns/entity-tick, {:.2} ms/tick, {} handoffs ({:.0} s elapsed)",
                run + 1,
                args.runs,
                r.shards,
                1e9 * r.cpu_s_per_entity_tick(),
                r.ms_per_tick(),
                r.handoffs,
                started.elapsed().as_secs_f64(),
            );
            if r.entities != entities {
                // The per-entity-tick numbers stay per entity, but the scenes differ.
                eprintln!(
                    "  warning: the scene holds {} entities, not {entities}: NPC placement fell short",
                    r.entities
                );
            }
            if r.bots_playing < bot_count {
                eprintln!(
                    "  warning: only {} of {} bots are playing at the end",
                    r.bots_playing, args.bots
                );
            }
            out.push(r);
        }
    }

    let summaries: Vec<Summary> = [&single_runs, &split_runs]
        .into_iter()
        .filter(|r| !r.is_empty())
        .map(|r| Summary::of(r))
        .collect();
    println!("{}", table(&summaries));
    let ratio = (!single_runs.is_empty() && !split_runs.is_empty()).then(|| {
        let per_run: Vec<f64> = single_runs
            .iter()
            .zip(&split_runs)
            .map(|(a, b)| b.cpu_s_per_entity_tick() / a.cpu_s_per_entity_tick())
            .collect();
        (
            summaries[1].cpu_s_per_entity_tick / summaries[0].cpu_s_per_entity_tick,
            per_run,
        )
    });
    if let Some((ratio, per_run)) = &ratio {
        let list: Vec<String> = per_run.iter().map(|r| format!("{r:.2}")).collect();
        println!("per-run ratios ({shards} / 1): {}", list.join(" "));
        println!("sharding_tax_ratio = {ratio:.2}");
    }

    if let Some(path) = &args.json {
        let mut s = String::new();
        let _ = write!(
            s,
            "{{\n  \"entities\": {}, \"bots\": {}, \"ticks\": {}, \"warmup\": {}, \"runs\": {}, \"seed\": {}, \"shards\": {},\n",
            args.entities, args.bots, args.ticks, args.warmup, args.runs, args.seed, shards
        );
        for (name, runs) in [("single", &single_runs), ("split", &split_runs)] {
            if !runs.is_empty() {
                let _ = writeln!(s, "  \"{name}\": {},", Summary::of(runs).json());
            }
        }
        match &ratio {
            Some((r, per_run)) => {
                let list: Vec<String> = per_run.iter().map(|x| num(*x)).collect();
                let _ = write!(
                    s,
                    "  \"per_run_ratios\": [{}],\n  \"sharding_tax_ratio\": {}\n}}\n",
                    list.join(", "),
                    num(*r)
                );
            }
            None => s.push_str("  \"sharding_tax_ratio\": null\n}\n"),
        }
        if let Err(e) = std::fs::write(path, s) {
            eprintln!("cluster_tax: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}

/// The report table: one column per scene.
fn table(s: &[Summary]) -> String {
    let mut out = String::new();
    let head: Vec<String> = s
        .iter()
        .map(|x| match x.shards {
            1 => "1 shard".to_owned(),
            n => format!("{n} shards"),
        })
        .collect();
    let row = |out: &mut String, name: &str, cells: Vec<String>| {
        let _ = write!(out, "{name:<34}");
        for c in cells {
            let _ = write!(out, "{c:>14}");
        }
        out.push('\n');
    };
    row(&mut out, "(medians over runs)", head);
    let f = |g: &dyn Fn(&Summary) -> String| s.iter().map(g).collect::<Vec<_>>();
    row(
        &mut out,
        "CPU-s per entity-tick",
        f(&|x| format!("{:.3e}", x.cpu_s_per_entity_tick)),
    );
    row(
        &mut out,
        "  (ns per entity-tick)",
        f(&|x| format!("{:.1}", 1e9 * x.cpu_s_per_entity_tick)),
    );
    row(
        &mut out,
        "ms per tick, all shards",
        f(&|x| format!("{:.3}", x.ms_per_tick)),
    );
    row(
        &mut out,
        "ms per tick per shard (mean)",
        f(&|x| format!("{:.3}", x.ms_per_tick_per_shard)),
    );
    row(
        &mut out,
        "ms per tick, busiest shard",
        f(&|x| format!("{:.3}", x.ms_per_tick_busiest_shard)),
    );
    row(
        &mut out,
        "  of all: link hand-over ms/tick",
        f(&|x| format!("{:.4}", x.link_ms_per_tick)),
    );
    row(
        &mut out,
        "handoffs (entities, per run)",
        f(&|x| format!("{:.0}", x.handoffs)),
    );
    row(
        &mut out,
        "  of which bots redirected",
        f(&|x| format!("{:.0}", x.bot_handoffs)),
    );
    row(
        &mut out,
        "proxies (mean, all shards)",
        f(&|x| format!("{:.0}", x.proxies_mean)),
    );
    row(
        &mut out,
        "link messages per tick",
        f(&|x| format!("{:.1}", x.link_messages_per_tick)),
    );
    row(
        &mut out,
        "link KiB per tick",
        f(&|x| format!("{:.1}", x.link_bytes_per_tick / 1024.0)),
    );
    row(&mut out, "entities", f(&|x| format!("{:.0}", x.entities)));
    row(
        &mut out,
        "bots playing at the end",
        f(&|x| format!("{:.0}", x.bots_playing)),
    );
    row(
        &mut out,
        "waited for a CPU (% of wall)",
        f(&|x| {
            x.cpu_wait
                .map_or("-".into(), |w| format!("{:.1}", 100.0 * w))
        }),
    );
    out.pop();
    out
}
