#!/usr/bin/env bash
# End-to-end check: start `zonescaler up`, run BOTS bots for DURATION, assert from the JSON report
# that every bot connected and snapshots flowed, then stop the cluster with Ctrl-C (SIGINT) and
# check that no shard process is left behind.
# Usage: bash .ci/e2e.sh [BOTS] [DURATION] [extra zonescaler-bots args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bots=${1:-100}
duration=${2:-10s}
shift 2 || true
run_dir=$(mktemp -d)
report="$run_dir/report.json"
port=$(( 20000 + RANDOM % 20000 ))

cargo build -q --release -p zonescaler-server -p zonescaler-bots
./target/release/zonescaler up --shards 1 --port "$port" --run-dir "$run_dir" >"$run_dir/up.log" 2>&1 &
up_pid=$!
cleanup() { kill -INT "$up_pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 300); do
  [ -f "$run_dir/shard-0.pem" ] && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$run_dir/up.log"; echo "e2e: zonescaler up died"; exit 1; }
  sleep 0.1
done
[ -f "$run_dir/shard-0.pem" ] || { cat "$run_dir/up.log"; echo "e2e: shard did not start"; exit 1; }

./target/release/zonescaler-bots --connect "127.0.0.1:$port" --cert "$run_dir/shard-0.pem" \
  --bots "$bots" --duration "$duration" --report-json "$report" --quiet "$@"

python3 - "$report" "$bots" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); want = int(sys.argv[2])
problems = []
if r["bots_connected"] != want: problems.append(f"connected {r['bots_connected']} of {want}")
if r["snapshots_total"] <= 0: problems.append("no snapshots flowed")
if r["snapshots_per_sec_p50"] < 20: problems.append(f"snapshots_per_sec_p50 {r['snapshots_per_sec_p50']:.1f} < 20")
if r["avatar_missing_total"] != 0: problems.append(f"avatar missing in {r['avatar_missing_total']} snapshots")
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
if pgrep -f "$run_dir/shard-0.pem" >/dev/null; then
  echo "e2e: a shard process outlived zonescaler up"; exit 1
fi
tail -n 3 "$run_dir/up.log"
echo "e2e: cluster stopped cleanly, no orphans"
