#!/usr/bin/env bash
# Metrics check: every shard of a loaded cluster serves Prometheus text that `promtool check
# metrics` accepts without a word, with every metric the shards promise present and moving.
#
# Starts `zonescaler up --shards 4` on random ports, runs BOTS bots walking across borders, and
# while they play scrapes each shard's /metrics (the addresses `up` lists) twice, GAP seconds
# apart. Between the scrapes one client sends shard 1 an undecodable control frame (the
# `garbage_client` example), so the decode-error counter and a shard-decided close reason move
# too. Then, per shard: promtool's verdict, a table (series -> scrape 1, scrape 2, check), and a
# line for every failure. Needs promtool (Debian: apt-get install prometheus) and python3.
# Usage: [BOTS=60] [GAP=8] bash .ci/metrics.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bots=${BOTS:-60}
gap=${GAP:-8}
shards=4
began=$(date +%s)
command -v promtool >/dev/null || { echo "metrics: promtool not found (apt-get install prometheus)"; exit 1; }
command -v python3 >/dev/null || { echo "metrics: python3 not found"; exit 1; }

cargo build -q --release -p zonescaler-server --bin zonescaler --example garbage_client
exe=./target/release/zonescaler
garbage=./target/release/examples/garbage_client

run_dir=$(mktemp -d)
port=$(( 20000 + RANDOM % 20000 ))
link_port=$(( port + 100 ))
http="127.0.0.1:$(( port + 200 ))"
metrics_port=$(( port + 300 ))
"$exe" up --shards "$shards" --port "$port" --link-port "$link_port" --http "$http" \
  --metrics-port "$metrics_port" --world assets/worlds/default.toml --run-dir "$run_dir" \
  >"$run_dir/up.log" 2>&1 &
up_pid=$!
bots_pid=
cleanup() {
  [ -n "$bots_pid" ] && kill "$bots_pid" 2>/dev/null || true
  kill -INT "$up_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$up_pid" 2>/dev/null || true
}
trap cleanup EXIT
fail() { echo "metrics FAILED: $*"; echo "--- up.log (last 20 lines)"; tail -n 20 "$run_dir/up.log"; exit 1; }

# Ready once `up` has printed its address list (after every shard wrote its certificate, i.e.
# once the cluster formed). Deadline, not a fixed sleep: a loaded 2-core machine is slow.
for _ in $(seq 1 1200); do
  grep -qs "Ctrl-C stops the cluster" "$run_dir/up.log" && break
  kill -0 "$up_pid" 2>/dev/null || fail "zonescaler up died during start"
  sleep 0.1
done
grep -q "Ctrl-C stops the cluster" "$run_dir/up.log" || fail "the cluster did not start within 120 s"
# The scrape targets are what `up` lists, one per shard: the list must name each.
mapfile -t targets < <(grep -o "metrics http://[^ )]*" "$run_dir/up.log" | sed 's/^metrics //')
[ "${#targets[@]}" -eq "$shards" ] || fail "up's address list names ${#targets[@]} metrics endpoints, not $shards"

# Long enough to outlast both scrapes even when the ramp and the scrapes are slow.
"$exe" bots --connect "127.0.0.1:$port" --cert "$run_dir/cluster.pem" \
  --login-key "$run_dir/login.key" --bots "$bots" --duration 20s --scenario border \
  --report-json "$run_dir/report.json" --quiet >"$run_dir/bots.log" 2>&1 &
bots_pid=$!

scrape() { # scrape N: every shard's /metrics into $run_dir/shard-I.N.prom
  for i in "${!targets[@]}"; do
    python3 - "${targets[$i]}" "$run_dir/shard-$i.$1.prom" <<'PY' || fail "cannot scrape ${targets[$i]}"
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    assert r.status == 200, r.status
    open(sys.argv[2], "wb").write(r.read())
PY
  done
}

