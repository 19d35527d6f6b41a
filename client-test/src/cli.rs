//! The load tester's command line, as a library: `zonescaler-bots` is a thin wrapper around
//! [`BotArgs`] and [`run`], and a game server binary embeds the same arguments as its `bots`
//! subcommand, passing its own [`BotGame`]. Nothing here is specific to one binary: no program
//! name, version or logging setup (the binary owns those).

use crate::core::Scenario;
use crate::game::BotGame;
use crate::hotspot::{HOTSPOT_RADIUS_DEFAULT_M, parse_point};
use crate::html;
use crate::report::Report;
use crate::swarm::{self, SwarmConfig};
use anyhow::{Context, bail};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zonescaler_net::tls::ClientTrust;
use zonescaler_shared::protocol::ErrorCode;
use zonescaler_shared::ticket::TicketSigner;

/// Bots one process drives at most: past this one machine's sockets and cores, not the shards,
/// are what a run would measure.
pub const BOTS_MAX: usize = 20_000;

/// Headless ZoneScaler bots: connect N clients over QUIC, play a scenario, report latency,
/// bandwidth and errors.
#[derive(clap::Args, Debug, Clone)]
pub struct BotArgs {
    /// Shard address to connect to (host:port). Bots follow redirects to the cluster's other
    /// shards from there; a bot that loses its shard comes back through the others its resume
    /// ticket named (or this one), resuming its avatar or logging in anew (the report's
    /// `failovers` line).
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub connect: String,
    /// Number of bots.
    #[arg(long, default_value_t = 10)]
    pub bots: usize,
    /// How long every bot plays after the ramp, e.g. `30s`, `2m`, `500ms`. A login that waits in
    /// the cluster's login queue (every shard at its client cap) waits within this time and
    /// reports its queue time; a login refused for want of room (`no_room`) makes the run exit
    /// non-zero with the server's message.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time over which bots connect, evenly spaced (default: 2 ms per bot, at most 5 s).
    #[arg(long, value_parser = parse_duration)]
    pub ramp: Option<Duration>,
    /// What the bots do: wander (random waypoints), idle (stand still), border (walk back and
    /// forth across borders between shards, chosen from the cell map; needs a cluster of more
    /// than one shard, e.g. `zonescaler up --shards 4`), crowd (every bot gathers around one hot
    /// spot, see --hotspot and --radius, and keeps milling about in it), migrate (a crowd whose
    /// hot spot travels across the world during the run, through --hotspot, on a heading the
    /// seed picks, at half the avatars' top speed: a hot zone the cluster must follow). With
    /// --login-key, crowd bots start in the crowd.
    #[arg(long, default_value = "wander", value_parser = parse_scenario)]
    pub scenario: Scenario,
    /// Centre of the crowd (crowd), or the midpoint of its path (migrate), as X,Z in metres;
    /// it must be inside the world. Default: the world's centre.
    #[arg(long, value_name = "X,Z", value_parser = parse_point, allow_hyphen_values = true)]
    pub hotspot: Option<(f32, f32)>,
    /// Radius of the crowd in metres (crowd, migrate; default 100).
    #[arg(long, value_name = "METRES", allow_hyphen_values = true)]
    pub radius: Option<f32>,
    /// The game the bots play (default: the first this binary knows). It decides the protocol
    /// the bots speak and what they do besides walking.
    #[arg(long)]
    pub game: Option<String>,
    /// The account service's private login key file: the bots mint their own login tickets with
    /// it (account `PREFIX-N`, see `--accounts`; spawn point chosen by the scenario). Without it bots log in without
    /// tickets, which only a server without login keys accepts.
    #[arg(long, value_name = "PATH")]
    pub login_key: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub report_json: Option<PathBuf>,
    /// Write the report as one self-contained HTML page (charts included) to this file.
    #[arg(long, value_name = "PATH")]
    pub report_html: Option<PathBuf>,
    /// PEM certificate to trust (`zonescaler up` writes one that every shard of its cluster
    /// presents).
    #[arg(long, conflicts_with = "insecure")]
    pub cert: Option<PathBuf>,
    /// Accept any server certificate (local testing only).
    #[arg(long)]
    pub insecure: bool,
    /// TLS server name to ask for.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Inputs per second per bot.
    #[arg(long, default_value_t = 30)]
    pub input_hz: u32,
    /// Ignore the shards' heads-up that a redirect may follow (`Prepare`) and connect only when
    /// it comes, as a client that does not implement it. By default a bot opens that connection
    /// at once, so a redirect finds its QUIC handshake done.
    #[arg(long)]
    pub no_preconnect: bool,
    /// Bots sharing one QUIC endpoint (one UDP socket and its driver task), 1..=1024. Fewer
    /// sockets cost less CPU; too few fall behind quinn's per-poll receive bound on a busy
    /// runtime (at most 256 endpoints are opened however many bots).
    #[arg(long, default_value_t = crate::swarm::BOTS_PER_ENDPOINT)]
    pub bots_per_endpoint: usize,
    /// Seed for the bots' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Do not show progress.
    #[arg(long)]
    pub quiet: bool,
    /// Worker threads for the bots' async runtime (default: one per CPU core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Account names of the bots: PREFIX-0, PREFIX-1, … (and PREFIX-scout for the border run's
    /// scout). Give two swarms against one cluster different prefixes, or the second one's
    /// logins take over (or are refused by) the first one's accounts.
    #[arg(long, value_name = "PREFIX", default_value = swarm::ACCOUNT_PREFIX_DEFAULT)]
    pub accounts: String,
}

