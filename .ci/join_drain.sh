#!/usr/bin/env bash
# Join and drain at runtime (issue 8, acceptance 3): `zonescaler up --shards SHARDS` with BOTS
# wandering bots; JOIN_AFTER seconds into the bots' run a new shard joins the running cluster
# (`zonescaler shard --join`, as `up` prints it); DRAIN_AFTER seconds after the join,
# `zonescaler drain --shard DRAIN` drains one. The master's GET /api/cluster is sampled every
# second.
#
# Printed: how long after the join the newcomer first owned a cell and first carried 15% of the
# clients, its peak share, how long the drain took, whether `drain` and the drained shard exited
# 0, and the bots' connected count, avatar_missing_total, snapshots/s and handoff gap, and
# total_entities before the bots and after they left.
#
# With CHECK=1: the newcomer carries >= SHARE_BAR (0.15) of the clients within 30 s of joining
# (with SHARE_BAR=0: it owns a cell within 30 s), `drain` exits 0, `up` saw the drained shard
# exit 0, every bot connected, no avatar missing, total_entities conserved.
# Usage: [EXE=path] [WORLD=assets/worlds/default.toml] [SHARDS=3] [BOTS=500] [DURATION=120s] [JOIN_AFTER=20] [DRAIN_AFTER=40] [DRAIN=2]
#        [CHECK=1 [SHARE_BAR=0.15]] [OUT_DIR=dir] bash .ci/join_drain.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/cluster_lib.sh
shards=${SHARDS:-3}
bots=${BOTS:-500}
duration=${DURATION:-120s}
join_after=${JOIN_AFTER:-20}
drain_after=${DRAIN_AFTER:-40}
drain=${DRAIN:-2}
world=${WORLD:-assets/worlds/default.toml}
dir=${OUT_DIR:-$(mktemp -d)}
mkdir -p "$dir"
# EXE: a zonescaler binary built already (another machine's run); else build it here.
if [ -n "${EXE:-}" ]; then
  exe=$EXE
else
  cargo build -q --release -p zonescaler-server --bin zonescaler
  exe="${CARGO_TARGET_DIR:-target}/release/zonescaler"
fi
port=$(( 20000 + RANDOM % 20000 ))
http="127.0.0.1:$(( port + 200 ))"
mport=$(( port + 300 ))

"$exe" up --shards "$shards" --port "$port" --link-port $(( port + 100 )) --http "$http" \
  --metrics-port "$mport" --world "$world" --run-dir "$dir" >"$dir/up.log" 2>&1 &
up_pid=$!
joiner_pid=
cleanup() {
  [ -n "$joiner_pid" ] && kill "$joiner_pid" 2>/dev/null || true
  kill -INT "$up_pid" 2>/dev/null || true
  touch "$dir/stop"
}
trap cleanup EXIT
wait_up join_drain "$dir" "$shards" "$up_pid"
start_sampler join_drain "$http" "$dir"
sleep 2
date +%s.%N > "$dir/bots_start"
"$exe" bots --connect "127.0.0.1:$port" --cert "$dir/cluster.pem" --login-key "$dir/login.key" \
  --bots "$bots" --duration "$duration" --scenario wander --seed 7 \
  --report-json "$dir/report.json" --quiet >"$dir/bots.out" 2>&1 &
bots_pid=$!

sleep "$join_after"
n=$shards
date +%s.%N > "$dir/join_at"
ZONESCALER_CLUSTER_SECRET=$(cat "$dir/cluster.secret") "$exe" shard --world "$world" --join "127.0.0.1:$(( port + 100 ))" \
  --listen "127.0.0.1:$(( port + n ))" --link-listen "127.0.0.1:$(( port + 100 + n ))" \
  --metrics "127.0.0.1:$(( mport + n ))" --tls-cert "$dir/cluster.pem" --tls-key "$dir/cluster.key" \
  --login-keys "$dir/login.pub" --net-threads 1 >"$dir/shard-$n.log" 2>&1 &
joiner_pid=$!

sleep "$drain_after"
date +%s.%N > "$dir/drain_at"
drain_rc=0
"$exe" drain --shard "$drain" --http "$http" --token-file "$dir/api.token" --timeout-s 120 \
  >"$dir/drain.out" 2>&1 || drain_rc=$?
date +%s.%N > "$dir/drained_at"
cat "$dir/drain.out"

