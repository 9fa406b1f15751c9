#!/usr/bin/env bash
# Filesystem benchmark: tresor vs gocryptfs vs a plain directory, in ONE run,
# on the SAME backing filesystem, with the raw single-core AES-256-GCM-SIV
# open throughput measured alongside (criterion, benches/crypto.rs).
#
# Usage:  tools/bench-fs.sh [BASE_DIR]        (BASE_DIR default: /var/tmp)
# Env:    SIZE_MB=1024   size of the streaming file
#         NFILES=10000   small files in the tree (1-8 KiB each, in 100 dirs)
#         RUNS=3         repetitions; the table shows the median
#         TRESOR_BIN=…   use this binary instead of `cargo build --release`
#         TRESOR_THREADS=N  pass --threads N to `tresor mount` (default: tresor's)
#         SKIP_CRYPTO=1  do not run the criterion AES-GCM-SIV measurement
#         SKIP_STREAM=1  do not run the CPU-bound streaming rows afterwards
#                        (tools/bench-stream.sh: backing stores on a tmpfs,
#                        STREAM_MB=1024 STREAM_BASE=/dev/shm; runs alone too)
#         KEEP=1         keep the work directory (it is always unmounted)
# Needs root for `echo 3 > /proc/sys/vm/drop_caches` (without it, caches are
# only synced and the read rows are cache-warm: a warning is printed).
# Rows: write, cold read, untar, ls -lR, md5sum (cold), md5sum again (warm:
# caches kept), rm -rf; with each driver's peak RSS per phase. The three
# filesystems take turns phase by phase (three big files exist at once).
# Quick run: SIZE_MB=64 NFILES=500 RUNS=1 SKIP_CRYPTO=1 tools/bench-fs.sh
set -euo pipefail

SIZE_MB=${SIZE_MB:-1024}
NFILES=${NFILES:-10000}
RUNS=${RUNS:-3}
BASE=${1:-/var/tmp}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FSES=(plain gocryptfs tresor)

die() { echo "bench-fs: $*" >&2; exit 1; }
log() { echo "bench-fs: $*" >&2; }

for n in "$SIZE_MB" "$NFILES" "$RUNS"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "SIZE_MB, NFILES and RUNS must be positive integers (got '$n')"
done
[[ -d $BASE ]] || die "backing directory $BASE does not exist"
for tool in gocryptfs fusermount3 dd tar md5sum find xargs awk; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
CAN_DROP=1
if [[ $(id -u) -ne 0 ]] || ! [[ -w /proc/sys/vm/drop_caches ]]; then
    CAN_DROP=0
    log "WARNING: not root: page caches cannot be dropped, read rows are cache-warm"
fi

# ---- work area, build, mounts ----
WORK=$(mktemp -d "$BASE/tresor-bench.XXXXXX") || die "cannot create a work directory under $BASE"
# shellcheck source=tools/bench-mounts.sh
source "$REPO/tools/bench-mounts.sh"
bench_binary
bench_mount

# ---- the small-file tree, generated once ----
TAR=$WORK/tree.tar
log "generating $NFILES files of 1-8 KiB in 100 directories"
bench_tree "$TAR" "$NFILES"
EXPECT=$(mkdir "$WORK/ref" && tar -C "$WORK/ref" -xf "$TAR" \
    && cd "$WORK/ref" && find tree -type f -print0 | sort -z | xargs -0 md5sum | md5sum)
rm -rf "$WORK/ref"