/// Run the load test `args` describe, with the game `--game` picks from `games`: build the
/// runtime, run the swarm, print the summary and write the reports asked for. Call it from
/// outside any async runtime: it builds its own, sized by `--threads`.
pub fn run(args: BotArgs, games: &[BotGame]) -> anyhow::Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        bail!("the load tester builds its own async runtime: call cli::run outside of one");
    }
    let game = select_game(args.game.as_deref(), games)?;
    let cfg = swarm_config(&args, game)?;
    if (cfg.scenario == Scenario::Border || cfg.scenario.gathers()) && cfg.login.is_none() {
        eprintln!(
            "zonescaler-bots: without --login-key the bots carry no ticket, so {} bots start \
             where the shard puts them and walk to their {} first",
            cfg.scenario.name(),
            if cfg.scenario.gathers() {
                "crowd"
            } else {
                "border"
            }
        );
    }
    eprintln!(
        "zonescaler-bots: {} bots of {} → {} ({}), ramp {:?}, run {:?}",
        cfg.bots,
        game.name,
        cfg.addr,
        cfg.scenario.name(),
        cfg.ramp,
        cfg.duration
    );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n);
    }
    let rt = builder
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let report = rt.block_on(swarm::run(cfg))?;
    print!("{}", report.render());
    write_reports(
        &report,
        args.report_json.as_deref(),
        args.report_html.as_deref(),
    )?;
    refused_for_room(&report)
}

/// A run in which the cluster refused a login for want of room is a failed run, with the
/// server's words: a load test that cannot place its players measures nothing it asked for, and
/// a script must see it in the exit status. (Logins that waited in the queue and got in are
/// fine.) The error kind with the most words is the one that carries the server's message.
pub fn refused_for_room(report: &Report) -> anyhow::Result<()> {
    let refusal = report
        .errors
        .iter()
        .filter(|(kind, _)| kind.contains(ErrorCode::NoRoom.as_str()))
        .max_by_key(|(kind, _)| kind.len());
    match refusal {
        Some((kind, _)) => bail!(
            "the cluster has no room: {} of {} bots did not get to play ({kind})",
            report.connect_failures,
            report.bots_requested
        ),
        None => Ok(()),
    }
}

/// The game `name` selects among `games` (the first when `None`). An unknown name is a one-line
/// error that lists the games this binary knows.
pub fn select_game<'a>(name: Option<&str>, games: &'a [BotGame]) -> anyhow::Result<&'a BotGame> {
    let Some(first) = games.first() else {
        bail!("this binary knows no game for bots to play");
    };
    let Some(name) = name else {
        return Ok(first);
    };
    games.iter().find(|g| g.name == name).with_context(|| {
        let known: Vec<&str> = games.iter().map(|g| g.name.as_str()).collect();
        format!(
            "unknown game `{name}` (this binary knows: {})",
            known.join(", ")
        )
    })
}

