//! The live map in a real browser against a real cluster: `zonescaler up --shards 4`, the
//! dashboard in headless Chromium, then 20 bots walking across borders; the page must show the
//! cluster, follow the bots within a few seconds, and select what the operator clicks.
//!
//! One test function, because each start of Chromium and of a cluster costs seconds on the two
//! busy cores CI has. It needs Debian's `chromium` and `chromium-driver`, so it is ignored by
//! `cargo test`; `.ci/run` installs them and runs it with `--ignored`, where a missing browser is
//! a failure, not a skip.
#![cfg(target_os = "linux")]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::LocalCluster;
use support::webdriver::Browser;

const SHARDS: usize = 4;
/// Base cells of the default world: 2048 m square, 256 m cells.
const DEFAULT_WORLD_CELLS: usize = 64;
/// How far the page may lag the API. It polls every second; this allows a few slow polls (and a
/// slow redraw) on a loaded machine without letting a page that stopped updating pass.
const PAGE_LAG: Duration = Duration::from_secs(10);
/// The first page load, and bots logging in on a loaded machine.
const SLOW: Duration = Duration::from_secs(90);
const BOTS: usize = 20;

#[test]
#[ignore = "needs Debian's chromium and chromium-driver; .ci/run installs them and runs it with --ignored"]
fn the_dashboard_shows_a_live_cluster_and_follows_its_bots() {
    let start = Instant::now();
    let phase = |what: &str| {
        eprintln!(
            "dashboard test: {what} (+{:.1} s)",
            start.elapsed().as_secs_f64()
        )
    };
    // The browser first: without Chromium the test fails here, in a second, saying what to install.
    let browser = Browser::launch().expect("headless Chromium starts");
    phase("browser started");
    let cluster = LocalCluster::up(SHARDS);
    phase("cluster up");
    let view = cluster.api_cluster();
    let cells = cells_of(&view);
    assert_eq!(
        cells.len(),
        DEFAULT_WORLD_CELLS,
        "the default world has 8 × 8 base cells: {view}"
    );

    browser
        .goto(&cluster.dashboard_url())
        .expect("the dashboard loads");
    shows_the_cluster_at_rest(&browser, &cells);
    phase("the page shows 4 shards, 64 cells, epoch 1");

    let mut bots = cluster.bots(BOTS, "20s", "border");
    follows_the_bots(&browser, &cluster, &cells, &mut bots);
    phase("the page follows the bots");

    selects_a_cell_and_a_shard(&browser, &cluster, &mut bots);
    phase("cell and shard selected");

    // Nothing the page logged counts as an error: it reads every field defensively and the
    // master serves all it asks for (the favicon is a data: URL).
    let errors: Vec<Value> = browser
        .console()
        .expect("the browser's console log")
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(
        errors.is_empty(),
        "the page logged errors against a live cluster: {errors:#?}"
    );
    phase("no console errors");
}

/// 4 shard rows, all alive, every cell drawn in its owner's colour, epoch 1, no clients yet.
fn shows_the_cluster_at_rest(browser: &Browser, cells: &[(String, u64)]) {
    let is = |want: String| move |v: &str| v == want;
    browser
        .wait_dataset("state", SLOW, is("ok".into()))
        .expect("the page reads /api/cluster");
    browser
        .wait_dataset("shards", PAGE_LAG, is(SHARDS.to_string()))
        .expect("the page counts every shard");
    browser
        .wait_dataset("alive", PAGE_LAG, is(SHARDS.to_string()))
        .expect("the page shows every shard alive");
    browser
        .wait_dataset("cells", PAGE_LAG, is(cells.len().to_string()))
        .expect("the page has every cell of /api/cluster");
    browser
        .wait_dataset("epoch", PAGE_LAG, is("1".into()))
        .expect("a freshly placed cluster is at epoch 1");
    browser
        .wait_dataset("clients", PAGE_LAG, is("0".into()))
        .expect("no clients before the bots");

    let rows = browser
        .eval(
            "return [...document.querySelectorAll('#shard-rows tr')].map(tr => \
             [tr.dataset.shard ?? null, tr.querySelector('.badge')?.textContent ?? null]);",
        )
        .expect("the shard rows");
    let want: Vec<Value> = (0..SHARDS)
        .map(|i| json!([i.to_string(), "alive"]))
        .collect();
    assert_eq!(
        rows,
        Value::Array(want),
        "one row per shard, in order, each alive"
    );

    browser
        .click("#overlay button[data-mode='owners']")
        .expect("the Owners toggle");
    browser
        .wait_dataset("overlay", PAGE_LAG, is("owners".into()))
        .expect("the overlay switches to owners");
    browser
        .wait_until(
            "every cell drawn in its owner's colour",
            &with_cells(cells, CELL_COLOURS_JS),
            PAGE_LAG,
            |v| v["drawn"] == cells.len() && v["wrong"] == json!([]),
        )
        .expect("the map draws every cell of /api/cluster in its owner's colour");
}

