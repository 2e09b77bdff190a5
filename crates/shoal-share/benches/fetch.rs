//! Loopback throughput of a peer fetch: a generated file (2 GiB by default, `SHOAL_SHARE_BENCH_MIB` to change) in
//! /dev/shm (the temporary directory when there is none), fetched from 1 and from 2 peers, plaintext and TLS, plus
//! the pieces that bound it: the plain server's `sendfile` path alone (a client that discards what it reads), and
//! sha256 over the file. Everything is deleted afterwards.
//!
//! `nice -n 19 cargo bench -p shoal-share --bench fetch --profile test` (the test profile skips a release build of
//! the whole dependency tree: dependencies are at opt-level 2 there too, and this crate's loops are system calls).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Instant;

use sha2::{Digest, Sha256};
use shoal_net::cluster_key::ClusterKey;
use shoal_share::{CHUNK_SIZE, FetchOptions, FileSpec, MAGIC, Peer, VERSION, fetch};

const DEFAULT_MIB: u64 = 2048;

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn main() {
    let mib = std::env::var("SHOAL_SHARE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_MIB);
    let size = mib << 20;
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let source = base.path().join("source.bin");
    let start = Instant::now();
    let sha = common::generate(&source, size, 42);
    println!(
        "generated {mib} MiB in {} ({:.2} s)",
        base.path().display(),
        start.elapsed().as_secs_f64()
    );

    let block = vec![7u8; 64 << 20];
    let (start, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..4 {
        std::hint::black_box(Sha256::digest(&block));
    }
    println!(
        "sha256 in memory: {:.2} GB/s wall, {:.2} GB/s of CPU",
        gbps(4 * block.len() as u64, start.elapsed().as_secs_f64()),
        gbps(4 * block.len() as u64, cpu_seconds() - cpu)
    );
    drop(block);

    let start = Instant::now();
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(&source).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    assert_eq!(hex::encode(hasher.finalize()), sha);
    println!(
        "sha256 of the file (read + hash): {:.2} GB/s",
        gbps(size, start.elapsed().as_secs_f64())
    );

    let plain = [
        common::serve(source.clone(), &sha, None),
        common::serve(source.clone(), &sha, None),
    ];
    let secs = serve_only(plain[0].local_addr(), &sha, size);
    println!(
        "plain server alone (sendfile → client discarding): {:.2} GB/s",
        gbps(size, secs)
    );

    let key = ClusterKey::generate().unwrap();
    let keyed = [
        common::serve(source.clone(), &sha, Some(common::tls(&key, 1))),
        common::serve(source.clone(), &sha, Some(common::tls(&key, 2))),
    ];
    let client_tls = common::tls(&key, 3);
    for (mode, servers, tls) in [("plain", &plain, None), ("TLS", &keyed, Some(client_tls))] {
        for n in [1, 2] {
            let peers: Vec<Peer> = servers[..n]
                .iter()
                .enumerate()
                .map(|(i, s)| Peer {
                    node: format!("peer{i}"),
                    addr: s.local_addr(),
                })
                .collect();
            let dest = base.path().join(format!("fetched-{mode}-{n}.bin"));
            let options = FetchOptions {
                token: common::TOKEN.into(),
                tls: tls.clone(),
                ..FetchOptions::default()
            };
            let (start, cpu) = (Instant::now(), cpu_seconds());
            let report = fetch(
                &FileSpec {
                    sha256: sha.clone(),
                    size,
                    path: dest.clone(),
                },
                &peers,
                &options,
            )
            .unwrap();
            let secs = start.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu;
            assert!(report.dropped.is_empty());
            println!(
                "fetch {mode:5} from {n} peer(s): {:.2} GB/s ({secs:.2} s, verified and installed; {:.2} CPU-s per GB, both sides)",
                gbps(size, secs),
                cpu / (size as f64 / 1e9)
            );
            std::fs::remove_file(&dest).unwrap();
        }
    }
}

/// One plaintext connection asking for the file chunk by chunk and throwing the bytes away: the server's side alone.
fn serve_only(addr: SocketAddr, sha: &str, size: u64) -> f64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&MAGIC).unwrap();
    s.write_all(&VERSION.to_le_bytes()).unwrap();
    let mut hello = [0u8; 10];
    s.read_exact(&mut hello).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut offset = 0;
    while offset < size {
        let length = CHUNK_SIZE.min(size - offset);
        s.write_all(&common::raw_request(sha, offset, length, common::TOKEN))
            .unwrap();
        let mut header = [0u8; 17];
        s.read_exact(&mut header).unwrap();
        assert_eq!(header[0], 0, "status");
        let mut left = length;
        while left > 0 {
            let want = usize::try_from(left).unwrap().min(buf.len());
            let n = s.read(&mut buf[..want]).unwrap();
            assert!(n > 0);
            left -= n as u64;
        }
        offset += length;
    }
    start.elapsed().as_secs_f64()
}

/// This process's CPU time (user + system, all threads) from /proc/self/stat; 0 where there is none.
fn cpu_seconds() -> f64 {
    const TICKS_PER_SECOND: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / TICKS_PER_SECOND
}
