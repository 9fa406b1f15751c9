#!/usr/bin/env bash
# CPU-bound streaming (issue 19, target 3): tresor vs gocryptfs vs a plain
# directory with the disk out of the picture, in ONE run.
#
# Every backing store (the plain directory, gocryptfs's cipher directory,
# tresor's store) lives on a tmpfs (default /dev/shm), so
#   - a read finds its backing file in memory (the page cache of a tmpfs is
#     the file; no drop_caches, nothing to drop), and
#   - a write ends in memory, with no write-back to a disk competing for the
#     two cores (dd without conv=fsync: an fsync on tmpfs does nothing).
# What is left is the CPU: the FUSE round trips, the copies and the cipher.
# Before each timed read the mount's own cached plaintext of the file is
# dropped (posix_fadvise DONTNEED through `dd iflag=nocache count=0`), so
# gocryptfs and tresor decrypt every byte each time, however their page
# caching is set; the plain file stays in memory.
#
# Usage:  tools/bench-stream.sh             (tools/bench-fs.sh runs it too)
# Env:    STREAM_MB=1024   size of the file
#         RUNS=3           repetitions; the table shows the median
#         STREAM_BASE=/dev/shm   a tmpfs for the three backing stores
#         TRESOR_BIN=…     use this binary instead of `cargo build --release`
#         TRESOR_THREADS=N pass --threads N to `tresor mount`
# Quick run: STREAM_MB=256 RUNS=1 tools/bench-stream.sh
set -euo pipefail

STREAM_MB=${STREAM_MB:-1024}
RUNS=${RUNS:-3}
SBASE=${STREAM_BASE:-/dev/shm}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FSES=(plain gocryptfs tresor)

die() { echo "bench-stream: $*" >&2; exit 1; }
log() { echo "bench-stream: $*" >&2; }

for n in "$STREAM_MB" "$RUNS"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "STREAM_MB and RUNS must be positive integers (got '$n')"
done
[[ -d $SBASE ]] || die "STREAM_BASE $SBASE does not exist"
for tool in gocryptfs fusermount3 dd awk pgrep; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
FSTYPE=$(df --output=fstype "$SBASE" | tail -1 | tr -d ' ')
[[ $FSTYPE == tmpfs ]] || log "WARNING: $SBASE is $FSTYPE, not tmpfs: the disk may be in the picture"

