#!/usr/bin/env bash
# Benchmark of the analysis service (issue 16), in one run on one machine:
#
#   (1) requests per second: GET /info (unsigned: the HTTP transport alone),
#       GET /jobs (status: signature check, nonce, directory, SQLite, audit
#       fsync) and POST /jobs (submit: that plus the bundle written and a
#       job row) — signed before the clock starts, CONC connections at once;
#   (2) the latency a job adds: ROUNDS jobs of a small shell analysis through
#       submit → profiled → approve → staged → release, side by side with
#       the same `tresor profile` and `tresor run` run directly on the same
#       input through the service's mount. Target: the service adds under
#       100 ms per job over the direct commands.
#
# Usage: tools/bench-service.sh [ROUNDS]   (default 5; N=REQUESTS CONC=C)
# Needs: cargo, FUSE, root (the service mounts and confines). Scratch under
# $BENCH_DIR (default: target/bench-service).
set -euo pipefail

ROUNDS=${1:-5}
N=${N:-1000}
CONC=${CONC:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH_DIR=${BENCH_DIR:-$TARGET/bench-service}

echo "building (release) ..." >&2
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin tresor --example service_load
T=$TARGET/release/tresor
LOAD=$TARGET/release/examples/service_load

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
cd "$BENCH_DIR"
export XDG_STATE_HOME=$BENCH_DIR/xdg
echo "bench passphrase" >pass
$T init store --pse admin.pse --passphrase-file pass --kdf-memory-mib 8 >/dev/null
A=(--pse admin.pse --passphrase-file pass)
$T datagroup add store pathology "${A[@]}" >/dev/null
for r in researchers supervisors checkers service; do $T role add store $r "${A[@]}" >/dev/null; done
$T grant store researchers pathology r "${A[@]}" >/dev/null
$T grant store checkers pathology r "${A[@]}" >/dev/null
$T grant store service pathology w "${A[@]}" >/dev/null
$T duty store researchers submit "${A[@]}" >/dev/null
$T duty store supervisors approve "${A[@]}" >/dev/null
$T duty store checkers release "${A[@]}" >/dev/null
for u in rob:researchers alice:supervisors nina:checkers svc:service; do
    $T user add store "${u%%:*}" --role "${u##*:}" --pse-out "${u%%:*}.pse" \
        --user-passphrase-file pass "${A[@]}" >/dev/null
done
mkdir -p mnt
$T mount store mnt --pse admin.pse --passphrase-file pass --log mount.log >/dev/null
mkdir -p mnt/pathology/S-1
printf 'item,n\na,120\nb,30\n' >mnt/pathology/S-1/values.csv
$T umount mnt >/dev/null
printf '#!/bin/sh\ncat "$1" > "$2/copy.txt"\n' >job.sh

serve() { # WORKERS → $URL, $PID
    rm -rf state
    $T -v serve store --pse svc.pse --passphrase-file pass --listen 127.0.0.1:0 \
        --workers "$1" --state state >serve.out 2>serve.log &
    PID=$!
    for _ in $(seq 600); do grep -q '^serving' serve.out 2>/dev/null && break; sleep 0.05; done
    URL=$(grep -o 'http://[0-9.:]*' serve.out)
}
stop() { kill -TERM "$PID"; wait "$PID" || true; }

LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
echo "== requests per second ($N requests, $CONC at once; no worker runs meanwhile) =="
serve 0
for mode in info status submit; do
    "$LOAD" "$URL" rob.pse pass "$mode" "$N" "$CONC" pathology S-1/values.csv
done
stop

echo "== latency a job adds ($ROUNDS rounds) =="
serve 1
MNT=$BENCH_DIR/state/mnt
IN=$MNT/pathology/S-1/values.csv
now() { date +%s%N; }
direct=()
for i in $(seq "$ROUNDS"); do
    rm -rf d-out d-scratch; mkdir -p d-out d-scratch
    t0=$(now)
    $T profile --out "$BENCH_DIR/direct.json" --data "$MNT/pathology/S-1" --writable "$BENCH_DIR/d-scratch" -- /bin/sh "$BENCH_DIR/job.sh" "$IN" "$BENCH_DIR/d-scratch" >/dev/null 2>&1
    t1=$(now)
    $T run --profile "$BENCH_DIR/direct.json" --data "$MNT/pathology/S-1" --out "$BENCH_DIR/d-out" -- /bin/sh "$BENCH_DIR/job.sh" "$IN" "$BENCH_DIR/d-out" >/dev/null 2>&1
    t2=$(now)
    direct+=("$(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 ))")
done
via=$("$LOAD" "$URL" rob.pse pass job "$ROUNDS" alice.pse pass nina.pse pass pathology S-1/values.csv job.sh)
stop
LOAD1=$(cut -d" " -f1-3 /proc/loadavg)
printf '%s\n' "${direct[@]}" >direct.txt
echo "$via" >via.txt
python3 - <<'EOF'
import statistics as st
d = [tuple(map(float, l.split())) for l in open("direct.txt")]
v = [dict(zip(l.split()[0::2], map(float, l.split()[1::2]))) for l in open("via.txt")]
dp, dr = st.median(x[0] for x in d), st.median(x[1] for x in d)
sp = st.median(x["submit_to_profiled_ms"] for x in v)
sr = st.median(x["approve_to_staged_ms"] for x in v)
rel = st.median(x["release_ms"] for x in v)
print(f"{'':34}{'direct':>10}{'service':>10}{'added':>10}")
print(f"{'profile (submit -> profiled)':34}{dp:>8.0f}ms{sp:>8.0f}ms{sp-dp:>8.0f}ms")
print(f"{'run (approve -> staged)':34}{dr:>8.0f}ms{sr:>8.0f}ms{sr-dr:>8.0f}ms")
print(f"{'release into the sample record':34}{'-':>10}{rel:>8.0f}ms{rel:>8.0f}ms")
print(f"added per job (medians): {sp-dp+sr-dr+rel:.0f} ms (target < 100 ms)")
EOF
echo "load average before: $LOAD0, after: $LOAD1"
