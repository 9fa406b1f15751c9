# Shared by the bench and measuring tools in tools/ (sourced, not run):
# a tresor store and a gocryptfs filesystem in $WORK, mounted on $TMNT and
# $GMNT with one passphrase, a plain directory $WORK/plain beside them, and
# the EXIT trap that unmounts both (KEEP=1 keeps $WORK).
# Needs: WORK, REPO and die/log from the caller; TRESOR_BIN=… uses that
# binary instead of `cargo build --release` (bench_binary sets BIN);
# TRESOR_THREADS=N passes --threads N to `tresor mount`.

TMNT=$WORK/tresor-mnt
GMNT=$WORK/gocryptfs-mnt

# bench_cleanup [RC]: RC (default: the status it is called with) is the exit status.
bench_cleanup() {
    local rc=${1:-$?}
    set +e
    for m in "$TMNT" "$GMNT"; do
        if mountpoint -q "$m" 2>/dev/null; then
            fusermount3 -u "$m" 2>/dev/null || { sleep 1; fusermount3 -u "$m" 2>/dev/null; } \
                || fusermount3 -uz "$m" 2>/dev/null || log "could not unmount $m"
        fi
    done
    if [[ ${KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE # a closed pipe (| head) still unmounts

# BIN: $TRESOR_BIN, or the release build of $REPO.
bench_binary() {
    if [[ -n ${TRESOR_BIN:-} ]]; then
        BIN=$TRESOR_BIN
    else
        log "building tresor (cargo build --release) in $REPO"
        (cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
        BIN=$REPO/target/release/tresor
    fi
    [[ -x $BIN ]] || die "no tresor binary at $BIN"
}

# Where each filesystem's files go.
dir_of() {
    case $1 in
        plain) echo "$WORK/plain" ;;
        gocryptfs) echo "$GMNT" ;;
        tresor) echo "$TMNT/bench" ;;
    esac
}

# Sets up and mounts both (tresor with an 8 MiB KDF: the unlock is not measured).
bench_mount() {
    PASS=$WORK/passphrase
    printf 'bench-passphrase-%s\n' "$RANDOM$RANDOM" >"$PASS"
    chmod 600 "$PASS"
    mkdir -p "$TMNT" "$GMNT" "$WORK/plain" "$WORK/gocryptfs-cipher"
    log "setting up tresor (kdf 8 MiB) and gocryptfs in $WORK"
    "$BIN" init "$WORK/tresor-store" --pse "$WORK/admin.pse" --passphrase-file "$PASS" \
        --kdf-memory-mib 8 >/dev/null
    "$BIN" datagroup add "$WORK/tresor-store" bench --pse "$WORK/admin.pse" \
        --passphrase-file "$PASS" >/dev/null
    local args=()
    [[ -n ${TRESOR_THREADS:-} ]] && args+=(--threads "$TRESOR_THREADS")
    "$BIN" mount "$WORK/tresor-store" "$TMNT" --pse "$WORK/admin.pse" --passphrase-file "$PASS" \
        --log "$WORK/tresor.log" "${args[@]}" >/dev/null
    mountpoint -q "$TMNT" || die "tresor did not mount on $TMNT"
    [[ -d $TMNT/bench ]] || die "data group 'bench' not visible in the tresor mount"
    gocryptfs -q -init -extpass "cat $PASS" "$WORK/gocryptfs-cipher" >/dev/null
    gocryptfs -q -extpass "cat $PASS" "$WORK/gocryptfs-cipher" "$GMNT"
    mountpoint -q "$GMNT" || die "gocryptfs did not mount on $GMNT"
}

# bench_tree TAR N: a tar of N files of 1-8 KiB in 100 directories (tree/dNNN/).
bench_tree() {
    local tar=$1 n=$2
    if command -v python3 >/dev/null; then
        python3 - "$tar" "$n" <<'EOF'
import io, os, sys, tarfile, time
out, n = sys.argv[1], int(sys.argv[2])
now = int(time.time())
with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as t:
    for d in range(100):
        ti = tarfile.TarInfo(f"tree/d{d:03d}")
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, now
        t.addfile(ti)
    for i in range(n):
        size = 1024 + (i * 7919) % (7 * 1024 + 1)
        ti = tarfile.TarInfo(f"tree/d{i % 100:03d}/f{i:05d}.bin")
        ti.size, ti.mode, ti.mtime = size, 0o644, now
        t.addfile(ti, io.BytesIO(os.urandom(size)))
EOF
    else
        local src=$WORK/tree-src d i
        for ((d = 0; d < 100; d++)); do mkdir -p "$(printf '%s/tree/d%03d' "$src" "$d")"; done
        for ((i = 0; i < n; i++)); do
            head -c $((1024 + (i * 7919) % (7 * 1024 + 1))) /dev/urandom \
                >"$(printf '%s/tree/d%03d/f%05d.bin' "$src" $((i % 100)) "$i")"
        done
        tar -C "$src" -cf "$tar" tree
        rm -rf "$src"
    fi
}