# ---- phases ----
drop_caches() {
    sync
    if [[ $CAN_DROP == 1 ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
}
ph_write() { dd if=/dev/zero of="$1/big" bs=1M count="$SIZE_MB" conv=fsync status=none; }
ph_read() { dd if="$1/big" of=/dev/null bs=1M status=none; }
ph_untar() { tar -C "$1" -xf "$TAR" && sync; }
ph_ls() { ls -lR "$1/tree" >/dev/null; }
ph_md5() { find "$1/tree" -type f -print0 | xargs -0 md5sum >/dev/null; }
# The same again right after, caches kept: a warm re-read of unchanged files.
ph_md5warm() { ph_md5 "$1"; }
ph_rm() { rm -rf "$1/tree" && sync; }
PHASES=(write read untar ls md5 md5warm rm)
WARM=(md5warm) # phases timed without dropping the caches first
# One filesystem's turn: a phase, or the warm re-read right after the cold one.
TURNS=(write read untar ls "md5 md5warm" rm)

SAMPLES=$WORK/samples
: >"$SAMPLES"
now_ns() { date +%s%N; }
timed() { # phase fs dir
    local t0 t1
    [[ " ${WARM[*]} " == *" $1 "* ]] || drop_caches
    t0=$(now_ns)
    "ph_$1" "$3" || die "phase $1 failed on $2"
    t1=$(now_ns)
    echo "$1 $2 $(((t1 - t0) / 1000))" >>"$SAMPLES" # microseconds
}

# ---- the drivers' memory: peak RSS (VmHWM) per phase, reset before each ----
RSS=$WORK/rss
: >"$RSS"
driver_pid() {
    case $1 in
        tresor) pgrep -f -- "mount $WORK/tresor-store $TMNT" | head -1 ;;
        gocryptfs) pgrep -f -- "gocryptfs.*$GMNT" | head -1 ;;
    esac
}
TPID=$(driver_pid tresor); GPID=$(driver_pid gocryptfs)
[[ -n $TPID && -n $GPID ]] || die "cannot find the drivers' processes (tresor '$TPID', gocryptfs '$GPID')"
pid_of() { case $1 in tresor) echo "$TPID" ;; gocryptfs) echo "$GPID" ;; esac; }
rss_reset() { [[ $1 == plain ]] || echo 5 >"/proc/$(pid_of "$1")/clear_refs"; }
rss_note() { # phase fs run
    [[ $2 == plain ]] && return
    local kb
    kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$(pid_of "$2")/status")
    echo "$1 $2 $3 $kb" >>"$RSS"
}
# Does the peak grow with the file size? A 64 MiB write first, for comparison.
for fs in tresor gocryptfs; do
    d=$(dir_of "$fs")
    rss_reset "$fs"
    dd if=/dev/zero of="$d/small64" bs=1M count=64 conv=fsync status=none || die "64 MiB write on $fs"
    rss_note write64 "$fs" 0
    rm -f "$d/small64"
done

# The filesystems take turns phase by phase, their order rotated each run:
# this VM's speed drifts over a minute, and one filesystem's whole run
# after another's put the drift between the columns of a row.
for ((run = 1; run <= RUNS; run++)); do
    order=("${FSES[@]:run % ${#FSES[@]}}" "${FSES[@]:0:run % ${#FSES[@]}}")
    log "run $run/$RUNS: ${order[*]}, phase by phase"
    for group in "${TURNS[@]}"; do
        for fs in "${order[@]}"; do
            d=$(dir_of "$fs")
            for ph in $group; do
                [[ $ph == md5 ]] && { # correctness check, untimed
                    got=$(cd "$d" && find tree -type f -print0 | sort -z | xargs -0 md5sum | md5sum)
                    [[ $got == "$EXPECT" ]] || die "$fs returned wrong file contents"
                }
                rss_reset "$fs"
                timed "$ph" "$fs" "$d"
                rss_note "$ph" "$fs" "$run"
            done
        done
        [[ $group == read ]] && for fs in "${order[@]}"; do rm -f "$(dir_of "$fs")/big"; done
    done
done

# ---- raw AES-256-GCM-SIV open, one core (criterion) ----
RAW_MIBS=""
if [[ ${SKIP_CRYPTO:-0} != 1 ]]; then
    log "measuring raw AES-256-GCM-SIV open throughput (cargo bench --bench crypto -- block/open)"
    if (cd "$REPO" && cargo bench --quiet --bench crypto -- 'block/open_1m' >"$WORK/criterion.txt" 2>&1); then
        est=$REPO/target/criterion/block/open_1m/new/estimates.json
        # mean time (ns) of opening 256 sealed 4 KiB blocks = 1 MiB
        if command -v jq >/dev/null; then
            ns=$(jq -r '.mean.point_estimate' "$est" 2>/dev/null || true)
        else
            ns=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mean"]["point_estimate"])' \
                "$est" 2>/dev/null || true)
        fi
        if [[ -n $ns ]]; then RAW_MIBS=$(awk -v ns="$ns" 'BEGIN { printf "%.0f", 1e9 / ns }'); fi
    else
        log "cargo bench failed; see below"; cat "$WORK/criterion.txt" >&2
    fi
