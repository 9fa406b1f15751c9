//! Candidates for AES-256-GCM-SIV at tresor's block size (4 KiB plaintext, 36-byte AAD).
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

const B: usize = 4096;
const AAD: [u8; 36] = [3u8; 36];
const KEY: [u8; 32] = [0x42; 32];
const NONCE: [u8; 12] = [9; 12];

fn aeads(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(B as u64));
    let mut buf = vec![0x5au8; B];

    // aes-gcm-siv 0.11 (aes 0.8, polyval 0.6)
    {
        use siv11::aead::{AeadInPlace, KeyInit};
        let a = siv11::Aes256GcmSiv::new(&KEY.into());
        let n = siv11::Nonce::from_slice(&NONCE);
        g.bench_function("siv0.11/seal", |b| {
            b.iter(|| {
                a.encrypt_in_place_detached(n, black_box(&AAD), &mut buf)
                    .unwrap()
            })
        });
        let mut ct = vec![0x5au8; B];
        let tag = a.encrypt_in_place_detached(n, &AAD, &mut ct).unwrap();
        let mut out = vec![0u8; B];
        g.bench_function("siv0.11/open(copy+in-place)", |b| {
            b.iter(|| {
                out.copy_from_slice(&ct);
                a.decrypt_in_place_detached(n, black_box(&AAD), &mut out, &tag)
                    .unwrap()
            })
        });
    }
    // aes-gcm-siv 0.12 (aes 0.9, polyval 0.7)
    {
        use siv12::aead::{AeadInOut, KeyInit};
        let a = siv12::Aes256GcmSiv::new(&KEY.into());
        let n = siv12::Nonce::from(NONCE);
        g.bench_function("siv0.12/seal", |b| {
            b.iter(|| {
                a.encrypt_inout_detached(&n, black_box(&AAD), buf.as_mut_slice().into())
                    .unwrap()
            })
        });
        let mut ct = vec![0x5au8; B];
        let tag = a
            .encrypt_inout_detached(&n, &AAD, ct.as_mut_slice().into())
            .unwrap();
        let mut out = vec![0u8; B];
        g.bench_function("siv0.12/open(copy+in-place)", |b| {
            b.iter(|| {
                out.copy_from_slice(&ct);
                a.decrypt_inout_detached(&n, black_box(&AAD), out.as_mut_slice().into(), &tag)
                    .unwrap()
            })
        });
        g.bench_function("siv0.12/open(out-of-place)", |b| {
            b.iter(|| {
                let io = siv12::aead::inout::InOutBuf::new(&ct, &mut out).unwrap();
                a.decrypt_inout_detached(&n, black_box(&AAD), io, &tag)
                    .unwrap()
            })
        });
    }
    // aws-lc-rs (AWS-LC's EVP_aead_aes_256_gcm_siv)
    {
        use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV};
        let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM_SIV, &KEY).unwrap());
        g.bench_function("aws-lc-rs/seal", |b| {
            b.iter(|| {
                k.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(NONCE),
                    Aad::from(black_box(&AAD)),
                    &mut buf,
                )
                .unwrap()
            })
        });
        let mut ct = vec![0x5au8; B];
        let tag = k
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(NONCE),
                Aad::from(&AAD),
                &mut ct,
            )
            .unwrap();
        ct.extend_from_slice(tag.as_ref());
        let mut out = vec![0u8; B + 16];
        g.bench_function("aws-lc-rs/open(copy+in-place)", |b| {
            b.iter(|| {
                out.copy_from_slice(&ct);
                k.open_in_place(
                    Nonce::assume_unique_for_key(NONCE),
                    Aad::from(black_box(&AAD)),
                    &mut out,
                )
                .unwrap()
                .len()
            })
        });
    }
    g.finish();
}

fn parts(c: &mut Criterion) {
    let mut g = c.benchmark_group("part");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(B as u64));
    let mut buf = vec![0x5au8; B];
    // AES-256-CTR (32-bit LE counter, as GCM-SIV) over 4 KiB
    {
        use ctr9::cipher::{KeyIvInit, StreamCipher};
        type C = ctr9::Ctr32LE<aes8::Aes256>;
        g.bench_function("ctr/aes0.8+ctr0.9", |b| {
            b.iter(|| {
                let mut c = C::new(&KEY.into(), &[1u8; 16].into());
                c.apply_keystream(&mut buf)
            })
        });
    }
    {
        use ctr10::cipher::{KeyIvInit, StreamCipher};
        type C = ctr10::Ctr32LE<aes9::Aes256>;
        g.bench_function("ctr/aes0.9+ctr0.10", |b| {
            b.iter(|| {
                let mut c = C::new(&KEY.into(), &[1u8; 16].into());
                c.apply_keystream(&mut buf)
            })
        });
    }
    {
        use polyval6::universal_hash::{KeyInit, UniversalHash};
        let p = polyval6::Polyval::new(&[7u8; 16].into());
        g.bench_function("polyval/0.6", |b| {
            b.iter(|| {
                let mut p = p.clone();
                p.update_padded(black_box(&buf));
                p.finalize()
            })
        });
    }
    {
        use polyval7::universal_hash::{KeyInit as _, UniversalHash};
        let p = polyval7::Polyval::new(&[7u8; 16].into());
        g.bench_function("polyval/0.7", |b| {
            b.iter(|| {
                let mut p = p.clone();
                p.update_padded(black_box(&buf));
                p.finalize()
            })
        });
    }
    // What GCM-SIV does once per message besides CTR and POLYVAL: derive the
    // message keys (6 AES blocks) and schedule the AES-256 message key.
    {
        use aes8::cipher::{BlockEncrypt, KeyInit};
        let kg = aes8::Aes256::new(&KEY.into());
        g.throughput(Throughput::Elements(1));
        g.bench_function("perkey/aes0.8 6 blocks + schedule", |b| {
            b.iter(|| {
                let mut blocks = [aes8::Block::default(); 6];
                kg.encrypt_blocks(&mut blocks);
                let mut k = [0u8; 32];
                k[..16].copy_from_slice(&blocks[2][..16]);
                k[16..].copy_from_slice(&blocks[3][..16]);
                aes8::Aes256::new(&k.into())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, aeads, parts);
criterion_main!(benches);
