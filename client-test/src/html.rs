//! The HTML report: one page an operator opens after a load test, or attaches to a ticket.
//!
//! The page is self-contained on purpose: inline CSS and SVG drawn here, no JavaScript, no
//! fonts or scripts from the network. It opens from a CI artifact, an air-gapped test lab or an
//! e-mail the same way, and it still opens in ten years. Everything it shows comes from the
//! [`Report`] (the JSON report holds the same numbers), so the page is a pure function of it.
//!
//! Text from outside this module (the game's name, error kinds, which can quote a shard's close
//! reason) is escaped before it goes into the page.

use crate::report::{Distribution, Report, nice_step};
use crate::timeline::TimelinePoint;
use std::fmt::Write;

/// Chart size in SVG user units (pixels at 100% zoom): two histograms side by side fit the
/// page's width, and the timeline spans both.
const CHART_W: f64 = 600.0;
const HIST_H: f64 = 260.0;
/// Margins of a chart's plot area: room for tick labels and axis labels.
const MARGIN_L: f64 = 72.0;
const MARGIN_R: f64 = 16.0;
const MARGIN_T: f64 = 16.0;
const MARGIN_B: f64 = 52.0;
/// Height of one panel of the timeline and the gap between panels.
const PANEL_H: f64 = 86.0;
const PANEL_GAP: f64 = 22.0;
/// Tick labels an axis aims for.
const TICKS_AIM: f64 = 6.0;

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; color: #1d2530; margin: 24px auto; max-width: 1360px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #5b6675; margin: 0 0 16px; }
table { border-collapse: collapse; } td, th { padding: 3px 14px 3px 0; text-align: left; vertical-align: top; }
th { font-weight: 600; color: #3a4452; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; border: 1px solid #dde2e8; border-radius: 6px; padding: 8px; background: #fff; }
figcaption { font-weight: 600; margin: 0 0 4px; }
svg text { font: 11px system-ui, sans-serif; fill: #3a4452; }
svg .axis { stroke: #3a4452; stroke-width: 1; } svg .gridline { stroke: #e4e8ee; stroke-width: 1; }
svg .bar { fill: #3f7fbf; } svg .bar.tail { fill: #c0504d; } svg text.bad { fill: #c0504d; }
svg .line { fill: none; stroke: #3f7fbf; stroke-width: 1.5; } svg .dot { fill: #3f7fbf; }
svg .label { font-weight: 600; }
.errors td:first-child { font-family: ui-monospace, monospace; }
.ok { color: #2e7d32; } .bad { color: #c0504d; }
";

/// The whole page for `r`.
pub fn render(r: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let title = format!(
        "ZoneScaler load test: {} bots, {} / {}",
        r.bots_requested, r.game, r.scenario
    );
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n\
         <p class=\"sub\">game <b>{}</b>, scenario <b>{}</b>, {} s of play after the ramp</p>\n",
        esc(&title),
        esc(&title),
        esc(&r.game),
        esc(&r.scenario),
        num(r.duration_s, 1),
    );
    summary(&mut out, r);
    out.push_str("<h2>Distributions</h2>\n<div class=\"grid\">\n");
    out.push_str(&histogram(
        "Input round trip",
        &r.histograms.rtt_ms,
        "input round trip (ms)",
        "inputs",
    ));
    out.push_str(&histogram(
        "Snapshot rate per bot",
        &r.histograms.snapshots_per_sec,
        "complete snapshots per second (per bot)",
        "bots",
    ));
    out.push_str(&histogram(
        "Handoff gap",
        &r.histograms.handoff_gap_ms,
        "redirect to first snapshot from the new shard (ms)",
        "handoffs",
    ));
    out.push_str(&histogram(
        "Failover gap",
        &r.histograms.failover_gap_ms,
        "lost shard last heard to first snapshot again (ms)",
        "comebacks",
    ));
    out.push_str("</div>\n<h2>Timeline</h2>\n<div class=\"grid\">\n");
    out.push_str(&timeline(&r.timeline));
    out.push_str("</div>\n</body>\n</html>\n");
    out
}

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `v` with `decimals` decimals; integers-as-floats keep none.
fn num(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.decimals$}")
    }
}

/// A tick label for `v` on an axis stepping by `step`: as many decimals as the step needs.
fn tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()).clamp(0.0, 6.0) as usize
    };
    format!("{v:.decimals$}")
}

