#!/usr/bin/env bash
# POSIX conformance: the C pjdfstest suite (pjd/pjdfstest @85a8aea, vendored
# in third_party/) run with `prove -r` from inside a mounted data group.
#
# Usage:  tools/pjdfstest.sh [--gocryptfs] [BASE_DIR]   (BASE_DIR default: /var/tmp)
#   (default)     mount a fresh tresor store with --allow-other, run the suite,
#                 and fail (exit 1) if a subtest fails that is not on the
#                 accepted list in docs/POSIX.md (that list only ever shrinks)
#   --gocryptfs   the same suite over a fresh gocryptfs mount (-allow_other),
#                 for the side-by-side count; never compared with the list
# Env:    TRESOR_BIN=…   this binary instead of target/debug/tresor (built with
#                        `cargo build --locked` if absent)
#         PJDFSTEST_DIR=…  an already built pjdfstest tree (skips the build)
#         PROVE_TESTS="mkdir rename"  only these test directories
#         FAILED_OUT=FILE  also write the failing subtests ("dir/NN.t N") to FILE
#         KEEP=1          keep the work directory (it is always unmounted)
# Needs root (the suite changes owners and makes device nodes), fuse3,
# autoconf automake libtool make cc (build) and perl's prove.
set -euo pipefail

MODE=tresor
if [[ ${1:-} == --gocryptfs ]]; then
    MODE=gocryptfs
    shift
fi
BASE=${1:-/var/tmp}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARBALL=$REPO/third_party/pjdfstest-85a8aea.tar.gz
ACCEPTED_DOC=$REPO/docs/POSIX.md

die() { echo "pjdfstest: $*" >&2; exit 2; }
log() { echo "pjdfstest: $*" >&2; }

[[ $(id -u) -eq 0 ]] || die "must run as root (the suite chowns files and makes device nodes)"
[[ -d $BASE ]] || die "base directory $BASE does not exist"
for tool in prove fusermount3 mountpoint perl; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install fuse3 perl)"
done
[[ $MODE == tresor ]] || command -v gocryptfs >/dev/null || die "gocryptfs is not installed"