fi

# ---- report ----
median() { # phase fs -> microseconds
    awk -v p="$1" -v f="$2" '$1 == p && $2 == f { print $3 }' "$SAMPLES" | sort -n \
        | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
label() {
    case $1 in
        write) echo "write ${SIZE_MB} MiB (dd bs=1M conv=fsync)" ;;
        read) echo "read ${SIZE_MB} MiB (dd bs=1M, cold cache)" ;;
        untar) echo "untar $NFILES files + sync" ;;
        ls) echo "ls -lR ($NFILES files)" ;;
        md5) echo "md5sum all $NFILES files" ;;
        md5warm) echo "md5sum all again (warm: caches kept)" ;;
        rm) echo "rm -rf tree + sync" ;;
    esac
}
cell() { # phase microseconds
    if [[ $1 == write || $1 == read ]]; then
        awk -v us="$2" -v mb="$SIZE_MB" 'BEGIN { printf "%.2f s (%.0f MiB/s)", us / 1e6, mb / (us / 1e6) }'
    else
        awk -v us="$2" 'BEGIN { printf "%.2f s", us / 1e6 }'
    fi
}

echo
echo "## tresor vs gocryptfs vs plain — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)," \
    "kernel $(uname -r), backing fs $(df --output=fstype "$WORK" | tail -1) on $(df --output=source "$WORK" | tail -1)," \
    "$(gocryptfs -version | head -1 | cut -d';' -f1), tresor threads ${TRESOR_THREADS:-default}"
echo "median of $RUNS run(s); caches dropped before every phase: $([[ $CAN_DROP == 1 ]] && echo yes || echo NO)"
echo
echo "| row | plain | gocryptfs | tresor | tresor/gocryptfs | tresor/plain |"
echo "|---|---:|---:|---:|---:|---:|"
for ph in "${PHASES[@]}"; do
    p=$(median "$ph" plain); g=$(median "$ph" gocryptfs); t=$(median "$ph" tresor)
    ratio=$(awk -v t="$t" -v g="$g" 'BEGIN { printf "%.2f", t / g }')
    rplain=$(awk -v t="$t" -v p="$p" 'BEGIN { printf "%.1f×", t / p }')
    echo "| $(label "$ph") | $(cell "$ph" "$p") | $(cell "$ph" "$g") | $(cell "$ph" "$t") | $ratio | $rplain |"
done
echo
echo "ratio = time(tresor) / time(gocryptfs): < 1.0 means tresor is faster."
echo
echo "Peak RSS of the drivers (VmHWM, MiB; reset before each phase; runs separated by /):"
echo
echo "| phase | gocryptfs | tresor |"
echo "|---|---|---|"
for ph in write64 "${PHASES[@]}"; do
    row=""
    for fs in gocryptfs tresor; do
        row+=" | $(awk -v p="$ph" -v f="$fs" '$1 == p && $2 == f { printf "%s%.0f", sep, $4 / 1024; sep = " / " }' "$RSS")"
    done
    name=$( [[ $ph == write64 ]] && echo "write 64 MiB (before the runs)" || label "$ph")
    echo "| $name$row |"
done
if [[ -n $RAW_MIBS ]]; then
    tr_read=$(median read tresor)
    awk -v raw="$RAW_MIBS" -v us="$tr_read" -v mb="$SIZE_MB" 'BEGIN {
        r = mb / (us / 1e6);
        printf "\nraw AES-256-GCM-SIV open, one core (criterion block/open_1m): %d MiB/s\n", raw;
        printf "tresor streaming read: %.0f MiB/s = %.2fx slower than raw (%s the 2x target)\n",
            r, raw / r, (raw / r <= 2.0) ? "within" : "OUTSIDE" }'
fi
echo
echo "<details><summary>all samples (phase fs microseconds)</summary>"
echo
echo '```'
cat "$SAMPLES"
echo '```'
echo "</details>"

# ---- CPU-bound streaming (issue 19): its own mounts, backing stores on a tmpfs ----
if [[ ${SKIP_STREAM:-0} != 1 ]]; then
    TRESOR_BIN=$BIN RUNS=$RUNS "$REPO/tools/bench-stream.sh" || die "tools/bench-stream.sh failed"
fi
