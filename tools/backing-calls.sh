#!/usr/bin/env bash
# Backing system calls per file of the tresor driver, per metadata phase of
# tools/bench-fs.sh (untar + sync, ls -lR, md5sum cold and warm, rm -rf +
# sync) on a tree of NFILES files: `strace -f -c` attached to the driver
# around each phase. The driver's reads of /dev/fuse (one per request) and
# its replies (writev) are listed too; the other calls are what it asks of
# the backing store. Counts, not times: they hold on a noisy machine.
#
# Usage:  tools/backing-calls.sh [BASE_DIR]     (BASE_DIR default: /var/tmp)
# Env:    NFILES=1000, TRESOR_BIN=…, KEEP=1 (as tools/bench-fs.sh)
# Needs root (drop_caches) and strace.
set -euo pipefail

NFILES=${NFILES:-1000}
BASE=${1:-/var/tmp}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "backing-calls: $*" >&2; exit 1; }
log() { echo "backing-calls: $*" >&2; }

[[ $NFILES =~ ^[1-9][0-9]*$ ]] || die "NFILES must be a positive integer (got '$NFILES')"
[[ $(id -u) -eq 0 ]] || die "needs root (drop_caches)"
for tool in strace gocryptfs fusermount3 tar md5sum find xargs; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

WORK=$(mktemp -d "$BASE/tresor-calls.XXXXXX") || die "cannot create a work directory under $BASE"
# shellcheck source=tools/bench-mounts.sh
source "$REPO/tools/bench-mounts.sh"
bench_binary
bench_mount
TAR=$WORK/tree.tar
bench_tree "$TAR" "$NFILES"
PID=$(pgrep -f " mount $WORK/tresor-store " | head -1)
[[ -n $PID ]] || die "no tresor driver found for $WORK/tresor-store"
D=$TMNT/bench

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
echo "Driver system calls per file, $NFILES files (tresor $("$BIN" --version 2>/dev/null | awk '{print $2}'))"
for ph in untar ls md5 md5warm rm; do
    [[ $ph == md5warm ]] || drop_caches
    out=$WORK/$ph.strace
    strace -f -c -o "$out" -p "$PID" 2>/dev/null &
    st=$!
    # strace prints nothing when it has attached: wait for its ptrace.
    for _ in $(seq 100); do
        grep -q "TracerPid:[[:space:]]*$st" "/proc/$PID/status" 2>/dev/null && break
        sleep 0.05
    done
    case $ph in
        untar) tar -C "$D" -xf "$TAR" && sync ;;
        ls) ls -lR "$D/tree" >/dev/null ;;
        md5 | md5warm) find "$D/tree" -type f -print0 | xargs -0 md5sum >/dev/null ;;
        rm) rm -rf "$D/tree" && sync ;;
    esac
    kill -INT "$st"
    wait "$st" || true
    # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall.
    awk -v n="$NFILES" -v p="$ph" '
        $NF != "total" && $NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ {
            c = $4; name = $NF
            calls[name] += c
            if (name != "read" && name != "writev" && name != "futex" && name != "clock_nanosleep" && name != "restart_syscall" && name != "rt_sigtimedwait" && name != "accept4") backing += c
        }
        END {
            printf "%-8s backing calls per file: %.1f  (", p, backing / n
            m = 0
            for (k in calls) { order[++m] = k }
            for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (calls[order[j]] > calls[order[i]]) { t = order[i]; order[i] = order[j]; order[j] = t }
            for (i = 1; i <= m && i <= 10; i++) printf "%s%s %.2f", (i > 1 ? ", " : ""), order[i], calls[order[i]] / n
            print ")"
        }' "$out"
done