# The first scrape once bots play on every shard (clients > 0 everywhere), within a deadline.
deadline=$(( $(date +%s) + 30 ))
while :; do
  scrape 1
  playing=0
  for i in "${!targets[@]}"; do
    grep -Eq '^zonescaler_clients [1-9]' "$run_dir/shard-$i.1.prom" && playing=$(( playing + 1 ))
  done
  [ "$playing" -eq "$shards" ] && break
  kill -0 "$bots_pid" 2>/dev/null || { cat "$run_dir/bots.log"; fail "the bots ended before every shard had clients"; }
  [ "$(date +%s)" -lt "$deadline" ] || fail "only $playing of $shards shards had clients after 30 s of bots"
  sleep 1
done
echo "metrics: scrape 1 of ${targets[*]}"
# A client that sends shard 1 one control frame that does not decode: the shard counts a
# decode error and closes it as bad_message. Its own exit code says whether the shard did.
"$garbage" --connect "127.0.0.1:$(( port + 1 ))" --cert "$run_dir/cluster.pem" \
  || fail "garbage_client: shard 1 did not close the connection as bad_message"
sleep "$gap"
scrape 2
echo "metrics: scrape 2, ${gap} s later"
kill -0 "$bots_pid" 2>/dev/null || echo "metrics: warning: the bots ended before scrape 2 (slow machine?)"

status=0
for i in "${!targets[@]}"; do
  echo
  echo "=== shard-$i ${targets[$i]}"
  clean=1
  for n in 1 2; do
    # promtool exits 0 on lint warnings too: any output at all is a problem.
    lint=$(promtool check metrics <"$run_dir/shard-$i.$n.prom" 2>&1) && rc=0 || rc=$?
    if [ "$rc" -ne 0 ] || [ -n "$lint" ]; then
      echo "metrics FAILED: promtool check metrics on shard-$i scrape $n (exit $rc):"
      echo "$lint"
      clean=0
      status=1
    fi
  done
  [ "$clean" -eq 1 ] && echo "  promtool check metrics: no problems (both scrapes, exit 0, no output)"
  python3 - "$run_dir/shard-$i.1.prom" "$run_dir/shard-$i.2.prom" "$i" <<'PY' || status=1
import re, sys
SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
def parse(path):
    out = {}
    for line in open(path):
        m = SERIES.match(line)
        if m: out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out
a, b, shard = parse(sys.argv[1]), parse(sys.argv[2]), int(sys.argv[3])
INJECTED = 1  # the shard the garbage client talked to
# (series, check): up = grew between the scrapes; nonzero = a gauge > 0 at scrape 2;
# zero = present and 0 (cannot move yet, or must not move under well-behaved load);
# present = present (may or may not move under this load).
checks = [
    ("zonescaler_tick_duration_seconds_count", "up"),
    ("zonescaler_tick_duration_seconds_sum", "up"),
    ("zonescaler_tick_cpu_seconds_count", "up"),
    ("zonescaler_tick_cpu_seconds_sum", "up"),
    ('zonescaler_entities{state="owned"}', "nonzero"),
    ('zonescaler_entities{state="proxy"}', "nonzero"),
    ('zonescaler_entities{state="in_transit"}', "present"),
    ("zonescaler_clients", "nonzero"),
    ("zonescaler_proxies", "nonzero"),
    ('zonescaler_handoffs_total{direction="in"}', "up"),
    ('zonescaler_handoffs_total{direction="out"}', "up"),
    ("zonescaler_handoff_transit_seconds_count", "up"),
    ('zonescaler_cell_moves_total{direction="out"}', "present"),
    ('zonescaler_cell_moves_total{direction="in"}', "present"),
    ('zonescaler_client_bytes_total{direction="in"}', "up"),
    ('zonescaler_client_bytes_total{direction="out"}', "up"),
    ('zonescaler_client_datagrams_total{direction="in"}', "up"),
    ('zonescaler_client_datagrams_total{direction="out"}', "up"),
    ('zonescaler_link_bytes_total{direction="in"}', "up"),
    ('zonescaler_link_bytes_total{direction="out"}', "up"),
    ('zonescaler_connection_closes_total{reason="client_closed"}', "up"),
    ('zonescaler_connection_closes_total{reason="bad_message"}', "up" if shard == INJECTED else "zero"),
    ('zonescaler_decode_errors_total{channel="client"}', "up" if shard == INJECTED else "zero"),
    ('zonescaler_decode_errors_total{channel="link"}', "zero"),
    ("zonescaler_replication_lag_seconds_count", "up"),
    ('zonescaler_queue_length{queue="client_inbox"}', "nonzero"),
    ('zonescaler_queue_length{queue="client_outbox"}', "nonzero"),
    ('zonescaler_queue_length{queue="link_inbox"}', "nonzero"),
    ('zonescaler_queue_length{queue="link_outbox"}', "nonzero"),
    ('zonescaler_queue_length{queue="handshakes"}', "present"),
    ("zonescaler_process_resident_memory_bytes", "nonzero"),
    ("zonescaler_process_cpu_seconds_total", "up"),
]
# The master's ownership audit: on shard 0 only, taken every second, no entity owned twice.
if shard == 0:
    checks += [("zonescaler_audits_total", "up"), ("zonescaler_audit_duplicates_total", "zero")]