/// The swarm `args` ask for, checked: every refusal names the flag.
pub fn swarm_config(args: &BotArgs, game: &BotGame) -> anyhow::Result<SwarmConfig> {
    if args.bots == 0 {
        bail!("--bots must be at least 1");
    }
    if args.bots > BOTS_MAX {
        bail!(
            "--bots {} is more than one process should drive (at most {BOTS_MAX})",
            args.bots
        );
    }
    if args.input_hz == 0 || args.input_hz > 240 {
        bail!("--input-hz must be in 1..=240");
    }
    if !(1..=1024).contains(&args.bots_per_endpoint) {
        bail!("--bots-per-endpoint must be in 1..=1024");
    }
    if args.threads.is_some_and(|n| n == 0 || n > 256) {
        bail!("--threads must be in 1..=256");
    }
    if !args.scenario.gathers() && (args.hotspot.is_some() || args.radius.is_some()) {
        bail!(
            "--hotspot and --radius apply to --scenario crowd or migrate, not {}",
            args.scenario.name()
        );
    }
    let hotspot_radius_m = args.radius.unwrap_or(HOTSPOT_RADIUS_DEFAULT_M);
    if !(hotspot_radius_m.is_finite() && hotspot_radius_m > 0.0) {
        bail!("--radius must be a positive number of metres (got {hotspot_radius_m})");
    }
    swarm::check_account_prefix(&args.accounts, args.bots)
        .map_err(|why| anyhow::anyhow!("--accounts {:?}: {why}", args.accounts))?;
    let addr: SocketAddr = args
        .connect
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve --connect {}", args.connect))?
        .next()
        .with_context(|| format!("--connect {} resolves to no address", args.connect))?;
    let trust = match (&args.cert, args.insecure) {
        (Some(p), _) => ClientTrust::from_pem_file(p)?,
        (None, true) => ClientTrust::InsecureSkipVerify,
        (None, false) => bail!(
            "give --cert FILE (the shard's certificate) or --insecure to accept any certificate"
        ),
    };
    let login = match &args.login_key {
        Some(p) => Some(Arc::new(TicketSigner::load(p).context("--login-key")?)),
        None => None,
    };
    let ramp = args
        .ramp
        .unwrap_or_else(|| Duration::from_millis((2 * args.bots as u64).min(5_000)));
    Ok(SwarmConfig {
        addr,
        server_name: args.server_name.clone(),
        bots: args.bots,
        duration: args.duration,
        ramp,
        scenario: args.scenario,
        trust,
        seed: args.seed,
        input_hz: args.input_hz,
        preconnect: !args.no_preconnect,
        bots_per_endpoint: args.bots_per_endpoint,
        progress: !args.quiet,
        game: game.clone(),
        login,
        accounts: args.accounts.clone(),
        hotspot: args.hotspot,
        hotspot_radius_m,
    })
}

/// Write the JSON and HTML reports where asked.
pub fn write_reports(
    report: &Report,
    json: Option<&Path>,
    html: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the JSON report to {}", path.display()))?;
        eprintln!("zonescaler-bots: report written to {}", path.display());
    }
    if let Some(path) = html {
        std::fs::write(path, html::render(report))
            .with_context(|| format!("cannot write the HTML report to {}", path.display()))?;
        eprintln!("zonescaler-bots: HTML report written to {}", path.display());
    }
    Ok(())
}

/// A duration with a unit: `500ms`, `30s`, `2m` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 30s, 2m, 500ms)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("`{s}` must be a positive duration"));
    }
    Duration::try_from_secs_f64(v * mul).map_err(|_| format!("`{s}` is too long"))
}

