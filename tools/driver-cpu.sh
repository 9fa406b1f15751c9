#!/usr/bin/env bash
# Wall time and the drivers' CPU time (user and kernel) per file, tresor
# beside gocryptfs, for the metadata phases of tools/bench-fs.sh (untar +
# sync, ls -lR, md5sum cold and warm, rm -rf + sync) on NFILES files. The
# CPU times are the drivers' utime/stime from /proc/PID/stat before and
# after each phase. One run, tresor first in each phase: on a VM that has
# just freed much memory the first to touch it pays (docs/PERFORMANCE.md),
# so run it twice and read the second.
#
# Usage:  tools/driver-cpu.sh [BASE_DIR]     (BASE_DIR default: /var/tmp)
# Env:    NFILES=10000, TRESOR_BIN=…, KEEP=1 (as tools/bench-fs.sh)
# Needs root (drop_caches).
set -euo pipefail

NFILES=${NFILES:-10000}
BASE=${1:-/var/tmp}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "driver-cpu: $*" >&2; exit 1; }
log() { echo "driver-cpu: $*" >&2; }

[[ $NFILES =~ ^[1-9][0-9]*$ ]] || die "NFILES must be a positive integer (got '$NFILES')"
[[ $(id -u) -eq 0 ]] || die "needs root (drop_caches)"
for tool in gocryptfs fusermount3 tar md5sum find xargs; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

WORK=$(mktemp -d "$BASE/tresor-cpu.XXXXXX") || die "cannot create a work directory under $BASE"
# shellcheck source=tools/bench-mounts.sh
source "$REPO/tools/bench-mounts.sh"
bench_binary
bench_mount
TAR=$WORK/tree.tar
bench_tree "$TAR" "$NFILES"
TPID=$(pgrep -f " mount $WORK/tresor-store " | head -1)
GPID=$(pgrep -f "gocryptfs .*$WORK/gocryptfs-cipher" | head -1)
[[ -n $TPID && -n $GPID ]] || die "cannot find the drivers' pids"
TICK=$(getconf CLK_TCK)

cpu() { awk '{ print $14, $15 }' "/proc/$1/stat"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
echo "µs per file, $NFILES files, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| phase | wall tresor | wall gocryptfs | driver user tresor | gocryptfs | driver sys tresor | gocryptfs |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for ph in untar ls md5 md5warm rm; do
    row=()
    for fs in tresor gocryptfs; do
        if [[ $fs == tresor ]]; then d=$TMNT/bench pid=$TPID; else d=$GMNT pid=$GPID; fi
        [[ $ph == md5warm ]] || drop_caches
        read -r u0 s0 < <(cpu "$pid")
        t0=$(date +%s%N)
        case $ph in
            untar) tar -C "$d" -xf "$TAR" && sync ;;
            ls) ls -lR "$d/tree" >/dev/null ;;
            md5 | md5warm) find "$d/tree" -type f -print0 | xargs -0 md5sum >/dev/null ;;
            rm) rm -rf "$d/tree" && sync ;;
        esac
        t1=$(date +%s%N)
        read -r u1 s1 < <(cpu "$pid")
        row+=("$(( (t1 - t0) / 1000 / NFILES ))" \
            "$(( (u1 - u0) * 1000000 / TICK / NFILES ))" \
            "$(( (s1 - s0) * 1000000 / TICK / NFILES ))")
    done
    echo "| $ph | ${row[0]} | ${row[3]} | ${row[1]} | ${row[4]} | ${row[2]} | ${row[5]} |"
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
