#!/usr/bin/env bash
# Admission end to end (issue 8, acceptance 5): two shards with a cap of CAP players each
# (`[cluster] clients_per_shard_max`) and 3 × CAP bots.
#
#   1. CAP "short" bots (they play SHORT and leave) and CAP "long" bots log in: both shards fill
#      to their cap (the logins come through shard 0; once it is full the master sends them to
#      shard 1).
#   2. CAP "late" bots log in while both shards are full: each waits in the login queue, told its
#      place (1..CAP), and is admitted, in order, as the short bots leave.
#   3. A second cluster whose shards take no players (cap 0): a bot is refused at once with
#      `no_room` and exits non-zero with the server's message.
#
# The master's GET /api/cluster is sampled every second (players per shard, login queue) and the
# three bots' JSON reports are checked.
# Usage: [CAP=100] [PROFILE=release|debug] bash .ci/admission.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cap=${CAP:-100}
profile=${PROFILE:-release}
short=${SHORT:-20s}
run_dir=$(mktemp -d)
port=$(( 20000 + RANDOM % 20000 ))
http="127.0.0.1:$(( port + 200 ))"
if [ "$profile" = release ]; then
  cargo build -q --release -p zonescaler-server --bin zonescaler
else
  cargo build -q -p zonescaler-server --bin zonescaler
fi
exe="${CARGO_TARGET_DIR:-target}/$profile/zonescaler"

# The default world with the cap, a roomy queue and few NPCs (the bots are the load here).
world() {
  python3 - "$1" "$2" <<'PY'
import re, sys
cap, out = sys.argv[1], sys.argv[2]
text = open("assets/worlds/default.toml").read()
text = re.sub(r"(?m)^clients_per_shard_max = .*$", f"clients_per_shard_max = {cap}", text)
text = re.sub(r"(?m)^count = .*$", "count = 200", text, count=1)
open(out, "w").write(text)
PY
}

up_pid=
start_cluster() { # DIR PORT CAP
  mkdir -p "$1"
  world "$3" "$1/world.toml"
  "$exe" up --shards 2 --port "$2" --link-port $(( $2 + 100 )) --http "127.0.0.1:$(( $2 + 200 ))" \
    --metrics-port $(( $2 + 300 )) --world "$1/world.toml" --run-dir "$1" >"$1/up.log" 2>&1 &
  up_pid=$!
  for _ in $(seq 1 1200); do
    [ -f "$1/shard-0.pem" ] && [ -f "$1/shard-1.pem" ] && return 0
    kill -0 "$up_pid" 2>/dev/null || { cat "$1/up.log"; echo "admission: zonescaler up died"; exit 1; }
    sleep 0.1
  done
  cat "$1/up.log"; echo "admission: shards did not start"; exit 1
}
stop_cluster() {
  kill -INT "$up_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
}
trap stop_cluster EXIT

bots() { # DIR ACCOUNTS N DURATION [args...]
  local dir=$1 accounts=$2 n=$3 duration=$4; shift 4
  "$exe" bots --connect "127.0.0.1:$port" --cert "$dir/cluster.pem" --login-key "$dir/login.key" \
    --accounts "$accounts" --bots "$n" --duration "$duration" --ramp 2s --quiet \
    --report-json "$dir/$accounts.json" "$@"
}

a="$run_dir/a"
start_cluster "$a" "$port" "$cap"
echo "admission: 2 shards, clients_per_shard_max = $cap ($a)"
bots "$a" short "$cap" "$short" >"$a/short.txt" 2>&1 &
short_pid=$!
bots "$a" long "$cap" 60s >"$a/long.txt" 2>&1 &
long_pid=$!
# Sample the master's view once a second while everything runs.
python3 - "$http" 70 >"$a/samples.txt" <<'PY' &
import json, sys, time, urllib.request
http, n = sys.argv[1], int(sys.argv[2])
for t in range(n):
    try:
        v = json.load(urllib.request.urlopen(f"http://{http}/api/cluster", timeout=5))
        print(t, [s["players"] for s in v["shards"]], v["login_queue"], flush=True)
    except Exception as e:
        print(t, "error", e, flush=True)
    time.sleep(1)
PY
sampler_pid=$!
sleep 8  # both shards full (the ramp is 2 s)
bots "$a" late "$cap" 40s >"$a/late.txt" 2>&1 &
late_pid=$!
wait "$short_pid" "$long_pid" "$late_pid"
kill "$sampler_pid" 2>/dev/null || true
echo "admission: /api/cluster (second, players per shard, login queue), every 5th sample:"
awk 'NR % 5 == 1' "$a/samples.txt" | sed 's/^/   /'

python3 - "$a" "$cap" <<'PY'
import json, sys
d, cap = sys.argv[1], int(sys.argv[2])
r = {k: json.load(open(f"{d}/{k}.json")) for k in ("short", "long", "late")}
# Sample lines: `second [players on shard 0, on shard 1] login_queue`.
rows = []
for line in open(f"{d}/samples.txt"):
    if "[" not in line: continue
    players = [int(x) for x in line.split("[")[1].split("]")[0].split(",")]
    rows.append((sum(players), int(line.split("]")[1])))
full = max((p for p, _ in rows), default=0)
most = max((q for _, q in rows), default=0)
problems = []
for k in ("short", "long"):
    if r[k]["bots_connected"] != cap: problems.append(f"{k}: {r[k]['bots_connected']}/{cap} played")
    if r[k]["bots_queued"] != 0: problems.append(f"{k}: {r[k]['bots_queued']} queued before the shards were full")
late = r["late"]
if late["bots_queued"] != cap: problems.append(f"late: {late['bots_queued']}/{cap} waited in the queue")
if late["queue_position_max"] != cap: problems.append(f"late: first places went up to {late['queue_position_max']}, not {cap}")
if late["bots_connected"] != cap: problems.append(f"late: {late['bots_connected']}/{cap} admitted")
if full > 2 * cap: problems.append(f"the master counted {full} players on 2 shards of cap {cap}")
print(f"admission: short {r['short']['bots_connected']}/{cap} played, long {r['long']['bots_connected']}/{cap} played, "
      f"late {late['bots_queued']}/{cap} waited (first places 1..{late['queue_position_max']}) and "
      f"{late['bots_connected']}/{cap} were admitted; queue_ms p50 {late['queue_ms_p50']:.0f} p99 {late['queue_ms_p99']:.0f} "
      f"max {late['queue_ms_max']:.0f}; most players seen {full} (cap {2 * cap}), longest queue seen {most}")
errors = {k: r[k]["errors"] for k in r if r[k]["errors"]}
if errors: print("admission: errors:", errors)
if problems:
    print("admission FAILED: " + "; ".join(problems)); sys.exit(1)
PY
stop_cluster

b="$run_dir/b"
port=$(( port + 1000 ))
start_cluster "$b" "$port" 0
echo "admission: 2 shards that take no players (clients_per_shard_max = 0)"
set +e
bots "$b" none 3 5s >"$b/none.txt" 2>&1
status=$?
set -e
stop_cluster
trap - EXIT
tail -n 2 "$b/none.txt" | sed 's/^/   /'
if [ "$status" -eq 0 ]; then echo "admission FAILED: bots refused for room exited 0"; exit 1; fi
grep -q "no_room" "$b/none.txt" || { echo "admission FAILED: the bots did not say no_room"; exit 1; }
grep -q "no shard of this world takes players now" "$b/none.txt" \
  || { echo "admission FAILED: the server's message is missing"; exit 1; }
echo "admission: refused bots exit $status with the server's message"
rm -rf "$run_dir"