WORK=$(mktemp -d "$BASE/tresor-pjdfstest.XXXXXX") || die "cannot create a work directory under $BASE"
chmod 755 "$WORK"
MNT=$WORK/mnt
cleanup() {
    local rc=$?
    set +e
    cd /
    if mountpoint -q "$MNT" 2>/dev/null; then
        fusermount3 -u "$MNT" 2>/dev/null || { sleep 1; fusermount3 -u "$MNT" 2>/dev/null; } \
            || fusermount3 -uz "$MNT" 2>/dev/null || log "could not unmount $MNT"
    fi
    if [[ ${KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---- build pjdfstest ----
if [[ -n ${PJDFSTEST_DIR:-} ]]; then
    PJD=$PJDFSTEST_DIR
else
    for tool in autoreconf make cc; do
        command -v "$tool" >/dev/null \
            || die "$tool is not installed (apt-get install autoconf automake libtool build-essential)"
    done
    [[ -f $TARBALL ]] || die "missing $TARBALL"
    log "building pjdfstest from $(basename "$TARBALL")"
    tar -C "$WORK" -xzf "$TARBALL"
    PJD=$WORK/pjdfstest
    (cd "$PJD" && autoreconf -ifs && ./configure && make) >"$WORK/build.log" 2>&1 \
        || { tail -20 "$WORK/build.log" >&2; die "pjdfstest build failed (log above)"; }
fi
[[ -x $PJD/pjdfstest && -d $PJD/tests ]] || die "no built pjdfstest in $PJD"
# The tests run helpers as other users: the tree must be readable by all.
chmod -R a+rX "$PJD"

# ---- the filesystem under test ----
mkdir -p "$MNT"
PASS=$WORK/passphrase
printf 'pjdfstest-%s\n' "$RANDOM$RANDOM" >"$PASS"
chmod 600 "$PASS"
if [[ $MODE == tresor ]]; then
    BIN=${TRESOR_BIN:-$REPO/target/debug/tresor}
    if [[ -z ${TRESOR_BIN:-} && ! -x $BIN ]]; then
        log "building tresor (cargo build --locked)"
        (cd "$REPO" && cargo build --locked --quiet) || die "cargo build failed"
    fi
    [[ -x $BIN ]] || die "no tresor binary at $BIN"
    # The driver's state (control socket, log) stays in the work directory.
    export HOME=$WORK/home XDG_STATE_HOME=$WORK/state XDG_RUNTIME_DIR=$WORK/run \
        TRESOR_RUNTIME_DIR=$WORK/run/tresor
    mkdir -p "$HOME" "$XDG_STATE_HOME" "$TRESOR_RUNTIME_DIR"
    chmod 700 "$XDG_RUNTIME_DIR"
    "$BIN" init "$WORK/store" --pse "$WORK/admin.pse" --passphrase-file "$PASS" \
        --kdf-memory-mib 8 >/dev/null
    "$BIN" datagroup add "$WORK/store" posix --pse "$WORK/admin.pse" \
        --passphrase-file "$PASS" >/dev/null
    "$BIN" mount "$WORK/store" "$MNT" --pse "$WORK/admin.pse" --passphrase-file "$PASS" \
        --allow-other --idle-lock 0 --log "$WORK/mount.log" >/dev/null
    mountpoint -q "$MNT" || die "tresor did not mount on $MNT"
    RUNDIR=$MNT/posix
    VERSION=$("$BIN" --version)
else
    mkdir "$WORK/cipher"
    gocryptfs -q -init -extpass "cat $PASS" "$WORK/cipher" >/dev/null
    gocryptfs -q -allow_other -extpass "cat $PASS" "$WORK/cipher" "$MNT"
    mountpoint -q "$MNT" || die "gocryptfs did not mount on $MNT"
    RUNDIR=$MNT
    VERSION=$(gocryptfs -version | head -1)
fi
[[ -d $RUNDIR ]] || die "$RUNDIR is not a directory"
chmod 755 "$RUNDIR"

# ---- run ----
TESTS=()
if [[ -n ${PROVE_TESTS:-} ]]; then
    for t in $PROVE_TESTS; do TESTS+=("$PJD/tests/$t"); done
else
    TESTS=("$PJD/tests")
fi
log "running prove -r over $MODE ($VERSION) in $RUNDIR"
OUT=$WORK/prove.out
t0=$(date +%s)
# prove exits non-zero when anything fails: the summary decides.
(cd "$RUNDIR" && prove -r "${TESTS[@]}") >"$OUT" 2>&1 || true
t1=$(date +%s)
log "prove took $((t1 - t0)) s"
if [[ $MODE == tresor ]] && ! mountpoint -q "$MNT"; then
    tail -30 "$WORK/mount.log" >&2 || true
    die "the tresor mount went away during the run (driver log above)"
fi

# The summary report: "<path>/dir/NN.t (Wstat: … Tests: … Failed: …)"
# followed by "  Failed tests?:  1-3, 7" and/or "  Parse errors: …".
FAILED=$WORK/failed
perl -ne '
    if (m{^(\S*/tests/)?(\S+\.t)\s+\(Wstat: (\d+) Tests: (\d+) Failed: (\d+)\)}) {
        $f = $2; $in_list = 0; next;
    }
    next unless defined $f;
    # A long list wraps onto lines of numbers only.
    if (/^\s+Failed tests?:\s+(.*)$/ or ($in_list and /^\s+(\d[\d,\s-]*)$/)) {
        $in_list = 1;
        for my $r (split /,\s*/, $1 =~ s/\s+$//r) {
            my ($a, $b) = split /-/, $r;
            $b //= $a;
            print "$f $_\n" for $a .. $b;
        }
        next;
    }
    $in_list = 0;
    if (/^\s+Parse errors:/) {
        print "$f plan\n";
    } elsif (!/^\s/) {
        undef $f;
    }
' "$OUT" | sort -u >"$FAILED"
sed -n '/^Test Summary Report/,$p' "$OUT" >&2
RESULT=$(grep -E '^(Files=|Result:)' "$OUT" | tr '\n' ' ')
NFAIL=$(wc -l <"$FAILED")
NFILES=$(cut -d' ' -f1 "$FAILED" | sort -u | wc -l)
[[ -n ${FAILED_OUT:-} ]] && cp "$FAILED" "$FAILED_OUT"
log "$MODE: $NFAIL failing subtests in $NFILES files ($RESULT)"
if [[ $MODE == gocryptfs ]]; then
    sed 's/^/pjdfstest: failing: /' "$FAILED" >&2
    exit 0
fi

# ---- compare with the accepted list (docs/POSIX.md) ----
# Rows between the markers: | `dir/NN.t` | 1-3, 7 | reason |
ACCEPTED=$WORK/accepted
sed -n '/<!-- pjdfstest-accepted:begin -->/,/<!-- pjdfstest-accepted:end -->/p' "$ACCEPTED_DOC" \
    | perl -ne '
        next unless /^\|\s*`([^`]+\.t)`\s*\|\s*([^|]+?)\s*\|/;
        my $f = $1;
        for my $r (split /,\s*/, $2) {
            if ($r eq "plan") { print "$f plan\n"; next }
            my ($a, $b) = split /-/, $r;
            $b //= $a;
            print "$f $_\n" for $a .. $b;
        }
    ' | sort -u >"$ACCEPTED"
NEW=$(comm -23 "$FAILED" "$ACCEPTED")
FIXED=$(comm -13 "$FAILED" "$ACCEPTED")
if [[ -n $FIXED ]]; then
    log "accepted failures that now pass (remove them from docs/POSIX.md):"
    sed 's/^/pjdfstest:   /' <<<"$FIXED" >&2
fi
if [[ -n $NEW ]]; then
    log "FAILED: subtests failing that are not on the accepted list in docs/POSIX.md:"
    sed 's/^/pjdfstest:   /' <<<"$NEW" >&2
    for f in $(cut -d' ' -f1 <<<"$NEW" | sort -u); do
        log "--- prove -v $f:"
        (cd "$RUNDIR" && prove -v "$PJD/tests/$f" 2>&1 | grep -E '^not ok' | head -20) >&2 || true
    done
    exit 1
fi
log "ok: every failing subtest is on the accepted list"