bots_rc=0
wait "$bots_pid" || bots_rc=$?
date +%s.%N > "$dir/bots_end"
# Shards report at different moments, so one sample can count an entity in a handoff twice or
# not at all: the summary takes the most common count before the bots, and of the last four
# samples after.
wait_settled "$http" "$dir"
sleep 3
touch "$dir/stop"; wait "$sampler" || true
python3 - "$dir" "$bots" "$n" "$drain" "$drain_rc" "$bots_rc" <<'PY'
import json, statistics, sys
d, bots, newcomer, drain, drain_rc, bots_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
samples = [json.loads(l) for l in open(f"{d}/samples.jsonl")]
t = lambda name: float(open(f"{d}/{name}").read())
start, join_at, drain_at, drained_at, end = t("bots_start"), t("join_at"), t("drain_at"), t("drained_at"), t("bots_end")
r = json.load(open(f"{d}/report.json"))
before = [s for s in samples if s["t"] < start]
after = [s for s in samples if s["t"] > end]
def share(s):
    total = sum(x["clients"] for x in s["shards"])
    mine = sum(x["clients"] for x in s["shards"] if x["id"] == newcomer)
    return mine / total if total else 0.0
first_cell = next((round(s["t"] - join_at, 1) for s in samples
                   if s["t"] > join_at and any(x["id"] == newcomer and x["cells"] > 0 for x in s["shards"])), None)
at_15 = next((round(s["t"] - join_at, 1) for s in samples if s["t"] > join_at and share(s) >= 0.15), None)
peak = max((share(s) for s in samples if join_at < s["t"] < drain_at), default=0.0)
gone = next((round(s["t"] - drain_at, 1) for s in samples
             if s["t"] > drain_at and not any(x["id"] == drain for x in s["shards"])), None)
up_log = open(f"{d}/up.log").read()
# `up` names its processes shard-0.. by start order; ids are given in order of arrival at the
# master: map them by client address.
import re
names = dict(re.findall(r"^  (shard-\d+) +(\S+)  metrics", up_log, re.M))
addr_of = {x["id"]: x["addr"] for s in samples for x in s["shards"]}
drained_name = next((n for n, a in names.items() if a == addr_of.get(drain)), None)
summary = {
    "connected": r.get("bots_connected", r.get("connected")),
    "bots_exit": bots_rc,
    "snapshots_per_sec_p50": r.get("snapshots_per_sec_p50"),
    "handoff_gap_ms_p99": r.get("handoff_gap_ms_p99"),
    "avatar_missing_total": r.get("avatar_missing_total"),
    "newcomer_first_cell_s": first_cell,
    "newcomer_15pct_clients_s": at_15,
    "newcomer_peak_client_share": round(peak, 3),
    "drain_exit": drain_rc,
    "drain_left_cluster_s": gone,
    "drained_process": drained_name,
    "drained_shard_exited_0": drained_name is not None and f"{drained_name} was drained and exited 0" in up_log,
    "total_entities_before": statistics.mode(x["total_entities"] for x in before) if before else None,
    "total_entities_after": statistics.mode(x["total_entities"] for x in after[-4:]) if after else None,
}
json.dump(summary, open(f"{d}/summary.json", "w"), indent=1)
print(json.dumps(summary))
PY
if [ -n "${CHECK:-}" ]; then
  python3 - "$dir/summary.json" "$bots" "${SHARE_BAR:-0.15}" <<'PY'
import json, sys
s, bots, bar = json.load(open(sys.argv[1])), int(sys.argv[2]), float(sys.argv[3])
if bar > 0:
    assert s["newcomer_15pct_clients_s"] is not None and s["newcomer_15pct_clients_s"] <= 30, (
        f"join_drain: the newcomer carried 15% of the clients after {s['newcomer_15pct_clients_s']} s")
else:
    assert s["newcomer_first_cell_s"] is not None and s["newcomer_first_cell_s"] <= 30, (
        f"join_drain: the newcomer owned a cell after {s['newcomer_first_cell_s']} s")
assert s["drain_exit"] == 0, f"join_drain: zonescaler drain exited {s['drain_exit']}"
assert s["drained_shard_exited_0"], "join_drain: up did not see the drained shard exit 0"
assert s["connected"] == bots, f"join_drain: {s['connected']}/{bots} bots connected"
assert s["avatar_missing_total"] == 0, f"join_drain: avatar_missing_total {s['avatar_missing_total']}"
assert s["total_entities_after"] == s["total_entities_before"], (
    f"join_drain: total_entities {s['total_entities_before']} before, {s['total_entities_after']} after")
print("join_drain: the newcomer took its share, the drained shard left and exited 0, no avatar lost, total_entities conserved")
PY
fi
echo "join_drain: results in $dir"
