//! What opening a connection costs, in plaintext and over TLS, and what
//! warm-up saves the first request after start.
//!
//! For each `sslmode`, `BENCH_CONNECTS` times in a row: a replica set with
//! only a writer and a one-connection warm-up is connected
//! (`ReplicaSet::connect`), which opens exactly one connection (TCP, TLS
//! when the mode asks, SCRAM authentication, diesel-async's set-up), then
//! dropped. Plaintext modes run against a plain cluster, TLS modes against
//! a TLS-only one (verify-full to `localhost` with the cluster's CA). Then
//! the first read after start, with `warm_up` 1 and 0.
//!
//! ```text
//! cargo bench --bench connect
//! BENCH_CONNECTS=100 cargo bench --bench connect
//! ```

use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use diesel_replica::{Config, ReplicaSet};
use diesel_replica_testkit::{Cluster, process_cpu_ns};

fn main() {
    let connects: usize = std::env::var("BENCH_CONNECTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let plain = Cluster::start(0).expect("a plain cluster");
    let tls = Cluster::start_tls(0).expect("a TLS cluster");
    let plain_url = |mode: &str| format!("{}?sslmode={mode}", plain.writer_url());
    let tls_url = |mode: &str| {
        let ca = tls.ca_cert_path().expect("the TLS cluster's CA").display();
        let url = tls.writer_url();
        let base = url.split('?').next().expect("a URL");
        format!("{base}?sslmode={mode}&sslrootcert={ca}")
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("connect: {connects} connections per mode, one at a time");
    println!(
        "{:<28} {:>10} {:>10} {:>14}",
        "mode", "p50 ms", "p90 ms", "client CPU ms"
    );
    let mut rows = Vec::new();
    runtime.block_on(async {
        for (name, url) in [
            ("disable (plain server)", plain_url("disable")),
            ("prefer (plain server)", plain_url("prefer")),
            ("require (TLS server)", tls_url("require")),
            ("verify-full (TLS server)", tls_url("verify-full")),
        ] {
            let mut times = Vec::with_capacity(connects);
            let cpu_before = process_cpu_ns();
            for _ in 0..connects {
                let mut config = Config::new(&url).expect("a valid URL");
                config.writer_pool.warm_up = 1;
                let started = Instant::now();
                let db = ReplicaSet::connect(config).await.expect("connect");
                times.push(started.elapsed());
                drop(db);
            }
            let cpu_ms = (process_cpu_ns() - cpu_before) as f64 / connects as f64 / 1e6;
            times.sort();
            let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{name:<28} {:>10.2} {:>10.2} {cpu_ms:>14.2}",
                ms(at(0.5)),
                ms(at(0.9))
            );
            rows.push(format!(
                "\"{name}\":{{\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"client_cpu_ms\":{cpu_ms:.3}}}",
                ms(at(0.5)),
                ms(at(0.9))
            ));
        }
        println!("\nfirst read after start, verify-full (TLS server):");
        for warm_up in [1, 0] {
            let mut firsts = Vec::new();
            for _ in 0..10 {
                let mut config = Config::new(&tls_url("verify-full")).expect("a valid URL");
                config.writer_pool.warm_up = warm_up;
                let db = ReplicaSet::connect(config).await.expect("connect");
                let started = Instant::now();
                db.read(async |conn| diesel::sql_query("SELECT 1").execute(conn).await)
                    .await
                    .expect("a read");
                firsts.push(started.elapsed());
            }
            firsts.sort();
            let p50 = firsts[firsts.len() / 2].as_secs_f64() * 1000.0;
            println!("  warm_up = {warm_up}: p50 {p50:.2} ms");
            rows.push(format!("\"first_read_warm_up_{warm_up}_p50_ms\":{p50:.3}"));
        }
    });
    println!("{{\"bench\":\"connect\",{}}}", rows.join(","));
}
