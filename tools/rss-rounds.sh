#!/usr/bin/env bash
# Does the driver's memory grow with the run's length? ROUNDS rounds of the
# metadata rows of tools/bench-fs.sh (untar NFILES files + sync, md5sum
# with the caches dropped, rm -rf + sync) on one tresor mount, gocryptfs
# beside it as the reference; each driver's RSS after every round and its
# peak (VmHWM) over the round. With BIG_MB=N each round first writes an
# N MiB file (dd bs=1M conv=fsync) and reads it back cold, as bench-fs's
# 1 GiB rows do.
#
# Usage:  tools/rss-rounds.sh [ROUNDS]        (default 10)
# Env:    NFILES=10000, BIG_MB=0, TRESOR_BIN=…, KEEP=1 (as tools/bench-fs.sh). Root.
set -euo pipefail

ROUNDS=${1:-10}
NFILES=${NFILES:-10000}
BIG_MB=${BIG_MB:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "rss-rounds: $*" >&2; exit 1; }
log() { echo "rss-rounds: $*" >&2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $NFILES =~ ^[1-9][0-9]*$ ]] || die "ROUNDS and NFILES must be positive integers"
[[ $BIG_MB =~ ^[0-9]+$ ]] || die "BIG_MB must be a number of MiB (0: no big file)"
[[ $(id -u) -eq 0 ]] || die "needs root (drop_caches)"

WORK=$(mktemp -d /var/tmp/tresor-rss.XXXXXX)
# shellcheck source=tools/bench-mounts.sh
source "$REPO/tools/bench-mounts.sh"
bench_binary
bench_mount
bench_tree "$WORK/tree.tar" "$NFILES"
TPID=$(pgrep -f -- "mount $WORK/tresor-store $TMNT" | head -1)
GPID=$(pgrep -f -- "gocryptfs.*$GMNT" | head -1)
[[ -n $TPID && -n $GPID ]] || die "cannot find the drivers' processes"
kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

echo "| round | tresor RSS (MiB) | tresor peak | gocryptfs RSS | gocryptfs peak |"
echo "|---:|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
    for pid in "$TPID" "$GPID"; do echo 5 >"/proc/$pid/clear_refs"; done
    for d in "$TMNT/bench" "$GMNT"; do
        if ((BIG_MB > 0)); then
            dd if=/dev/zero of="$d/big" bs=1M count="$BIG_MB" conv=fsync status=none
            echo 3 >/proc/sys/vm/drop_caches
            dd if="$d/big" of=/dev/null bs=1M status=none
            rm -f "$d/big"
        fi
        tar -C "$d" -xf "$WORK/tree.tar" && sync
        echo 3 >/proc/sys/vm/drop_caches
        find "$d/tree" -type f -print0 | xargs -0 md5sum >/dev/null
        rm -rf "$d/tree" && sync
    done
    echo 3 >/proc/sys/vm/drop_caches
    awk -v r="$r" -v a="$(kb "$TPID" VmRSS)" -v b="$(kb "$TPID" VmHWM)" \
        -v c="$(kb "$GPID" VmRSS)" -v d="$(kb "$GPID" VmHWM)" \
        'BEGIN { printf "| %d | %.1f | %.1f | %.1f | %.1f |\n", r, a / 1024, b / 1024, c / 1024, d / 1024 }'
done
