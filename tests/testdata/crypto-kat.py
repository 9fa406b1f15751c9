#!/usr/bin/env python3
"""Known answers for src/crypto.rs, computed with an independent implementation:
Python's `cryptography` (OpenSSL's AES-GCM-SIV, HKDF and Argon2id).
Run: python3 tests/testdata/crypto-kat.py  (cryptography >= 44, OpenSSL >= 3.2)."""
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

key = bytes(range(32))                      # 00 01 .. 1f
file_id = bytes(range(0xA0, 0xB0))          # a0 .. af

def hkdf(ikm, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)

print("hkdf name   ", hkdf(key, b"tresor/name/v1").hex())
print("hkdf file   ", hkdf(key, b"tresor/file/v1" + file_id).hex())
print("hkdf key-id ", hkdf(key, b"tresor/key-id/v1").hex())

nonce = bytes(range(0x10, 0x1C))            # 10 .. 1b
aad = b"TRB1" + file_id + (5).to_bytes(8, "big") + b"\x01"
pt = b"Befund: unauffaellig, keine Malignitaet nachweisbar.\n"
print("siv block   ", AESGCMSIV(hkdf(key, b"tresor/file/v1" + file_id)).encrypt(nonce, pt, aad).hex())
name = b"patient-0042.txt"
padded = name + bytes([16 - len(name) % 16]) * (16 - len(name) % 16)
dir_id = bytes(range(0x30, 0x40))
print("siv name    ", AESGCMSIV(hkdf(key, b"tresor/name/v1")).encrypt(bytes(12), padded, b"TRN1" + dir_id).hex())

def argon(pw, salt, m, t, p):
    return Argon2id(salt=salt, length=32, iterations=t, lanes=p, memory_cost=m).derive(pw)

print("argon2 min  ", argon(b"correct horse battery staple", bytes(range(16)), 8192, 1, 1).hex())
print("argon2 mix  ", argon(b"correct horse battery staple", bytes(range(16)), 8200, 2, 2).hex())
