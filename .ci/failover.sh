#!/usr/bin/env bash
# A shard killed outright during play (issue 9): `zonescaler up --shards
# SHARDS`, BOTS bots walking across borders for DURATION, and `kill -9` of shard KILL KILL_AFTER
# seconds in. KILL=0 kills the master: the others elect a successor, which fences it and gives
# its cells to its buddy; the API answers again through any shard's address (a shard without the
# master role redirects to the one with it), within MASTER_BAR_S of the kill. Checked:
# - the master declares it dead and every one of its cells is on a live member within
#   FAILOVER_BAR_S of the kill (`GET /api/cluster`, sampled every 0.2 s);
# - `up` keeps running, reports the death with the exit status, restarts the shard, which joins
#   again as a new member, is alive in the master's view, and is given cells;
# - the bots that were not on the killed shard keep playing: snapshots/s p50 over all bots at
#   least 20, and every bot connected at the start;
# - the killed shard's bots come back by themselves with their resume tickets, at least 90% of
#   them on their own avatars, failover_gap_ms p99 (from the last datagram of the dead shard to
#   the first complete snapshot again) at most GAP_BAR_MS (5000);
# - the dead shard's cells and replica went to its buddy (the master's "failover" event), and
#   after the bots leave nothing is lost or doubled: total_entities (the median of the last
#   samples: a handoff in flight counts twice or not at all for a moment) equals the count
#   before the bots.
# Printed: the time from the kill to the last cell on a live member, the adoption, the bots'
# errors (what the players of the dead shard saw).
# Usage: [SHARDS=4] [BOTS=100] [DURATION=25s] [KILL=2] [KILL_AFTER=8] [FAILOVER_BAR_S=5]
#        [GAP_BAR_MS=5000] [MASTER_BAR_S=6] [OUT_DIR=dir] bash .ci/failover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/cluster_lib.sh
shards=${SHARDS:-4}
bots=${BOTS:-100}
duration=${DURATION:-25s}
kill_shard=${KILL:-2}
kill_after=${KILL_AFTER:-8}
failover_bar_s=${FAILOVER_BAR_S:-5}
master_bar_s=${MASTER_BAR_S:-6}
gap_bar_ms=${GAP_BAR_MS:-5000}
dir=${OUT_DIR:-$(mktemp -d)}
mkdir -p "$dir"
port=$(( 20000 + RANDOM % 20000 ))
http="127.0.0.1:$(( port + 200 ))"
# Every shard's API address (shard i serves on --http's port + i), shard 0's first.
apis=""
for i in $(seq 0 $(( shards - 1 ))); do apis="$apis${apis:+,}127.0.0.1:$(( port + 200 + i ))"; done
env -u OUT_DIR cargo build -q --release -p zonescaler-server --bin zonescaler
exe="${CARGO_TARGET_DIR:-target}/release/zonescaler"

"$exe" up --shards "$shards" --port "$port" --link-port $(( port + 100 )) --http "$http" \
  --metrics-port $(( port + 300 )) --run-dir "$dir" >"$dir/up.log" 2>&1 &
up_pid=$!
cleanup() { kill -INT "$up_pid" 2>/dev/null || true; }
trap cleanup EXIT
wait_up failover "$dir" "$shards" "$up_pid"

# The master's view every 0.2 s, with the time, until DIR/stop.
start_sampler failover "$apis" "$dir" 0.2
# The first samples see the world before the bots: its NPCs.
sleep 1.5

"$exe" bots --connect "127.0.0.1:$port" --cert "$dir/cluster.pem" --login-key "$dir/login.key" \
  --bots "$bots" --duration "$duration" --scenario border --seed 7 \
  --report-json "$dir/report.json" --quiet &