pub fn parse_scenario(s: &str) -> Result<Scenario, String> {
    Scenario::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Scenario::ALL.iter().map(|x| x.name()).collect();
        format!("unknown scenario `{s}` (one of: {})", names.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use zonescaler_shared::registry::ProtocolRegistry;

    /// What an embedding binary does: flatten the arguments into its own command.
    #[derive(Parser, Debug)]
    struct Cmd {
        #[command(flatten)]
        args: BotArgs,
    }

    fn args(extra: &[&str]) -> BotArgs {
        let mut argv = vec!["bots", "--insecure"];
        argv.extend_from_slice(extra);
        Cmd::try_parse_from(argv).expect("valid arguments").args
    }

    fn game(name: &str) -> BotGame {
        BotGame::new(name, ProtocolRegistry::new(), |_| {
            Box::new(crate::game::IdleBrain)
        })
    }

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(
            parse_duration("1e300m").is_err(),
            "too long is an error, not a panic"
        );
    }

    #[test]
    fn every_scenario_parses_and_the_help_names_it() {
        let help = Cmd::command().render_long_help().to_string();
        for s in Scenario::ALL {
            assert_eq!(parse_scenario(s.name()), Ok(s));
            assert!(help.contains(s.name()), "--help names `{}`", s.name());
        }
        assert!(
            help.contains("more than one shard"),
            "--help says border needs a multi-shard cluster"
        );
        assert!(
            help.contains("travels across the world"),
            "--help says what migrate does"
        );
        assert!(help.contains("login queue"), "--help says bots wait in it");
        for flag in [
            "--game",
            "--login-key",
            "--report-html",
            "--report-json",
            "--hotspot",
            "--radius",
        ] {
            assert!(help.contains(flag), "--help has {flag}");
        }
        assert!(parse_scenario("sideways").is_err());
    }

    #[test]
    fn the_first_game_is_the_default_and_an_unknown_one_lists_the_known() {
        let games = [game("demo"), game("arena")];
        assert_eq!(select_game(None, &games).expect("default").name, "demo");
        assert_eq!(
            select_game(Some("arena"), &games).expect("known").name,
            "arena"
        );
        let e = select_game(Some("chess"), &games).expect_err("unknown");
        assert_eq!(
            format!("{e:#}"),
            "unknown game `chess` (this binary knows: demo, arena)"
        );
        assert!(select_game(None, &[]).is_err(), "no game, no run");
    }

    #[test]
    fn flags_become_the_swarm_config_and_bad_ones_name_themselves() {
        let demo = BotGame::demo();
        let cfg = swarm_config(
            &args(&[
                "--bots",
                "3",
                "--scenario",
                "idle",
                "--connect",
                "127.0.0.1:5000",
            ]),
            &demo,
        )
        .expect("valid");
        assert_eq!((cfg.bots, cfg.scenario), (3, Scenario::Idle));
        assert_eq!(cfg.ramp, Duration::from_millis(6), "2 ms per bot");
        assert!(cfg.preconnect, "bots connect ahead on a Prepare by default");
        assert_eq!(cfg.bots_per_endpoint, crate::swarm::BOTS_PER_ENDPOINT);
        let tuned = swarm_config(
            &args(&["--no-preconnect", "--bots-per-endpoint", "64"]),
            &demo,
        )
        .expect("valid");
        assert_eq!((tuned.preconnect, tuned.bots_per_endpoint), (false, 64));
        assert!(cfg.login.is_none(), "no key, no tickets");
        assert_eq!(cfg.game.name, "demo");
        let crowd = swarm_config(
            &args(&[
                "--scenario",
                "crowd",
                "--hotspot",
                "-300,12.5",
                "--radius",
                "40",
            ]),
            &demo,
        )
        .expect("valid");
        assert_eq!(
            (crowd.scenario, crowd.hotspot, crowd.hotspot_radius_m),
            (Scenario::Crowd, Some((-300.0, 12.5)), 40.0),
            "a negative coordinate is a value, not a flag"
        );
        let default = swarm_config(&args(&["--scenario", "migrate"]), &demo).expect("valid");
        assert_eq!(
            (default.hotspot, default.hotspot_radius_m),
            (None, HOTSPOT_RADIUS_DEFAULT_M),
            "the world's centre (learnt at login) and the default radius"
        );
        assert!(
            Cmd::try_parse_from(["bots", "--hotspot", "12"]).is_err(),
            "a point needs both coordinates"
        );
        for (flags, says) in [
            (&["--bots", "0"][..], "--bots"),
            (&["--input-hz", "0"][..], "--input-hz"),
            (&["--threads", "0"][..], "--threads"),
            (&["--bots-per-endpoint", "0"][..], "--bots-per-endpoint"),
            (&["--bots-per-endpoint", "1025"][..], "--bots-per-endpoint"),
            (
                &["--login-key", "/nonexistent/login.key"][..],
                "--login-key",
            ),
            (&["--scenario", "crowd", "--radius", "0"][..], "--radius"),
            (&["--scenario", "migrate", "--radius", "-3"][..], "--radius"),
            (
                &["--scenario", "wander", "--hotspot", "1,2"][..],
                "--hotspot",
            ),
        ] {
            let e = swarm_config(&args(flags), &demo).expect_err("refused");
            assert!(format!("{e:#}").contains(says), "{flags:?}: {e:#}");
        }
    }

    #[test]
    fn a_login_refused_for_want_of_room_fails_the_run_with_the_servers_words() {
        let summary = crate::report::RunSummary {
            bots_requested: 6,
            ..Default::default()
        };
        let mut r = Report::build(&summary, &[]);
        r.connect_failures = 5;
        assert!(refused_for_room(&r).is_ok(), "no refusal, no failure");
        r.errors.insert("login: closed by shard: no_room".into(), 2);
        let detail = "login_refused: shard closed the session: no_room: no shard of this world \
                      takes players now";
        r.errors.insert(detail.into(), 3);
        r.errors.insert("connect_timeout".into(), 1);
        let e = refused_for_room(&r).expect_err("refused");
        assert_eq!(
            e.to_string(),
            format!("the cluster has no room: 5 of 6 bots did not get to play ({detail})")
        );
    }

    #[test]
    fn run_refuses_to_nest_in_a_runtime_instead_of_panicking() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let e = rt
            .block_on(async { run(args(&[]), &[BotGame::demo()]) })
            .expect_err("inside a runtime");
        assert!(e.to_string().contains("outside"), "{e}");
    }
}