/// Bots log in: the totals show clients within [`PAGE_LAG`] of the API, the player-density
/// overlay draws the cells they are in denser than empty ones, and the legend's top is positive.
fn follows_the_bots(
    browser: &Browser,
    cluster: &LocalCluster,
    cells: &[(String, u64)],
    bots: &mut support::cluster::Bots,
) {
    let api = cluster
        .wait_api(|v| clients(v) > 0)
        .unwrap_or_else(|e| panic!("no bot logged in: {e}\nbots: {}", bots.log_tail()));
    let seen = Instant::now();
    let shown = browser
        .wait_dataset("clients", PAGE_LAG, |c| {
            c.parse::<u64>().is_ok_and(|n| n > 0)
        })
        .unwrap_or_else(|e| {
            panic!(
                "the API counts {} clients but the page does not show them: {e}",
                clients(&api)
            )
        });
    eprintln!(
        "dashboard test: page shows {shown} clients {:.1} s after the API had {}",
        seen.elapsed().as_secs_f64(),
        clients(&api)
    );

    // The owners overlay draws every cell of a shard alike: the density check finds nothing
    // there, so what it finds below is the player density.
    let script = with_cells(cells, CLIENT_DENSITY_JS);
    let owners = browser
        .eval(&script)
        .expect("the map read in the owners overlay");
    assert!(
        owners["denser"] == json!([]) && owners["legendMax"].is_null(),
        "the owners overlay draws no density: {owners}"
    );
    browser
        .click("#overlay button[data-mode='clients']")
        .expect("the Player density toggle");
    browser
        .wait_dataset("overlay", PAGE_LAG, |v| v == "clients")
        .expect("the overlay switches to player density");
    let density = browser
        .wait_until(
            "cells with players drawn denser than empty ones, and a positive legend",
            &script,
            PAGE_LAG,
            |v| {
                v["legendMax"].as_f64().is_some_and(|m| m > 0.0)
                    && v["denser"].as_array().is_some_and(|d| !d.is_empty())
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "per-cell player density does not show: {e}\n/api/cluster cells with players: {:?}",
                busy_cells(&cluster.api_cluster())
            )
        });
    eprintln!(
        "dashboard test: player density drawn in cells {}, legend up to {} players/km²",
        density["denser"], density["legendMax"]
    );
    assert!(bots.running(), "the bots still play: {}", bots.log_tail());
}

