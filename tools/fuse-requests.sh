#!/usr/bin/env bash
# FUSE requests per file, tresor beside gocryptfs: the metadata phases of
# tools/bench-fs.sh (untar + sync, ls -lR, md5sum cold, md5sum warm,
# rm -rf + sync) on a tree of NFILES files, each phase counted with the
# kernel's own tracepoint fuse:fuse_request_send, filtered to the mount's
# connection. Counts, not times: they do not depend on the machine's noise.
#
# Usage:  tools/fuse-requests.sh [BASE_DIR]     (BASE_DIR default: /var/tmp)
# Env:    NFILES=1000, TRESOR_BIN=…, KEEP=1 (as tools/bench-fs.sh)
# Needs root (tracefs, drop_caches). Run nothing else on FUSE meanwhile.
set -euo pipefail

NFILES=${NFILES:-1000}
BASE=${1:-/var/tmp}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRACE=/sys/kernel/tracing
EVENT=$TRACE/events/fuse/fuse_request_send

die() { echo "fuse-requests: $*" >&2; exit 1; }
log() { echo "fuse-requests: $*" >&2; }

[[ $NFILES =~ ^[1-9][0-9]*$ ]] || die "NFILES must be a positive integer (got '$NFILES')"
[[ $(id -u) -eq 0 ]] || die "needs root (tracefs and drop_caches)"
[[ -d $EVENT ]] || mountpoint -q $TRACE || mount -t tracefs nodev $TRACE
[[ -d $EVENT ]] || die "no fuse:fuse_request_send tracepoint in $TRACE (kernel too old?)"
for tool in gocryptfs fusermount3 tar md5sum find xargs; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

WORK=$(mktemp -d "$BASE/tresor-requests.XXXXXX") || die "cannot create a work directory under $BASE"
# shellcheck source=tools/bench-mounts.sh
source "$REPO/tools/bench-mounts.sh"
trace_off() {
    echo 0 >"$EVENT/enable" 2>/dev/null || true
    echo 0 >"$EVENT/filter" 2>/dev/null || true
}
trap 'rc=$?; trace_off; bench_cleanup "$rc"' EXIT
bench_binary
bench_mount
TAR=$WORK/tree.tar
bench_tree "$TAR" "$NFILES"

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
ph_untar() { tar -C "$1" -xf "$TAR" && sync; }
ph_ls() { ls -lR "$1/tree" >/dev/null; }
ph_md5() { find "$1/tree" -type f -print0 | xargs -0 md5sum >/dev/null; }
ph_md5warm() { ph_md5 "$1"; }
ph_rm() { rm -rf "$1/tree" && sync; }
PHASES=(untar ls md5 md5warm rm)

COUNTS=$WORK/counts
: >"$COUNTS"
for fs in gocryptfs tresor; do
    d=$(dir_of "$fs")
    mnt=$TMNT
    [[ $fs == gocryptfs ]] && mnt=$GMNT
    # The tracepoint's connection is the superblock's device number.
    echo "connection == $(stat -c %d "$mnt")" >"$EVENT/filter"
    for ph in "${PHASES[@]}"; do
        [[ $ph == md5warm ]] || drop_caches
        echo >"$TRACE/trace"
        echo 1 >"$EVENT/enable"
        "ph_$ph" "$d" || die "phase $ph failed on $fs"
        echo 0 >"$EVENT/enable"
        grep -o '(FUSE_[A-Z_]*)' "$TRACE/trace" | tr -d '()' | sort | uniq -c \
            | awk -v p="$ph" -v f="$fs" '{ print p, f, $2, $1 }' >>"$COUNTS"
    done
done
trace_off

echo "FUSE requests per phase, $NFILES files ($(uname -r), tresor $("$BIN" --version 2>/dev/null | awk '{print $2}'))"
echo
echo "| phase | request | gocryptfs | tresor |"
echo "|---|---|---:|---:|"
for ph in "${PHASES[@]}"; do
    awk -v p="$ph" -v n="$NFILES" '
        $1 == p { c[$3, $2] = $4; r[$3] = 1; t[$2] += $4 }
        END {
            for (q in r) printf "| %s | %s | %d | %d |\n", p, substr(q, 6), c[q, "gocryptfs"], c[q, "tresor"]
            printf "| %s | **per file** | **%.1f** | **%.1f** |\n", p, t["gocryptfs"] / n, t["tresor"] / n
        }' "$COUNTS" | sort -t'|' -k3,3 | awk '/per file/ { last = $0; next } { print } END { print last }'
done
