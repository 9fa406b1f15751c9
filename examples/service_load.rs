//! Load driver of tools/bench-service.sh: signed requests against a running
//! `tresor serve`, timed.
//!
//!   service_load URL PSE PASSFILE status N CONC   GET /jobs, N requests, CONC at once
//!   service_load URL PSE PASSFILE submit N CONC   POST /jobs (inline script), same
//!   service_load URL PSE PASSFILE info N CONC     GET /info (unsigned: the transport alone)
//!   service_load URL PSE PASSFILE job ROUNDS APPROVER.pse APPROVER.pass CHECKER.pse CHECKER.pass GROUP INPUT SCRIPT
//!       ROUNDS jobs through submit → profiled → approve → staged → release,
//!       the time of each phase (waited for with the service's long poll), one per line.
//!
//! Every request is signed before the clock starts: the service's work is
//! measured, not the client's RSA.

use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tresor::service::auth;

fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the service");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    s.write_all(body).expect("send body");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

fn open(pse: &str, pass: &str) -> tresor::pse::Pse {
    let pw = std::fs::read_to_string(pass).expect("read the passphrase file");
    tresor::pse::open(
        &std::fs::read(pse).expect("read the PSE"),
        pw.lines().next().unwrap_or("").as_bytes(),
    )
    .expect("open the PSE")
}

fn signed(
    pse: &tresor::pse::Pse,
    store: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    auth::headers(
        &pse.sign,
        &pse.public.user,
        store,
        (method, path, body),
        auth::now(),
    )
    .expect("sign")
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn call(
    addr: &str,
    pse: &tresor::pse::Pse,
    store: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> serde_json::Value {
    let h = signed(pse, store, method, path, body);
    let (code, text) = http(addr, method, path, &h, body);
    assert!((200..300).contains(&code), "{method} {path}: {code} {text}");
    serde_json::from_str(&text).unwrap_or_default()
}

/// Waits with the service's long poll (`?changed_from=STATE`): no polling
/// load beside the job.
fn wait(addr: &str, pse: &tresor::pse::Pse, store: &str, id: i64, want: &str) {
    let start = Instant::now();
    let mut path = format!("/jobs/{id}");
    loop {
        let j = call(addr, pse, store, "GET", &path, b"");
        let s = j["state"].as_str().unwrap_or("");
        if s == want {
            return;
        }
        assert!(s != "failed", "job {id} failed: {}", j["reason"]);
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "job {id} stuck in {s}"
        );
        path = format!("/jobs/{id}?changed_from={s}");
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 7 {
        eprintln!("usage: see the head of examples/service_load.rs");
        std::process::exit(2);
    }
    let addr = a[1]
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let pse = open(&a[2], &a[3]);
    let (_, info) = http(&addr, "GET", "/info", &[], b"");
    let store: String = serde_json::from_str::<serde_json::Value>(&info).expect("/info")
        ["store_id"]
        .as_str()
        .expect("store_id")
        .to_string();
    let mode = a[4].as_str();
    let n: usize = a[5].parse().expect("N");
    if mode == "job" {
        let approver = open(&a[6], &a[7]);
        let checker = open(&a[8], &a[9]);
        let (group, input, script) = (&a[10], &a[11], &a[12]);
        let content = std::fs::read(script).expect("read the script");
        for _ in 0..n {
            let body = serde_json::to_vec(&serde_json::json!({
                "group": group, "inputs": [input],
                "program": {"name": "job.sh", "content": tresor::format::names::encode(&content), "interpreter": "/bin/sh"},
                "args": ["{input}", "{out}"],
            }))
            .expect("json");
            let t0 = Instant::now();
            let id = call(&addr, &pse, &store, "POST", "/jobs", &body)["id"]
                .as_i64()
                .expect("id");
            wait(&addr, &pse, &store, id, "profiled");
            let t1 = Instant::now();
            let j = call(&addr, &approver, &store, "GET", &format!("/jobs/{id}"), b"");
            let ap = serde_json::to_vec(&serde_json::json!({
                "bundle_sha256": j["bundle_sha256"], "profile_sha256": j["profile_sha256"], "policy_sha256": j["policy_sha256"],
            }))
            .expect("json");
            let t2 = Instant::now();
            call(
                &addr,
                &approver,
                &store,
                "POST",
                &format!("/jobs/{id}/approve"),
                &ap,
            );
            wait(&addr, &pse, &store, id, "staged");
            let t3 = Instant::now();
            call(
                &addr,
                &checker,
                &store,
                "POST",
                &format!("/jobs/{id}/release"),
                b"{}",
            );
            let t4 = Instant::now();
            println!(
                "submit_to_profiled_ms {:.1} approve_to_staged_ms {:.1} release_ms {:.1}",
                (t1 - t0).as_secs_f64() * 1e3,
                (t3 - t2).as_secs_f64() * 1e3,
                (t4 - t3).as_secs_f64() * 1e3
            );
        }
        return;
    }
    let conc: usize = a[6].parse().expect("CONC");
    let body: Vec<u8> = if mode == "submit" {
        serde_json::to_vec(&serde_json::json!({
            "group": a.get(7).cloned().unwrap_or_else(|| "pathology".into()),
            "inputs": [a.get(8).cloned().unwrap_or_else(|| "S-1/values.csv".into())],
            "program": {"name": "job.sh", "content": tresor::format::names::encode(b"#!/bin/sh\ncat \"$1\" > \"$2/copy.txt\"\n"), "interpreter": "/bin/sh"},
            "args": ["{input}", "{out}"],
        }))
        .expect("json")
    } else {
        Vec::new()
    };
    let (method, path) = match mode {
        "status" => ("GET", "/jobs"),
        "submit" => ("POST", "/jobs"),
        _ => ("GET", "/info"),
    };
    let reqs: Vec<Vec<(String, String)>> = (0..n)
        .map(|_| {
            if mode == "info" {
                Vec::new()
            } else {
                signed(&pse, &store, method, path, &body)
            }
        })
        .collect();
    let per = n.div_ceil(conc);
    let chunks: Vec<Vec<Vec<(String, String)>>> = reqs.chunks(per).map(|c| c.to_vec()).collect();
    let start = Instant::now();
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|c| {
            let (addr, body) = (addr.clone(), body.clone());
            std::thread::spawn(move || {
                for h in c {
                    let (code, text) = http(&addr, method, path, &h, &body);
                    assert!((200..300).contains(&code), "{code} {text}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a load thread failed");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{mode} requests {n} concurrency {conc} seconds {secs:.3} per_second {:.0}",
        n as f64 / secs
    );
}
