#!/usr/bin/env bash
# End-to-end check: start `zonescaler up`, run BOTS bots for DURATION, assert from the JSON report
# that every bot connected and snapshots flowed, then stop the cluster with Ctrl-C (SIGINT) and
# check that no shard process is left behind.
# Usage: [SHARDS=N] [GAME=arena] bash .ci/e2e.sh [BOTS] [DURATION] [extra bots args...]
# The bots are the game binary's own (`zonescaler bots`, `zonescaler-arena bots`), logging in with
# tickets they mint from the cluster's login key. With SHARDS > 1 it also checks the master's
# GET /api/cluster and GET /api/players/NAME (401 without the operator's token) during the run,
# and that bots were handed off (use `--scenario border`) without errors.
set -euo pipefail
cd "$(dirname "$0")/.."
bots=${1:-100}
duration=${2:-10s}
shift 2 || true
run_dir=$(mktemp -d)
report="$run_dir/report.json"
port=$(( 20000 + RANDOM % 20000 ))
shards=${SHARDS:-1}
link_port=$(( port + 100 ))
http="127.0.0.1:$(( port + 200 ))"

game=${GAME:-}
if [ -n "$game" ]; then
  exe="./target/release/zonescaler-$game"; package="zonescaler-$game"; world="assets/worlds/$game.toml"
else
  exe="./target/release/zonescaler"; package="zonescaler-server"; world="assets/worlds/default.toml"
fi
cargo build -q --release -p "$package"
"$exe" up --shards "$shards" --port "$port" --link-port "$link_port" --http "$http" \
  --world "$world" --run-dir "$run_dir" >"$run_dir/up.log" 2>&1 &
up_pid=$!
cleanup() { kill -INT "$up_pid" 2>/dev/null || true; }
trap cleanup EXIT
last_cert="$run_dir/shard-$(( shards - 1 )).pem"
for _ in $(seq 1 600); do
  [ -f "$run_dir/shard-0.pem" ] && [ -f "$last_cert" ] && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$run_dir/up.log"; echo "e2e: zonescaler up died"; exit 1; }
  sleep 0.1
done
[ -f "$last_cert" ] || { cat "$run_dir/up.log"; echo "e2e: shards did not start"; exit 1; }

"$exe" bots --connect "127.0.0.1:$port" --cert "$run_dir/cluster.pem" \
  --login-key "$run_dir/login.key" --bots "$bots" --duration "$duration" \
  --report-json "$report" --report-html "$run_dir/report.html" --quiet "$@" &
bots_pid=$!
if [ "$shards" -gt 1 ]; then
  # Sample the master's view while the bots play: the world's entities stay put (NPCs plus the
  # bots logged in), every shard is alive, handoffs happen.
  python3 - "$http" "$shards" "${SAMPLES:-8}" "$run_dir/api.token" <<'PY'
import json, sys, time, urllib.error, urllib.request
http, shards, samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
token = open(sys.argv[4]).read().strip()
def players(name, auth=True):
    req = urllib.request.Request(f"http://{http}/api/players/{name}")
    if auth: req.add_header("Authorization", f"Bearer {token}")
    return json.load(urllib.request.urlopen(req, timeout=5))
seen = []
for _ in range(samples):
    time.sleep(1)
    v = json.load(urllib.request.urlopen(f"http://{http}/api/cluster", timeout=5))
    missing = [k for k in ("epoch", "total_entities", "handoffs_total", "shards") if k not in v]
    assert not missing, f"/api/cluster lacks {missing}"
    assert len(v["shards"]) == shards and all(s["alive"] for s in v["shards"]), v["shards"]
    for s in v["shards"]:
        for k in ("id", "addr", "alive", "weight", "cells", "owned_entities", "proxies", "clients", "tick_ms_p99"):
            assert k in s, f"shard view lacks {k}"
    seen.append((v["total_entities"], sum(s["clients"] for s in v["shards"]), v["handoffs_total"],
                 max(s["handoff_transit_ms_p99"] for s in v["shards"]), max(s["tick_ms_p99"] for s in v["shards"])))
print("e2e: /api/cluster (total_entities, clients, handoffs_total, max handoff_transit_ms_p99, max tick_ms_p99) per second:")
for row in seen: print("  ", row)
# The player directory: the first bots are logged in by now, each on one of the shards.
addrs = {s["id"]: s["addr"] for s in v["shards"]}
found = []
for name in [f"bot-{i}" for i in range(10)]:
    try: p = players(name)
    except urllib.error.HTTPError as e:
        assert e.code == 404, f"/api/players/{name}: HTTP {e.code}"; continue
    assert p["name"] == name and addrs.get(p["shard"]) == p["addr"], f"/api/players/{name}: {p}"
    found.append((name, p["shard"]))
assert found, "/api/players knows none of bot-0..bot-9"
try:
    players("nobody-logged-in")
    raise AssertionError("/api/players/nobody-logged-in answered 200")
except urllib.error.HTTPError as e:
    assert e.code == 404, f"/api/players/nobody-logged-in: HTTP {e.code}"
try:
    players("bot-0", auth=False)
    raise AssertionError("/api/players without the operator's token answered 200")
except urllib.error.HTTPError as e:
    assert e.code == 401, f"/api/players without a token: HTTP {e.code}"
print("e2e: /api/players:", found, "(401 without the token)")
PY
fi
wait "$bots_pid"

python3 - "$report" "$bots" "$shards" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); want = int(sys.argv[2]); shards = int(sys.argv[3])
problems = []
if r["bots_connected"] != want: problems.append(f"connected {r['bots_connected']} of {want}")
if r["snapshots_total"] <= 0: problems.append("no snapshots flowed")
if r["snapshots_per_sec_p50"] < 20: problems.append(f"snapshots_per_sec_p50 {r['snapshots_per_sec_p50']:.1f} < 20")
if r["avatar_missing_total"] != 0: problems.append(f"avatar missing in {r['avatar_missing_total']} snapshots")
if shards > 1:
    if r["handoffs"] <= 0: problems.append("no bot was handed off")
    if r["errors"]: problems.append(f"errors {r['errors']}")
    print(f"e2e: {r['handoffs']} handoffs, gap p50 {r['handoff_gap_ms_p50']:.1f} ms, p99 {r['handoff_gap_ms_p99']:.1f} ms, max {r['handoff_gap_ms_max']:.1f} ms")
print(f"e2e: {r['bots_connected']}/{want} connected, {r['snapshots_per_sec_p50']:.1f} snapshots/s p50, "
      f"rtt p99 {r['rtt_ms_p99']:.1f} ms, {r['bytes_per_entity_update_mean']:.2f} B/entity update")
if problems:
    print("e2e FAILED: " + "; ".join(problems)); sys.exit(1)
PY

kill -INT "$up_pid"
for _ in $(seq 1 100); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$up_pid" 2>/dev/null; then echo "e2e: zonescaler up did not stop on Ctrl-C"; exit 1; fi
trap - EXIT
# Every shard child has the run dir's certificate path on its command line.
if pgrep -f "$run_dir/shard-" >/dev/null; then
  echo "e2e: a shard process outlived zonescaler up"; exit 1
fi
tail -n 3 "$run_dir/up.log"
[ -s "$run_dir/report.html" ] || { echo "e2e: the bots wrote no HTML report"; exit 1; }
echo "e2e: cluster stopped cleanly, no orphans"
# The run directory holds the cluster's private keys and secret-derived token.
rm -rf "$run_dir"