bots_pid=$!
sleep "$kill_after"
victim=$(pgrep -f -- "--cert-out $dir/shard-$kill_shard.pem" | head -n 1 || true)
[ -n "$victim" ] || { echo "failover: no process for shard-$kill_shard"; exit 1; }
date +%s.%N > "$dir/killed_at"
kill -9 "$victim"
echo "failover: killed shard-$kill_shard (pid $victim) ${kill_after}s into the bots' run"
wait "$bots_pid"
# The bots' avatars go with their connections; one redirected whose client never came, after
# REDIRECT_WAIT_MS (15 s). Then until the directory is empty and the count holds, 3 reads running.
python3 - "$apis" <<'PY' || true
import json, sys, time, urllib.request
apis = sys.argv[1].split(",")
def view():
    for api in apis:
        try:
            return json.load(urllib.request.urlopen(f"http://{api}/api/cluster", timeout=5))
        except Exception:
            pass
    raise SystemExit("no shard's API answered")
time.sleep(16)
prev, good = None, 0
for _ in range(45):
    v = view()
    good = good + 1 if v["players"] == 0 and v["total_entities"] == prev else 0
    prev = v["total_entities"]
    if good >= 3:
        break
    time.sleep(1)
PY
touch "$dir/stop"; wait "$sampler" 2>/dev/null || true

python3 - "$dir" "$bots" "$failover_bar_s" "$gap_bar_ms" "$kill_shard" "$master_bar_s" <<'PY'
import json, sys
d, bots, bar, gap_bar_ms = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
killed_shard, master_bar = int(sys.argv[5]), float(sys.argv[6])
killed = float(open(f"{d}/killed_at").read())
samples = [json.loads(l) for l in open(f"{d}/samples.jsonl") if l.strip()]
problems = []
before = [s for s in samples if s["t"] < killed]
if not before: sys.exit("failover: no sample before the kill")
last = before[-1]
if killed_shard == last.get("master", 0):
    # The master's process: a successor must hold the role and serve the API again.
    back = next((s for s in samples if s["t"] >= killed and s.get("master", 0) != killed_shard), None)
    if back is None:
        problems.append("no successor ever served the API after the master was killed")
    else:
        took = back["t"] - killed
        print(f"failover: shard {back['master']} holds the master role in term {back.get('term')}; "
              f"the API answered again {took:.2f} s after the kill")
        if took > master_bar:
            problems.append(f"the API answered again only {took:.1f} s after the kill (bar {master_bar} s)")
        gaps = [b["t"] - a["t"] for a, b in zip(samples, samples[1:]) if a["t"] >= killed - 1]
        print(f"failover: longest gap between API samples after the kill: {max(gaps, default=0):.2f} s")
# Which member the killed process was: the one the master stops hearing from.
after = [s for s in samples if s["t"] >= killed]
dead = next((sh["id"] for s in after for sh in s["shards"] if not sh["alive"]), None)
if dead is None:
    problems.append("the master never declared a shard dead")
    recovered = None
