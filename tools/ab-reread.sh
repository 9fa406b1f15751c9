#!/usr/bin/env bash
# A/B of two tresor binaries on the md5sum rows of tools/bench-fs.sh: one
# store of NFILES files, mounted by A and by B in turn (the order swapped
# every other round), md5sum of the whole tree with the caches dropped
# ("cold") and right again ("warm"). Prints each round and the medians of
# the per-round ratios B/A — the same store and the same minute for both.
#
# Usage:  tools/ab-reread.sh BIN_A BIN_B [ROUNDS]   (ROUNDS default 8)
# Env:    NFILES=10000, KEEP=1 (as tools/bench-fs.sh). Needs root (drop_caches).
set -euo pipefail

A=${1:?usage: tools/ab-reread.sh BIN_A BIN_B [ROUNDS]}
B=${2:?usage: tools/ab-reread.sh BIN_A BIN_B [ROUNDS]}
ROUNDS=${3:-8}
NFILES=${NFILES:-10000}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "ab-reread: $*" >&2; exit 1; }
log() { echo "ab-reread: $*" >&2; }
[[ -x $A && -x $B ]] || die "BIN_A and BIN_B must be tresor binaries"
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $NFILES =~ ^[1-9][0-9]*$ ]] || die "ROUNDS and NFILES must be positive integers"
[[ $(id -u) -eq 0 ]] || die "needs root (drop_caches)"

WORK=$(mktemp -d /var/tmp/tresor-ab.XXXXXX)
# shellcheck source=tools/bench-mounts.sh
source "$REPO/tools/bench-mounts.sh"
BIN=$A
bench_mount # also a gocryptfs mount, unused here; TMNT is A's
bench_tree "$WORK/tree.tar" "$NFILES"
tar -C "$TMNT/bench" -xf "$WORK/tree.tar" && sync
fusermount3 -u "$TMNT"

now() { date +%s%N; }
md5_tree() { find "$TMNT/bench/tree" -type f -print0 | xargs -0 md5sum >/dev/null; }
OUT=$WORK/rounds
: >"$OUT"
for r in $(seq "$ROUNDS"); do
    pair=(A B)
    ((r % 2)) || pair=(B A)
    for v in "${pair[@]}"; do
        bin=$A
        [[ $v == B ]] && bin=$B
        "$bin" mount "$WORK/tresor-store" "$TMNT" --pse "$WORK/admin.pse" \
            --passphrase-file "$PASS" >/dev/null || die "$v did not mount"
        sync
        echo 3 >/proc/sys/vm/drop_caches
        t0=$(now); md5_tree; t1=$(now); md5_tree; t2=$(now)
        fusermount3 -u "$TMNT"
        echo "$r $v $(((t1 - t0) / 1000)) $(((t2 - t1) / 1000))" | tee -a "$OUT" >&2
    done
done
python3 - "$OUT" <<'EOF'
import statistics, sys
t = {}
for line in open(sys.argv[1]):
    r, v, cold, warm = line.split()
    t.setdefault(v, {})[int(r)] = (int(cold) / 1e6, int(warm) / 1e6)
for i, name in enumerate(["cold", "warm"]):
    a = statistics.median(x[i] for x in t["A"].values())
    b = statistics.median(x[i] for x in t["B"].values())
    ratio = statistics.median(t["B"][r][i] / t["A"][r][i] for r in t["A"])
    print(f"md5sum {name}: A {a:.2f} s, B {b:.2f} s, B/A per round (median) {ratio:.2f}")
EOF
