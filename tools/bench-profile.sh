#!/usr/bin/env bash
# Benchmark of `tresor profile` (issues 4 and 17), shaped like Figure 5 of
# the biobank poster: the same workloads unprofiled, under each recorder
# (in-kernel bpf, ptrace) and under `strace -f -c -o /dev/null`, in one run
# on one machine. Run as root (the bpf rows need CAP_BPF + CAP_PERFMON).
#
#   (a) syscall-heavy:  stat + read 10,000 small files
#   (b) compute-heavy:  read a 200 MB file in 1 MiB chunks, SHA-256 + histogram
#   (c) the same, 10 passes (2 GB, seconds): a profiling run's fixed start-up
#       (~20 ms) weighs on (b) at 0.36 s; (c) shows the cost per call
#
# Usage: tools/bench-profile.sh [RUNS]    (median of RUNS runs, default 5)
# Needs: cargo, strace (apt-get install strace), python3 (for JSON sizes).
# Writes scratch data under $BENCH_DIR (default: target/bench-profile).
set -euo pipefail

RUNS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH_DIR=${BENCH_DIR:-$TARGET/bench-profile}

command -v strace >/dev/null || { echo "strace not found: apt-get install strace" >&2; exit 1; }

echo "building (release) ..." >&2
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" \
    --bin tresor --example bench_small_files --example bench_stream
TRESOR=$TARGET/release/tresor
SMALL=$TARGET/release/examples/bench_small_files
STREAM=$TARGET/release/examples/bench_stream

mkdir -p "$BENCH_DIR"
if [ ! -d "$BENCH_DIR/small" ] || [ "$(ls "$BENCH_DIR/small" | wc -l)" -ne 10000 ]; then
    rm -rf "$BENCH_DIR/small"
    "$SMALL" create "$BENCH_DIR/small" 10000
fi
if [ ! -f "$BENCH_DIR/big.bin" ] || [ "$(stat -c %s "$BENCH_DIR/big.bin")" -ne 209715200 ]; then
    head -c 209715200 /dev/urandom >"$BENCH_DIR/big.bin"
fi

now() { date +%s%N; }
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)

# time_runs CMD... : prints the median wall time in seconds over $RUNS runs
# (after one warm-up run that fills the page cache).
time_runs() {
    "$@" >/dev/null 2>&1
    local times=()
    for _ in $(seq "$RUNS"); do
        local t0 t1
        t0=$(now)
        "$@" >/dev/null 2>&1
        t1=$(now)
        times+=("$(( (t1 - t0) / 1000 ))")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR+1)/2)]/1e6}'
}

size_of() { if [ -f "$1" ]; then stat -c %s "$1"; else echo 0; fi; }
human() { numfmt --to=iec --suffix=B "$1"; }
calls() { python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print(sum(e["count"] for e in p["syscalls"].values()))' "$1"; }

# row_cmd ROW : sets CMD to the command line of one row of workload $w.
row_cmd() {
    case $1 in
        unprofiled) CMD=("${cmd[@]}") ;;
        strace) CMD=(strace -f -c -o /dev/null "${cmd[@]}") ;;
        *)
            local rec=${1% *} mode=${1#* } extra=()
            [ "$mode" = full ] && extra=(--trace "$BENCH_DIR/$w-$rec-$mode.trace")
            CMD=("$TRESOR" profile --recorder "$rec" --out "$BENCH_DIR/$w-$rec-$mode.json"
                --writable "$BENCH_DIR" --mode "$mode" "${extra[@]}" -- "${cmd[@]}") ;;
    esac
}

# The rows of a workload take turns, round after round (the order rotated
# each round), rather than one row's runs after another's: this VM's speed
# drifts by several per cent over a minute, which in back-to-back blocks
# lands on one row. The ratio is the median of each round's own ratio to
# the unprofiled run of that round.
echo "| workload | monitor | time (s, median of $RUNS) | vs unprofiled | syscalls | profile | trace |"
echo "|---|---|---:|---:|---:|---:|---:|"
for w in a b c; do
    case $w in
        a) name="(a) stat+read 10,000 files"; cmd=("$SMALL" scan "$BENCH_DIR/small") ;;
        b) name="(b) 200 MB in 1 MiB chunks"; cmd=("$STREAM" "$BENCH_DIR/big.bin") ;;
        c) name="(c) (b) 10 times, 2 GB"; cmd=("$STREAM" "$BENCH_DIR/big.bin" 10) ;;
    esac
    rows=(unprofiled "bpf syscalls" "bpf args" "ptrace syscalls" "ptrace args" "ptrace full" strace)
    [ $w = a ] || rows=(unprofiled "bpf syscalls" "bpf args" "ptrace args" strace)
    n=${#rows[@]}
    times=$BENCH_DIR/times-$w
    : >"$times"
    rm -f "$BENCH_DIR/$w-"*.trace
    for i in "${!rows[@]}"; do # warm-up: the page cache, the binaries
        row_cmd "${rows[$i]}"
        "${CMD[@]}" >/dev/null 2>&1 || true
    done
    for r in $(seq "$RUNS"); do
        for k in $(seq 0 $((n - 1))); do
            i=$(( (k + r) % n ))
            row_cmd "${rows[$i]}"
            t0=$(now)
            "${CMD[@]}" >/dev/null 2>&1 || true
            t1=$(now)
            echo "$i $r $(( (t1 - t0) / 1000 ))" >>"$times"
        done
    done
    for i in "${!rows[@]}"; do
        row=${rows[$i]}
        read -r t ratio < <(python3 - "$times" "$i" <<'PY'
import statistics, sys
t = {}
for line in open(sys.argv[1]):
    i, r, us = map(int, line.split())
    t.setdefault(i, {})[r] = us / 1e6
me, base = t[int(sys.argv[2])], t[0]
print(f"{statistics.median(me.values()):.3f}",
      f"{statistics.median(me[r] / base[r] for r in me):.2f}")
PY
)
        case $row in
            unprofiled) echo "| $name | unprofiled | $t | 1.00× | | | |" ;;
            strace) echo "| $name | strace -f -c -o /dev/null | $t | ${ratio}× | | | |" ;;
            *)
                rec=${row% *} mode=${row#* }
                out=$BENCH_DIR/$w-$rec-$mode.json
                grep -q "\"recorder\": \"$rec\"" "$out" || { echo "$out was not recorded by $rec" >&2; exit 1; }
                tr="–"
                [ "$mode" = full ] && tr=$(human "$(size_of "$BENCH_DIR/$w-$rec-$mode.trace")")
                echo "| $name | tresor --recorder $rec --mode $mode | $t | ${ratio}× | $(calls "$out") | $(human "$(size_of "$out")") | $tr |" ;;
        esac
    done
done
# The fixed cost of each recorder (loading and verifying the BPF programs,
# the view), paid once per profiling run: `tresor profile -- /bin/true`.
echo
echo "| start-up | time (s, median of $RUNS) |"
echo "|---|---:|"
echo "| /bin/true unprofiled | $(time_runs /bin/true) |"
for rec in bpf ptrace; do
    echo "| tresor profile --recorder $rec -- /bin/true | $(time_runs "$TRESOR" profile --recorder $rec --out "$BENCH_DIR/true-$rec.json" -- /bin/true) |"
done
echo
echo "load average before: $LOAD0, after: $(cut -d" " -f1-3 /proc/loadavg)"
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
