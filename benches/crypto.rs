//! Crypto micro-benchmarks (issue 2): block seal/open throughput, per-file key
//! derivation and the Argon2id unlock. Run with `cargo bench --bench crypto`;
//! the whole run takes about a minute.
//!
//! `block/open_4k` is the raw single-core AES-256-GCM-SIV open throughput that
//! `tools/bench-fs.sh` compares the FUSE streaming read against.

use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput,
};
use std::time::Duration;
use tresor::crypto::{derive_passphrase_key, Aead, KdfParams, SecretKey, NONCE_LEN, TAG_LEN};
use tresor::format::content::{block_aad, BLOCK_SIZE, CT_BLOCK_SIZE, FILE_ID_LEN};
use tresor::keyring::EpochKey;

const BLOCK: usize = BLOCK_SIZE as usize;
const CT_BLOCK: usize = CT_BLOCK_SIZE as usize;
/// Blocks in one FUSE request of 1 MiB (what `vfs::content` opens per read).
const CHUNK: usize = 256;
const FILE_ID: [u8; FILE_ID_LEN] = [7; FILE_ID_LEN];

fn blocks(c: &mut Criterion) {
    assert_eq!(CT_BLOCK, NONCE_LEN + BLOCK + TAG_LEN);
    let aead = Aead::new(&SecretKey::random());
    let plain = vec![0x5au8; BLOCK];
    let aad = block_aad(&FILE_ID, 42, false);
    let mut sealed = vec![0u8; CT_BLOCK];
    aead.seal_to_slice(&aad, &plain, &mut sealed);

    let mut g = c.benchmark_group("block");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(BLOCK as u64));

    // Includes the random nonce (thread_rng) and the plaintext copy, as in vfs::content.
    let mut out = vec![0u8; CT_BLOCK];
    g.bench_function("seal_4k", |b| {
        b.iter(|| aead.seal_to_slice(black_box(&aad), black_box(&plain), &mut out))
    });

    // open_in_place destroys its input: restore the ciphertext outside the timing.
    g.bench_function("open_4k", |b| {
        b.iter_batched_ref(
            || sealed.clone(),
            |buf| aead.open_in_place(black_box(&aad), buf).unwrap(),
            BatchSize::SmallInput,
        )
    });

    // One 1 MiB read request: 256 blocks, each with its own AAD, as read_blocks does.
    let mut chunk = vec![0u8; CHUNK * CT_BLOCK];
    for (i, ct) in chunk.chunks_mut(CT_BLOCK).enumerate() {
        aead.seal_to_slice(&block_aad(&FILE_ID, i as u64, false), &plain, ct);
    }
    g.throughput(Throughput::Bytes((CHUNK * BLOCK) as u64));
    g.bench_function("open_1m", |b| {
        b.iter_batched_ref(
            || chunk.clone(),
            |buf| {
                for (i, ct) in buf.chunks_mut(CT_BLOCK).enumerate() {
                    let aad = block_aad(&FILE_ID, i as u64, false);
                    aead.open_in_place(&aad, ct).unwrap();
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn file_keys(c: &mut Criterion) {
    let epoch = EpochKey::new(SecretKey::random());
    let mut g = c.benchmark_group("key");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    // What every open of a not-yet-open file pays: HKDF-SHA256 + AES key schedule.
    g.bench_function("file_cipher", |b| {
        b.iter(|| epoch.file_cipher(black_box(&FILE_ID)))
    });
    // Once per data-group epoch at unlock: HKDF for the name key + its schedule.
    g.bench_function("epoch_key_new", |b| {
        b.iter_batched(SecretKey::random, EpochKey::new, BatchSize::SmallInput)
    });
    g.finish();
}

fn argon2(c: &mut Criterion) {
    let mut g = c.benchmark_group("kdf");
    // ~0.1-0.3 s per call: the minimum of 10 samples, one call each.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(4));
    let p = KdfParams::DEFAULT;
    g.throughput(Throughput::Bytes(
        u64::from(p.m_kib) * 1024 * u64::from(p.t),
    ));
    g.bench_function("argon2id_default_64MiB_t3_p1", |b| {
        b.iter(|| derive_passphrase_key(b"correct horse battery staple", &[9u8; 16], p).unwrap())
    });
    g.finish();
}

criterion_group!(benches, blocks, file_keys, argon2);
criterion_main!(benches);