WORK=$(mktemp -d "$SBASE/tresor-stream.XXXXXX") || die "cannot create a work directory under $SBASE"
# shellcheck source=tools/bench-mounts.sh
source "$REPO/tools/bench-mounts.sh"
bench_binary
bench_mount
# The driver process of a mount (for its CPU time); none for plain.
driver_pid() {
    case $1 in
        gocryptfs) pgrep -f -- "gocryptfs.*$WORK/gocryptfs-cipher" | head -1 ;;
        tresor) pgrep -f -- "mount $WORK/tresor-store" | head -1 ;;
        *) true ;;
    esac
}
cpu_ticks() { # pid -> utime + stime of all its threads, in clock ticks
    [[ -n $1 ]] || { echo 0; return; }
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
HZ=$(getconf CLK_TCK)

ph_write() { dd if=/dev/zero of="$1/stream" bs=1M count="$STREAM_MB" status=none; }
ph_read() { dd if="$1/stream" of=/dev/null bs=1M status=none; }

SAMPLES=$WORK/samples
: >"$SAMPLES"
now_ns() { date +%s%N; }
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for ((run = 1; run <= RUNS; run++)); do
    for fs in "${FSES[@]}"; do
        d=$(dir_of "$fs")
        pid=$(driver_pid "$fs")
        log "run $run/$RUNS: $fs"
        for ph in write read; do
            if [[ $ph == write ]]; then
                rm -f "$d/stream"
            elif [[ $fs != plain ]]; then
                # The mount's cached plaintext goes; its backing file stays.
                dd if="$d/stream" iflag=nocache count=0 status=none
            fi
            c0=$(cpu_ticks "$pid")
            t0=$(now_ns)
            "ph_$ph" "$d" || die "phase $ph failed on $fs"
            t1=$(now_ns)
            c1=$(cpu_ticks "$pid")
            # phase fs microseconds driver-cpu-ticks
            echo "$ph $fs $(((t1 - t0) / 1000)) $((c1 - c0))" >>"$SAMPLES"
        done
        [[ $(stat -c %s "$d/stream") == $((STREAM_MB * 1048576)) ]] || die "$fs: the file has the wrong size"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
[[ -z $(grep -i panic "$WORK/tresor.log" 2>/dev/null) ]] || die "tresor logged a panic"

median() { # phase fs column -> median of that column
    awk -v p="$1" -v f="$2" -v c="$3" '$1 == p && $2 == f { print $c }' "$SAMPLES" | sort -n \
        | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
gbs() { awk -v us="$1" -v mb="$STREAM_MB" 'BEGIN { printf "%.2f", mb * 1048576 / 1e9 / (us / 1e6) }'; }

echo
echo "## CPU-bound streaming — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)," \
    "kernel $(uname -r), backing stores on $FSTYPE ($SBASE), $(gocryptfs -version | head -1 | cut -d';' -f1)," \
    "tresor threads ${TRESOR_THREADS:-default}; load average before $LOAD_BEFORE, after $LOAD_AFTER"
echo "median of $RUNS run(s); dd bs=1M of a ${STREAM_MB} MiB file; GB/s = 10^9 bytes/s;" \
    "driver cores = driver CPU time / wall time;" \
    "driver CPU s/GB = driver CPU time per 10^9 bytes (the least sensitive to other load)"
echo
echo "ratios are of throughput (above 1: tresor is faster)"
echo
echo "| row | plain | gocryptfs | tresor | tresor/plain | tresor/gocryptfs | driver cores gocryptfs / tresor | driver CPU s/GB gocryptfs / tresor |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for ph in write read; do
    p=$(median "$ph" plain 3); g=$(median "$ph" gocryptfs 3); t=$(median "$ph" tresor 3)
    gc=$(median "$ph" gocryptfs 4); tc=$(median "$ph" tresor 4)
    awk -v ph="$ph" -v mb="$STREAM_MB" -v p="$p" -v g="$g" -v t="$t" -v gc="$gc" -v tc="$tc" -v hz="$HZ" 'BEGIN {
        B = mb * 1048576 / 1e9
        printf "| stream %s %d MiB | %.2f GB/s | %.2f GB/s | %.2f GB/s | %.2f | %.2f | %.2f / %.2f | %.2f / %.2f |\n",
            ph, mb, B / (p / 1e6), B / (g / 1e6), B / (t / 1e6), p / t, g / t,
            (gc / hz) / (g / 1e6), (tc / hz) / (t / 1e6), (gc / hz) / B, (tc / hz) / B }'
done
rp=$(median read plain 3); rt=$(median read tresor 3)
wp=$(median write plain 3); wt=$(median write tresor 3)
awk -v rp="$rp" -v rt="$rt" -v wp="$wp" -v wt="$wt" -v r="$(gbs "$rt")" 'BEGIN {
    printf "\ntargets: read >= 0.5x plain: %.2fx (%s); write >= 0.5x plain: %.2fx (%s); read >= 1.5 GB/s: %s GB/s (%s)\n",
        rp / rt, (rp / rt >= 0.5) ? "met" : "MISSED", wp / wt, (wp / wt >= 0.5) ? "met" : "MISSED",
        r, (r >= 1.5) ? "met" : "MISSED" }'
echo
echo "<details><summary>all samples (phase fs microseconds driver-cpu-ticks at ${HZ} Hz)</summary>"
echo
echo '```'
cat "$SAMPLES"
echo '```'
echo "</details>"