fn summary(out: &mut String, r: &Report) {
    let rows: [(&str, String); 18] = [
        (
            "bots",
            format!(
                "{} connected of {} requested ({} failed)",
                r.bots_connected, r.bots_requested, r.connect_failures
            ),
        ),
        (
            "snapshots / s per bot",
            format!(
                "p50 {}, min {}",
                num(r.snapshots_per_sec_p50, 1),
                num(r.snapshots_per_sec_min, 1)
            ),
        ),
        (
            "input round trip",
            format!(
                "p50 {} ms, p99 {} ms, max {} ms ({} inputs)",
                num(r.rtt_ms_p50, 1),
                num(r.rtt_ms_p99, 1),
                num(r.rtt_ms_max, 1),
                r.rtt_samples
            ),
        ),
        ("handoffs", r.handoffs.to_string()),
        (
            "of them chained (redirected again)",
            r.handoffs_chained.to_string(),
        ),
        (
            "of them over a connection opened ahead (on a Prepare)",
            format!(
                "{} ({} Prepares received)",
                r.handoffs_preconnected, r.redirects_prepared
            ),
        ),
        (
            "bots' runtime lag (a 10 ms timer, late)",
            format!(
                "p99 {} ms, max {} ms",
                num(r.runtime_lag_ms_p99, 1),
                num(r.runtime_lag_ms_max, 1)
            ),
        ),
        (
            "handoff gap",
            format!(
                "p50 {} ms, p99 {} ms, max {} ms",
                num(r.handoff_gap_ms_p50, 1),
                num(r.handoff_gap_ms_p99, 1),
                num(r.handoff_gap_ms_max, 1)
            ),
        ),
        (
            "failovers (shard lost)",
            format!(
                "{} ({} resumed, {} resumes failed, {} logged in anew)",
                r.failovers, r.resumes, r.resumes_failed, r.relogins
            ),
        ),
        (
            "failover gap",
            format!(
                "p50 {} ms, p99 {} ms, max {} ms",
                num(r.failover_gap_ms_p50, 1),
                num(r.failover_gap_ms_p99, 1),
                num(r.failover_gap_ms_max, 1)
            ),
        ),
        (
            "playing",
            format!(
                "{}% of each bot's run (mean), min {}%",
                num(r.playing_fraction_mean * 100.0, 1),
                num(r.playing_fraction_min * 100.0, 1)
            ),
        ),
        (
            "bytes down",
            format!(
                "{} B/s per bot (mean), {} B of snapshots in all",
                num(r.bytes_down_per_sec_mean, 0),
                r.snapshot_bytes_total
            ),
        ),
        (
            "bytes per entity update",
            format!(
                "{} B ({} updates)",
                num(r.bytes_per_entity_update_mean, 2),
                r.entity_updates_total
            ),
        ),
        ("snapshots", r.snapshots_total.to_string()),
        ("inputs sent", r.inputs_sent_total.to_string()),
        (
            "avatar missing",
            format!("{} snapshots", r.avatar_missing_total),
        ),
        (
            "game traffic",
            format!(
                "{} commands and {} chat lines sent, {} messages received",
                r.commands_sent_total, r.says_sent_total, r.messages_received_total
            ),
        ),
        (
            "errors",
            format!("{} in all", r.errors.values().sum::<u64>()),
        ),
    ];
    out.push_str("<h2>Summary</h2>\n<table>\n");
    for (k, v) in rows {
        let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    out.push_str("</table>\n<h2>Errors by kind</h2>\n");
    if r.errors.is_empty() {
        out.push_str("<p class=\"ok\">none</p>\n");
        return;
    }
    out.push_str("<table class=\"errors\">\n<tr><th>kind</th><th>count</th></tr>\n");
    for (k, v) in &r.errors {
        let _ = writeln!(
            out,
            "<tr><td class=\"bad\">{}</td><td class=\"n\">{v}</td></tr>",
            esc(k)
        );
    }
    out.push_str("</table>\n");
}

/// The y axis of a count chart with about `ticks` steps: its top and step, whole round numbers,
/// the top at or above `max`.
fn count_axis(max: f64, ticks: f64) -> (f64, f64) {
    let step = nice_step(max.max(1.0) / ticks).max(1.0);
    ((max / step).ceil().max(1.0) * step, step)
}

/// A bar chart of `d`: one bar per bin, and a red one for the samples past the last bin.
fn histogram(caption: &str, d: &Distribution, x_label: &str, y_label: &str) -> String {
    let (w, h) = (CHART_W, HIST_H);
    let (pw, ph) = (w - MARGIN_L - MARGIN_R, h - MARGIN_T - MARGIN_B);
    let (x0, y0) = (MARGIN_L, MARGIN_T + ph);
    let mut s = String::new();
    let _ = write!(
        s,
        "<figure>\n<figcaption>{}</figcaption>\n<svg width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">\n",
        esc(caption),
        esc(&format!("histogram of {x_label}")),
    );
    axis_labels(&mut s, x_label, y_label, MARGIN_T, ph, h);
    let bars = d.counts.len() + usize::from(d.above > 0);
    if bars == 0 {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no samples</text>",
            x0 + pw / 2.0,
            MARGIN_T + ph / 2.0
        );
        axes(&mut s, x0, y0, pw, ph);
        s.push_str("</svg>\n</figure>\n");
        return s;
    }
    let max = d.counts.iter().copied().chain([d.above]).max().unwrap_or(0) as f64;
    let (top, step) = count_axis(max, TICKS_AIM);
    y_ticks(&mut s, x0, y0, pw, ph, top, step);
    let bw = pw / bars as f64;
    let y = |c: u64| y0 - ph * c as f64 / top;
    for (i, c) in d.counts.iter().enumerate() {
        let (lo, hi) = (i as f64 * d.bin_width, (i + 1) as f64 * d.bin_width);
        let _ = writeln!(
            s,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\">\
             <title>{} to {}: {c}</title></rect>",
            x0 + bw * i as f64 + 0.5,
            y(*c),
            (bw - 1.0).max(0.5),
            y0 - y(*c),
            tick(lo, d.bin_width),
            tick(hi, d.bin_width),
        );
    }
    let edge_every = (d.counts.len() as f64 / TICKS_AIM).ceil().max(1.0) as usize;
    for i in (0..=d.counts.len()).step_by(edge_every) {
        let x = x0 + bw * i as f64;
        let _ = writeln!(
            s,
            "<line class=\"axis\" x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{}\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            y0 + 4.0,
            y0 + 16.0,
            tick(i as f64 * d.bin_width, d.bin_width),
        );
    }
    if d.above > 0 {
        let x = x0 + bw * d.counts.len() as f64;
        let past = tick(d.counts.len() as f64 * d.bin_width, d.bin_width);
        let _ = writeln!(
            s,
            "<rect class=\"bar tail\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\">\
             <title>above {past} (max {}): {}</title></rect>\
             <text class=\"bad\" x=\"{}\" y=\"{}\" text-anchor=\"end\">\
             {} above {past}, max {}</text>",
            x + 0.5,
            y(d.above),
            (bw - 1.0).max(0.5),
            y0 - y(d.above),
            num(d.max, 1),
            d.above,
            x0 + pw,
            y0 + 30.0,
            d.above,
            num(d.max, 1),
        );
    }
    axes(&mut s, x0, y0, pw, ph);
    s.push_str("</svg>\n</figure>\n");
    s
}