/// Clicking the busiest cell selects it and its details show its owner and players; clicking a
/// shard row selects the shard and its details.
fn selects_a_cell_and_a_shard(
    browser: &Browser,
    cluster: &LocalCluster,
    bots: &mut support::cluster::Bots,
) {
    let details = "const d = document.getElementById('details'); \
        const kv = {}; d.querySelectorAll('dt').forEach(dt => kv[dt.textContent] = dt.nextElementSibling?.textContent ?? null); \
        return { title: document.getElementById('details-title').textContent, \
                 heading: d.querySelector('h3')?.textContent ?? null, kv, \
                 selected: document.body.dataset.selected, kind: document.body.dataset.selectedKind, \
                 rows: [...document.querySelectorAll('#shard-rows tr.selected')].map(tr => tr.dataset.shard) };";

    // A border bot paces between two cells, so the busiest cell now may be empty a second
    // later: try the busiest cell of the moment a few times.
    let mut tries = Vec::new();
    let cell_ok = loop {
        let view = cluster.api_cluster();
        let Some((id, owner, n)) = busy_cells(&view).into_iter().max_by_key(|c| c.2) else {
            tries.push(format!("no cell with players in {view}"));
            if tries.len() >= 3 {
                break None;
            }
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        let centre = browser
            .eval_with(
                "return window.__dashboard.cellCentre(arguments[0]);",
                &[json!(id)],
            )
            .expect("the page knows where the cell is");
        let (x, y) = (
            centre["x"].as_f64().expect("x"),
            centre["y"].as_f64().expect("y"),
        );
        if browser.eval("return document.body.dataset.selected;").ok() == Some(json!(id)) {
            browser.eval("window.__dashboard.clear();").expect("clear");
        }
        browser.click_at(x, y).expect("a click on the map");
        let selected = browser
            .wait_dataset("selected", PAGE_LAG, |s| s == id)
            .unwrap_or_else(|e| panic!("clicking cell {id} at ({x:.0}, {y:.0}) selects it: {e}"));
        let shown = browser.wait_until(
            &format!("cell {selected}'s details with its owner and players"),
            details,
            PAGE_LAG,
            |v| {
                v["kind"] == "cell"
                    && v["title"] == "Cell"
                    && v["heading"] == format!("Cell {id}")
                    && v["kv"]["Owner"] == format!("shard {owner}")
                    && v["rows"] == json!([owner.to_string()])
                    && v["kv"]["Players"]
                        .as_str()
                        .and_then(|c| c.replace(',', "").parse::<u64>().ok())
                        .is_some_and(|c| c > 0)
            },
        );
        match shown {
            Ok(v) => {
                eprintln!(
                    "dashboard test: cell {id} selected, its details say {} players",
                    v["kv"]["Players"]
                );
                break Some(v);
            }
            Err(e) => tries.push(format!("cell {id} (API: {n} players, shard {owner}): {e}")),
        }
        if tries.len() >= 3 || !bots.running() {
            break None;
        }
    };
    assert!(
        cell_ok.is_some(),
        "a clicked cell's details never showed its players: {tries:#?}\nbots: {}",
        bots.log_tail()
    );

    browser
        .click("#shard-rows tr[data-shard='2']")
        .expect("shard 2's row");
    browser
        .wait_until("shard 2's details", details, PAGE_LAG, |v| {
            v["selected"] == "2"
                && v["kind"] == "shard"
                && v["title"] == "Shard"
                && v["heading"]
                    .as_str()
                    .is_some_and(|h| h.starts_with("Shard 2"))
                && v["kv"]["Clients"].is_string()
                && v["kv"]["Cells"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("16 "))
                && v["rows"] == json!(["2"])
        })
        .expect("clicking a shard row selects the shard and shows its details");
}

/// `(id, owner)` of every cell in a `/api/cluster` answer.
fn cells_of(view: &Value) -> Vec<(String, u64)> {
    view["cells"]
        .as_array()
        .unwrap_or_else(|| panic!("/api/cluster has cells: {view}"))
        .iter()
        .map(|c| {
            (
                c["id"].as_str().expect("a cell id").to_owned(),
                c["shard"].as_u64().expect("a cell owner"),
            )
        })
        .collect()
}

/// Client connections of every shard of a `/api/cluster` answer, summed.
fn clients(view: &Value) -> u64 {
    view["shards"]
        .as_array()
        .map_or(0, |s| s.iter().filter_map(|s| s["clients"].as_u64()).sum())
}

/// `(id, owner, players)` of the cells with players in a `/api/cluster` answer (the API calls
/// them `clients`).
fn busy_cells(view: &Value) -> Vec<(String, u64, u64)> {
    view["cells"].as_array().map_or_else(Vec::new, |cells| {
        cells
            .iter()
            .filter_map(|c| {
                let n = c["clients"].as_u64().filter(|n| *n > 0)?;
                Some((c["id"].as_str()?.to_owned(), c["shard"].as_u64()?, n))
            })
            .collect()
    })
}

/// `script` with `cells` bound to `[[id, owner], …]` (`wait_until` re-runs a script as it is).
fn with_cells(cells: &[(String, u64)], script: &str) -> String {
    let list: Vec<Value> = cells.iter().map(|(id, s)| json!([id, s])).collect();
    format!("const cells = {};\n{script}", Value::from(list))
}

/// Reads the canvas at a point inside each cell of `cells` (a fifth of the way in from its
/// top-left corner: clear of borders, outlines and the centred labels) and counts the cells whose
/// colour is nearest, by hue, to the swatch of their owner's row in the shard table.
const CELL_COLOURS_JS: &str = r#"
const canvas = document.getElementById('map');
const g = canvas.getContext('2d');
const cr = canvas.getBoundingClientRect();
const sx = canvas.width / cr.width, sy = canvas.height / cr.height;
const swatch = {};
for (const tr of document.querySelectorAll('#shard-rows tr[data-shard]')) {
  swatch[tr.dataset.shard] = getComputedStyle(tr.querySelector('.sw')).backgroundColor.match(/\d+/g).slice(0, 3).map(Number);
}
const cos = (a, b) => (a[0] * b[0] + a[1] * b[1] + a[2] * b[2]) / (Math.hypot(...a) * Math.hypot(...b) || 1);
const out = { drawn: 0, wrong: [] };
for (const [id, owner] of cells) {
  const b = window.__dashboard.cellBox(id);
  if (!b) { out.wrong.push({ id, owner, why: 'not on the map' }); continue; }
  const p = [...g.getImageData(Math.round((b.x - cr.left + b.w / 5) * sx), Math.round((b.y - cr.top + b.h / 5) * sy), 1, 1).data].slice(0, 3);
  let nearest = null, best = -1;
  for (const [s, c] of Object.entries(swatch)) { const k = cos(p, c); if (k > best) { best = k; nearest = s; } }
  if (nearest === String(owner) && Math.max(...p) > 40) out.drawn += 1;
  else out.wrong.push({ id, owner, pixel: p, nearest });
}
return out;
"#;

/// In the player-density overlay (`data-mode=clients`), the cells drawn denser (brighter) than the emptiest cell of the
/// same owner, and the legend's top value. Needs `cells`: `[[id, owner], …]`.
const CLIENT_DENSITY_JS: &str = r#"
const canvas = document.getElementById('map');
const g = canvas.getContext('2d');
const cr = canvas.getBoundingClientRect();
const sx = canvas.width / cr.width, sy = canvas.height / cr.height;
const lum = {}, minLum = {};
for (const [id, owner] of cells) {
  const b = window.__dashboard.cellBox(id);
  if (!b) continue;
  const p = g.getImageData(Math.round((b.x - cr.left + b.w / 5) * sx), Math.round((b.y - cr.top + b.h / 5) * sy), 1, 1).data;
  lum[id] = [owner, p[0] + p[1] + p[2]];
  minLum[owner] = Math.min(minLum[owner] ?? Infinity, p[0] + p[1] + p[2]);
}
const denser = Object.entries(lum).filter(([, [owner, l]]) => l > minLum[owner] * 1.15 + 10).map(([id]) => id);
const spans = document.querySelectorAll('#legend span');
const legendTop = spans.length ? Number(spans[spans.length - 1].textContent.replace(/,/g, '')) : null;
return { overlay: document.body.dataset.overlay, legendMax: legendTop, denser, sampled: Object.keys(lum).length };
"#;