else:
    owned_by = lambda s, i: sum(1 for c in s["cells"] if c["shard"] == i)
    gone = next(sh for sh in last["shards"] if sh["id"] == dead)
    lost = gone["owned_entities"]
    # Its players' avatars would have left with the bots anyway: the NPCs are what it took.
    recovered = next((s["t"] - killed for s in after
                      if any(sh["id"] == dead and not sh["alive"] for sh in s["shards"])
                      and owned_by(s, dead) == 0), None)
    if recovered is None:
        problems.append(f"shard {dead}'s cells never all went to live members")
    elif recovered > bar:
        problems.append(f"shard {dead}'s cells were on live members only {recovered:.1f} s after the kill (bar {bar} s)")
    end = samples[-1]
    live = [sh for sh in end["shards"] if sh["alive"]]
    newcomers = [sh for sh in live if sh["id"] >= len(before[0]["shards"])]
    if not newcomers:
        problems.append("no restarted shard joined as a new member")
    elif not any(sh["cells"] > 0 for sh in newcomers):
        problems.append(f"the restarted shard (id {newcomers[0]['id']}) got no cell")
    bad = [c["id"] for c in end["cells"] if c["shard"] not in {sh["id"] for sh in live}]
    if bad: problems.append(f"cells on dead members at the end: {bad[:5]}")
    # Nothing lost, nothing doubled: the world's count before the bots, once they left.
    # The median of the first second's samples (before the bots): one read can catch an NPC on
    # its way between two shards' heartbeats, counted on both or on neither.
    head = sorted(s["total_entities"] for s in samples[:5])
    first = head[len(head) // 2]
    tail = sorted(s["total_entities"] for s in samples[-10:])
    final = tail[len(tail) // 2]
    took = "never" if recovered is None else f"{recovered:.2f} s after the kill"
    print(f"failover: shard {dead} killed; its cells on live members {took}; it owned {lost} "
          f"entities ({gone['clients']} of them players' avatars), promoted on its buddy; "
          f"total_entities {first} before the bots, {final} after them (last samples {tail})")
    if final != first:
        problems.append(f"total_entities {final} after the bots left, {first} before: "
                        f"{'lost' if final < first else 'doubled'} {abs(final - first)}")
    adopted = [e["text"] for e in end["events"] if e["kind"] == "failover" and "adopted" in e["text"]]
    if not adopted:
        problems.append("no shard adopted the dead shard's cells and replica")
    events = [e["text"] for e in end["events"] if e["kind"] in ("dead", "failover")]
    print(f"failover: {len(events)} dead/failover events, first: {events[:2]}")
r = json.load(open(f"{d}/report.json"))
if r["bots_connected"] != bots: problems.append(f"connected {r['bots_connected']} of {bots}")
# The dead shard's players come back by themselves, on their own avatars.
fo, res = r["failovers"], r["resumes"]
print(f"failover: {fo} bots lost their shard, {res} resumed on their avatars, "
      f"{r['resumes_failed']} resumes failed, {r['relogins']} logged in anew; failover_gap_ms "
      f"p50 {r['failover_gap_ms_p50']:.0f} p99 {r['failover_gap_ms_p99']:.0f} max {r['failover_gap_ms_max']:.0f} "
      f"(from the last datagram of the dead shard)")
if fo == 0: problems.append("no bot lost its shard")
elif res < 0.9 * fo: problems.append(f"only {res} of {fo} bots resumed on their avatars")
if r["failover_gap_ms_p99"] > gap_bar_ms:
    problems.append(f"failover_gap_ms p99 {r['failover_gap_ms_p99']:.0f} > {gap_bar_ms}")
if r["snapshots_per_sec_p50"] < 20: problems.append(f"snapshots_per_sec_p50 {r['snapshots_per_sec_p50']:.1f} < 20")
print(f"failover: bots {r['bots_connected']}/{bots} connected, snapshots/s p50 {r['snapshots_per_sec_p50']:.1f}, "
      f"handoffs {r['handoffs']}, errors {r['errors']}")
if problems:
    print("failover FAILED: " + "; ".join(problems)); sys.exit(1)
PY
grep -q "shard-$kill_shard exited" "$dir/up.log" || { tail -n 30 "$dir/up.log"; echo "failover: up did not report the death"; exit 1; }
grep -q "restarting shard-$kill_shard" "$dir/up.log" || { tail -n 30 "$dir/up.log"; echo "failover: up did not restart the shard"; exit 1; }
kill -INT "$up_pid"
for _ in $(seq 1 100); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$up_pid" 2>/dev/null; then echo "failover: zonescaler up did not stop on Ctrl-C"; exit 1; fi
trap - EXIT
if pgrep -f "$dir/shard-" >/dev/null; then echo "failover: a shard process outlived zonescaler up"; exit 1; fi
echo "failover: ok"
[ -n "${OUT_DIR:-}" ] || rm -rf "$dir"