/// The x axis label under the plot and the y axis label turned along the axis.
fn axis_labels(s: &mut String, x_label: &str, y_label: &str, top: f64, ph: f64, h: f64) {
    let _ = writeln!(
        s,
        "<text class=\"label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        MARGIN_L + (CHART_W - MARGIN_L - MARGIN_R) / 2.0,
        h - 8.0,
        esc(x_label)
    );
    let (lx, ly) = (14.0, top + ph / 2.0);
    let _ = writeln!(
        s,
        "<text class=\"label\" x=\"{lx}\" y=\"{ly}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 {lx} {ly})\">{}</text>",
        esc(y_label)
    );
}

fn axes(s: &mut String, x0: f64, y0: f64, pw: f64, ph: f64) {
    let _ = writeln!(
        s,
        "<line class=\"axis\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{}\" y2=\"{y0}\"/>\
         <line class=\"axis\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{}\"/>",
        x0 + pw,
        y0 - ph
    );
}

/// Grid lines and labels of a y axis from 0 to `top` by `step`.
fn y_ticks(s: &mut String, x0: f64, y0: f64, pw: f64, ph: f64, top: f64, step: f64) {
    let n = (top / step).round() as usize;
    for i in 0..=n {
        let v = i as f64 * step;
        let y = y0 - ph * v / top;
        let _ = writeln!(
            s,
            "<line class=\"gridline\" x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 + pw,
            x0 - 6.0,
            y + 4.0,
            tick(v, step)
        );
    }
}

