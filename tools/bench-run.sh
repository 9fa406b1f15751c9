#!/usr/bin/env bash
# Benchmark of `tresor run` (issue 5), shaped like Figure 6 of the biobank
# poster: each workload unconfined, confined under its own profile's
# policy, and confined under that policy padded to 2,000+ argument rules —
# interleaved round by round, in one run on one machine, reporting ratios.
#
#   (a) syscall-heavy: stat + read 10,000 small files
#   (b) compute-heavy: SHA-256 + histogram of a 1 GiB file (1 MiB reads)
#   (c) worst case of the padding: 1,000,000 ioctl(FIONREAD) calls — the
#       syscall the padding puts its 2,000 rules on, so each call walks them
#   (d) start-up alone: one ioctl (what a run costs before the program works)
#
# "Confined" is the whole `tresor run`: profile load and compile,
# namespaces, its own root, Landlock, capability drop, rlimits,
# pid-namespace init, seccomp, the ptrace supervisor (which sees only
# forks, execs and exits) and the delivery of the staged outputs.
#
# Usage: tools/bench-run.sh [RUNS]    (median of RUNS rounds, default 5)
#   WORKLOADS="b" to run only some of a b c d; PIN=CPU to pin every run to
#   one CPU with taskset (less migration noise on a shared VM).
# Needs: cargo. Scratch data under $BENCH_DIR (default: target/bench-run).
set -euo pipefail

RUNS=${1:-5}
WORKLOADS=${WORKLOADS:-a b c d}
PIN=${PIN:-}
PAD=${PAD:-2000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH_DIR=${BENCH_DIR:-$TARGET/bench-run}

echo "building (release) ..." >&2
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" \
    --bin tresor --example bench_small_files --example bench_stream
TRESOR=$TARGET/release/tresor
SMALL=$TARGET/release/examples/bench_small_files
STREAM=$TARGET/release/examples/bench_stream

mkdir -p "$BENCH_DIR/out"
if [ ! -d "$BENCH_DIR/small" ] || [ "$(ls "$BENCH_DIR/small" | wc -l)" -ne 10000 ]; then
    rm -rf "$BENCH_DIR/small"
    "$SMALL" create "$BENCH_DIR/small" 10000
fi
mkdir -p "$BENCH_DIR/big"
if [ ! -f "$BENCH_DIR/big/big.bin" ] || [ "$(stat -c %s "$BENCH_DIR/big/big.bin")" -ne 1073741824 ]; then
    head -c 1073741824 /dev/urandom >"$BENCH_DIR/big/big.bin"
fi
mkdir -p "$BENCH_DIR/none"

now() { date +%s%N; }
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)

workload() { # name → data dir and command
    case $1 in
        a) DATA=$BENCH_DIR/small; CMD=("$SMALL" scan "$BENCH_DIR/small"); NAME="(a) syscall-heavy: stat+read 10,000 files" ;;
        b) DATA=$BENCH_DIR/big; CMD=("$STREAM" "$BENCH_DIR/big/big.bin"); NAME="(b) compute-heavy: SHA-256 of 1 GiB" ;;
        c) DATA=$BENCH_DIR/none; CMD=("$SMALL" ioctl 1000000); NAME="(c) 1,000,000 ioctl (the padded syscall)" ;;
        d) DATA=$BENCH_DIR/none; CMD=("$SMALL" ioctl 1); NAME="(d) start-up only (1 ioctl)" ;;
    esac
}

# one CONFIG: prints "WALL CPU" in µs for one run; CPU is user+sys of the
# whole tree (bash's `time` counts every waited-for descendant), steadier
# than wall time on a shared VM.
one() {
    local cfg=$1 t
    local pin=()
    [ -n "$PIN" ] && pin=(taskset -c "$PIN")
    local run=("${pin[@]}" "$TRESOR" run --profile "$BENCH_DIR/$W.json" --data "$DATA" --out "$BENCH_DIR/out")
    local TIMEFORMAT="%R %U %S"
    t=$( { time case $cfg in
        free) "${pin[@]}" "${CMD[@]}" >/dev/null ;;
        own) "${run[@]}" -- "${CMD[@]}" >/dev/null ;;
        pad) "${run[@]}" --pad-rules "$PAD" -- "${CMD[@]}" >/dev/null ;;
    esac; } 2>&1 )
    echo "$t" | awk '{printf "%d %d\n", $1*1e6, ($2+$3)*1e6}'
}