problems = []
print(f"  {'series':<62} {'scrape 1':>14} {'scrape 2':>14}  check")
for name, check in checks:
    va, vb = a.get(name), b.get(name)
    if va is None or vb is None:
        ok = False
    elif check == "up":
        ok = vb > va
    elif check == "nonzero":
        ok = vb > 0
    elif check == "zero":
        ok = va == 0 and vb == 0
    else:
        ok = True
    fmt = lambda v: "-" if v is None else f"{v:.6g}"
    print(f"  {name:<62} {fmt(va):>14} {fmt(vb):>14}  {check}{'' if ok else '  <-- FAIL'}")
    if not ok:
        problems.append(f"{name}: {check} failed ({fmt(va)} -> {fmt(vb)})" if va is not None and vb is not None
                        else f"{name}: missing")
# The other series (other close reasons, inputs, admissions, ...), not checked: the nonzero ones
# are listed so nothing new goes unseen, the rest counted.
listed = {n for n, _ in checks}
histograms = {n[: -len("_count")] for n in listed if n.endswith("_count")}
zeros = 0
for name in sorted(set(a) | set(b)):
    if name in listed or name.split("{")[0].rsplit("_", 1)[0] in histograms:
        continue
    if not a.get(name) and not b.get(name):
        zeros += 1
        continue
    fmt = lambda v: "-" if v is None else f"{v:.6g}"
    print(f"  {name:<62} {fmt(a.get(name)):>14} {fmt(b.get(name)):>14}")
print(f"  (and {zeros} more series at 0 in both scrapes)")
for p in problems:
    print(f"metrics FAILED: shard-{shard}: {p}")
sys.exit(1 if problems else 0)
PY
done

wait "$bots_pid" || { cat "$run_dir/bots.log"; fail "the bots failed"; }
bots_pid=
echo
if [ "$status" -ne 0 ]; then
  fail "see the lines above (scrapes kept in $run_dir)"
fi
kill -INT "$up_pid"
for _ in $(seq 1 100); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$up_pid" 2>/dev/null && fail "zonescaler up did not stop on Ctrl-C"
trap - EXIT
# Every shard child has the run dir's certificate path on its command line.
orphans=$(pgrep -f "$run_dir/shard-" || true)
if [ -n "$orphans" ]; then
  kill -KILL $orphans 2>/dev/null || true
  echo "metrics FAILED: shard processes $orphans outlived zonescaler up"; exit 1
fi
rm -rf "$run_dir"
echo "metrics: every shard passed promtool with every metric present and moving ($(( $(date +%s) - began )) s)"