/// The timeline: one panel per series, sharing the time axis, so a series of thousands
/// (snapshots) does not flatten one of a few (errors).
fn timeline(points: &[TimelinePoint]) -> String {
    type Series = (&'static str, fn(&TimelinePoint) -> u32);
    let series: [Series; 6] = [
        ("bots connected", |p| p.connected),
        ("handoffs / s", |p| p.handoffs),
        ("slowest handoff (ms)", |p| p.gap_ms_max),
        ("errors / s", |p| p.errors),
        ("snapshots / s", |p| p.snapshots),
        ("bots' runtime lag (ms)", |p| p.lag_ms_max),
    ];
    // As wide as two histograms side by side, figure borders and the gap between them included.
    let w = CHART_W * 2.0 + 34.0;
    let pw = w - MARGIN_L - MARGIN_R;
    let h = MARGIN_T + series.len() as f64 * (PANEL_H + PANEL_GAP) + MARGIN_B - PANEL_GAP;
    let mut s = String::new();
    let _ = write!(
        s,
        "<figure>\n<figcaption>Per second since the swarm started</figcaption>\n\
         <svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"timeline of bots connected, handoffs, the slowest handoff, errors, snapshots and the bots' runtime lag per second\">\n"
    );
    let _ = writeln!(
        s,
        "<text class=\"label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">time since start (s)</text>",
        MARGIN_L + pw / 2.0,
        h - 8.0
    );
    let last = points.last().map_or(0, |p| p.t_s);
    let span = f64::from(last.max(1));
    let x = |t: u32| MARGIN_L + pw * f64::from(t) / span;
    for (k, (name, get)) in series.iter().enumerate() {
        let top_y = MARGIN_T + k as f64 * (PANEL_H + PANEL_GAP);
        let y0 = top_y + PANEL_H;
        let (lx, ly) = (14.0, top_y + PANEL_H / 2.0);
        let _ = writeln!(
            s,
            "<text class=\"label\" x=\"{lx}\" y=\"{ly}\" text-anchor=\"middle\" \
             transform=\"rotate(-90 {lx} {ly})\">{}</text>",
            esc(name)
        );
        let max = points.iter().map(get).max().unwrap_or(0);
        // Two steps per panel keep a small panel legible.
        let (top, step) = count_axis(f64::from(max), 2.0);
        y_ticks(&mut s, MARGIN_L, y0, pw, PANEL_H, top, step);
        let y = |v: u32| y0 - PANEL_H * f64::from(v) / top;
        if points.len() == 1 {
            let p = &points[0];
            let _ = writeln!(
                s,
                "<circle class=\"dot\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"/>",
                x(p.t_s),
                y(get(p))
            );
        } else if !points.is_empty() {
            s.push_str("<polyline class=\"line\" points=\"");
            for p in points {
                let _ = write!(s, "{:.1},{:.1} ", x(p.t_s), y(get(p)));
            }
            s.push_str("\"/>\n");
        }
        axes(&mut s, MARGIN_L, y0, pw, PANEL_H);
    }
    let y0 = MARGIN_T + series.len() as f64 * (PANEL_H + PANEL_GAP) - PANEL_GAP;
    let step = nice_step(span / (2.0 * TICKS_AIM)).max(1.0);
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let xx = MARGIN_L + pw * t / span;
        let _ = writeln!(
            s,
            "<line class=\"axis\" x1=\"{xx:.1}\" y1=\"{y0}\" x2=\"{xx:.1}\" y2=\"{}\"/>\
             <text x=\"{xx:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            y0 + 4.0,
            y0 + 16.0,
            tick(t, step)
        );
        t += step;
    }
    if points.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no events recorded</text>",
            MARGIN_L + pw / 2.0,
            MARGIN_T + PANEL_H / 2.0
        );
    }
    s.push_str("</svg>\n</figure>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::BotMetrics;
    use crate::report::{BotOutcome, RunSummary};

    /// Three bots over four seconds: one handed off twice, one failed with a close reason that
    /// looks like markup.
    fn synthetic() -> Report {
        let s = 1_000_000;
        let mut outcomes = Vec::new();
        for b in 0..3u64 {
            let mut m = BotMetrics {
                rtt_us: (1..=50).map(|i| i * 1_000 + b as u32 * 500).collect(),
                snapshots: 100 + b * 10,
                ..Default::default()
            };
            for t in 0..4 {
                m.timeline.connected(t * s);
                m.timeline.snapshot(t * s + 1);
            }
            if b == 0 {
                m.handoffs = 2;
                m.handoff_gap_us = vec![12_000, 30_000];
                m.timeline.handoff(2 * s, 40_000);
                m.timeline.handoff(3 * s, 700_000);
                m.failovers = 1;
                m.resumes = 1;
                m.failover_gap_us = vec![850_000];
            }
            if b == 2 {
                m.error_at(s, "login: closed by shard: <b>bad_ticket</b> & \"more\"");
            }
            outcomes.push(BotOutcome {
                metrics: m,
                active_s: 4.0,
                connected: b != 2,
            });
        }
        Report::build(
            &RunSummary {
                game: "demo<script>".into(),
                scenario: "border".into(),
                duration_s: 4.0,
                bots_requested: 3,
                ..Default::default()
            },
            &outcomes,
        )
    }

    #[test]
    fn the_page_is_self_contained_with_one_svg_per_chart_and_the_numbers() {
        let r = synthetic();
        let page = render(&r);
        for banned in ["http://", "https://", "<script", "src=", "@import", "url("] {
            assert!(
                !page.contains(banned),
                "the page loads nothing and runs nothing: found `{banned}`"
            );
        }
        assert_eq!(
            page.matches("<svg").count(),
            5,
            "four histograms and the timeline, each one SVG"
        );
        assert_eq!(page.matches("</svg>").count(), 5);
        for axis in [
            "input round trip (ms)",
            "complete snapshots per second (per bot)",
            "redirect to first snapshot from the new shard (ms)",
            "lost shard last heard to first snapshot again (ms)",
            "time since start (s)",
            "bots connected",
            "handoffs / s",
            "slowest handoff (ms)",
            "errors / s",
            "snapshots / s",
            "bots&#39; runtime lag (ms)",
        ] {
            assert!(page.contains(axis), "axis label `{axis}`");
        }
        for number in [
            format!("p50 {} ms", num(r.rtt_ms_p50, 1)),
            format!("p99 {} ms", num(r.rtt_ms_p99, 1)),
            format!("max {} ms", num(r.handoff_gap_ms_max, 1)),
            "2 connected of 3 requested (1 failed)".to_string(),
        ] {
            assert!(page.contains(&number), "the summary shows `{number}`");
        }
        assert!(page.contains("<th>handoffs</th><td>2</td>"));
        assert!(
            page.contains("<td>1 (1 resumed, 0 resumes failed, 0 logged in anew)</td>"),
            "the failovers and how the bots came back"
        );
        assert!(page.contains(&format!("max {} ms", num(r.failover_gap_ms_max, 1))));
        assert!((r.failover_gap_ms_max - 850.0).abs() < 1.0, "{r:?}");
        assert!(
            page.contains("&lt;b&gt;bad_ticket&lt;/b&gt; &amp; &quot;more&quot;"),
            "error kinds are escaped"
        );
        assert!(
            page.contains("demo&lt;script&gt;"),
            "the game name is escaped"
        );
        assert!(
            page.contains("<polyline"),
            "four seconds of timeline are a line"
        );
    }

    #[test]
    fn an_empty_run_still_renders_every_chart() {
        let r = Report::build(
            &RunSummary {
                game: "demo".into(),
                scenario: "idle".into(),
                bots_requested: 1,
                ..Default::default()
            },
            &[],
        );
        let page = render(&r);
        assert_eq!(page.matches("<svg").count(), 5);
        assert!(page.contains("no samples") && page.contains("no events recorded"));
        assert!(
            !page.contains("NaN") && !page.contains("\"inf") && !page.contains(">inf"),
            "{page}"
        );
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(esc("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
        assert_eq!(tick(0.25, 0.05), "0.25");
        assert_eq!(tick(20.0, 5.0), "20");
    }
}