# median of column $1 of the "WALL CPU" lines on stdin, in seconds
median() { awk -v c="$1" '{print $c}' | sort -n | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR+1)/2)]/1e6}'; }
# paired ratio: the median over rounds of (this run / the unconfined run of
# the same round) — drift between rounds cancels out.
# usage: paired COL "free runs" "other runs"
paired() {
    python3 -c '
import statistics, sys
col = int(sys.argv[1]) - 1
free = [float(l.split()[col]) for l in sys.argv[2].splitlines()]
other = [float(l.split()[col]) for l in sys.argv[3].splitlines()]
print("%.3f" % statistics.median(o / f for o, f in zip(other, free)))
' "$1" "$2" "$3"
}

echo "Wall time (s) and CPU time (user+sys of the tree, s), median of $RUNS interleaved rounds;"
echo "ratios are the median of the per-round ratios to the unconfined run of the same round:"
echo
echo "| workload | unconfined wall | own policy wall | ratio | $PAD+ rules wall | ratio | unconfined CPU | own CPU | ratio | $PAD+ CPU | ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for W in $WORKLOADS; do
    workload $W
    "$TRESOR" profile --out "$BENCH_DIR/$W.json" --data "$DATA" --writable "$BENCH_DIR/out" -- "${CMD[@]}" >/dev/null 2>&1
    # warm-up: page cache, binaries
    for cfg in free own pad; do one $cfg >/dev/null; done
    free=(); own=(); pad=()
    for _ in $(seq "$RUNS"); do
        free+=("$(one free)"); own+=("$(one own)"); pad+=("$(one pad)")
    done
    row="| $NAME"
    for col in 1 2; do
        f=$(printf '%s\n' "${free[@]}" | median $col)
        o=$(printf '%s\n' "${own[@]}" | median $col)
        p=$(printf '%s\n' "${pad[@]}" | median $col)
        F=$(printf '%s\n' "${free[@]}"); O=$(printf '%s\n' "${own[@]}"); P=$(printf '%s\n' "${pad[@]}")
        row="$row | $f | $o | $(paired $col "$F" "$O")× | $p | $(paired $col "$F" "$P")×"
    done
    echo "$row |"
done
echo
for W in $WORKLOADS; do
    workload $W
    echo "policy $W: $("$TRESOR" policy show "$BENCH_DIR/$W.json" | grep -E '^[0-9]+ (syscalls|filters)' | tr '\n' ' ')"
    echo "policy $W padded: $("$TRESOR" policy show --pad-rules "$PAD" "$BENCH_DIR/$W.json" | grep -E '^[0-9]+ (syscalls|filters)' | tr '\n' ' ')"
done
echo
# Start-up inside `tresor run` (its hidden --timing): from tresor's fork to
# the program's exec, and of that the program's own process — building its
# root (tmpfs, bind mounts, pivot_root), Landlock, the capability drop,
# rlimits, seccomp.
echo "Start-up inside tresor run (--timing), median of $RUNS runs:"
for W in $WORKLOADS; do
    workload $W
    t=$(for _ in $(seq "$RUNS"); do
        "$TRESOR" run --timing --profile "$BENCH_DIR/$W.json" --data "$DATA" --out "$BENCH_DIR/out" -- "${CMD[@]}" 2>&1 >/dev/null |
            sed -n 's/.*started \([0-9.]*\) ms after.* of \([0-9]*\) steps.* in \([0-9.]*\) ms$/\1 \3 \2/p'
    done)
    med() { echo "$t" | awk -v c="$1" '{print $c}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
    echo "$NAME: fork to exec $(med 1) ms; the program's process (a root of $(med 3) steps, Landlock, capabilities, seccomp) $(med 2) ms"
done
echo
echo "load average before: $LOAD0; after: $(cut -d" " -f1-3 /proc/loadavg); $(nproc) cores; runs per cell: $RUNS"
