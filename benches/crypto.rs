//! Crypto micro-benchmarks (issue 2): block seal/open throughput, per-file key
//! derivation and the Argon2id unlock. Run with `cargo bench --bench crypto`;
//! the whole run takes about a minute.
//!
//! `block/open_4k` is the raw single-core AES-256-GCM-SIV open throughput that
//! `tools/bench-fs.sh` compares the FUSE streaming read against.
//!
//! Issue 19: `cipher/*` sets the hot path (`aes-gcm-siv` 0.12) beside the
//! reference it is tested against (0.11), and splits one 4 KiB block into
//! its parts: AES-256-CTR, POLYVAL (0.7 four blocks at a time with powers
//! of H, and 0.6 one block at a time) and the per-message key derivation.
//! Other implementations were measured in `tools/cipher-candidates`.

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

/// The hot path beside the reference, and the cost split of one block.
fn cipher(c: &mut Criterion) {
    let key = [0x42u8; 32];
    let nonce = [9u8; NONCE_LEN];
    let aad = block_aad(&FILE_ID, 42, false);
    let plain = vec![0x5au8; BLOCK];
    let mut g = c.benchmark_group("cipher");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(BLOCK as u64));

    let aead = Aead::new(&SecretKey::from_bytes(key));
    let mut sealed = vec![0u8; CT_BLOCK];
    aead.seal_to_slice(&aad, &plain, &mut sealed);
    // What the store does per block: seal from the caller's buffer into the
    // write buffer, open from the read buffer into the reply buffer.
    g.bench_function("hot/seal_4k", |b| {
        b.iter(|| aead.seal_to_slice(black_box(&aad), black_box(&plain), &mut sealed))
    });
    aead.seal_to_slice(&aad, &plain, &mut sealed);
    let mut out = vec![0u8; BLOCK];
    g.bench_function("hot/open_to_4k", |b| {
        b.iter(|| {
            aead.open_to(black_box(&aad), black_box(&sealed), &mut out)
                .unwrap()
        })
    });

    {
        use aes_gcm_siv_ref::aead::{AeadInPlace, KeyInit};
        let r = aes_gcm_siv_ref::Aes256GcmSiv::new(&key.into());
        let n = aes_gcm_siv_ref::Nonce::from_slice(&nonce);
        let mut buf = plain.clone();
        // 0.11 works in place only: the copy in is part of its cost.
        g.bench_function("ref0.11/seal_4k", |b| {
            b.iter(|| {
                buf.copy_from_slice(black_box(&plain));
                r.encrypt_in_place_detached(n, black_box(&aad), &mut buf)
                    .unwrap()
            })
        });
        let mut ct = plain.clone();
        let tag = r.encrypt_in_place_detached(n, &aad, &mut ct).unwrap();
        g.bench_function("ref0.11/open_4k", |b| {
            b.iter(|| {
                buf.copy_from_slice(black_box(&ct));
                r.decrypt_in_place_detached(n, black_box(&aad), &mut buf, &tag)
                    .unwrap()
            })
        });
    }

    let mut buf = plain.clone();
    {
        use ctr::cipher::{KeyIvInit, StreamCipher};
        type Ctr = ctr::Ctr32LE<aes::Aes256>;
        g.bench_function("part/aes256_ctr_4k", |b| {
            b.iter(|| Ctr::new(&key.into(), &[1u8; 16].into()).apply_keystream(&mut buf))
        });
    }
    {
        use polyval::universal_hash::UniversalHash;
        let p = polyval::Polyval::new(&[7u8; 16].into());
        g.bench_function("part/polyval0.7_4k", |b| {
            b.iter(|| {
                let mut p = p.clone();
                p.update_padded(black_box(&aad));
                p.update_padded(black_box(&buf));
                p.finalize()
            })
        });
    }
    {
        use polyval_ref::universal_hash::{KeyInit, UniversalHash};
        let p = polyval_ref::Polyval::new(&[7u8; 16].into());
        g.bench_function("part/polyval0.6_4k", |b| {
            b.iter(|| {
                let mut p = p.clone();
                p.update_padded(black_box(&aad));
                p.update_padded(black_box(&buf));
                p.finalize()
            })
        });
    }
    {
        // Once per message besides CTR and POLYVAL: six AES blocks derive the
        // message keys, then the message key is scheduled.
        use aes::cipher::{BlockCipherEncrypt, KeyInit};
        let kg = aes::Aes256::new(&key.into());
        g.throughput(Throughput::Elements(1));
        g.bench_function("part/per_message_keys", |b| {
            b.iter(|| {
                let mut blocks = [aes::Block::default(); 6];
                kg.encrypt_blocks(black_box(&mut blocks));
                let mut k = [0u8; 32];
                k[..16].copy_from_slice(&blocks[2][..16]);
                k[16..].copy_from_slice(&blocks[3][..16]);
                aes::Aes256::new(&k.into())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, blocks, cipher, file_keys, argon2);
criterion_main!(benches);
