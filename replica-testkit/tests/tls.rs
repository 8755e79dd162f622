//! A TLS cluster against real PostgreSQL binaries and psql as a TCP client: every node
//! serves TLS with a certificate for `localhost`, refuses plaintext TCP, and
//! `set_password` changes TCP logins everywhere.
//!
//! One cluster for the whole binary (starting one costs seconds), so one `#[test]` that
//! runs each check in turn; each check is a function named after what it proves.

use std::path::Path;

use diesel_replica_testkit::{Cluster, Error, NodeId};

const NODES: [NodeId; 3] = [NodeId::Primary, NodeId::Replica(0), NodeId::Replica(1)];
/// Which server the session is on, and whether it is encrypted.
const SSL_QUERY: &str =
    "SELECT pg_is_in_recovery(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[test]
fn tls_cluster() {
    let cluster = Cluster::start_tls(2).unwrap();
    accessors_name_the_pem_files_and_urls_verify_full_to_localhost(&cluster);
    every_node_accepts_verify_full_to_localhost_over_tls(&cluster);
    replicas_stream_from_the_primary_over_tls(&cluster);
    plaintext_tcp_is_refused_for_lack_of_encryption(&cluster);
    verify_full_to_127_0_0_1_fails_on_the_host_name(&cluster);
    verify_ca_with_the_wrong_ca_fails(&cluster);
    psql_tcp_errors_never_show_the_password(&cluster);
    set_password_changes_tcp_logins_on_primary_and_replicas(&cluster);
    an_added_replica_streams_over_tls_and_takes_verify_full(&cluster);
}

fn conninfo(cluster: &Cluster, id: NodeId, host: &str, ssl: &str) -> String {
    format!(
        "host={host} port={} user=postgres dbname=postgres {ssl}",
        cluster.node(id).port()
    )
}

fn verify_full(cluster: &Cluster, id: NodeId) -> String {
    let ca = cluster.ca_cert_path().unwrap().display();
    conninfo(
        cluster,
        id,
        "localhost",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    )
}

/// The stderr psql printed for a failed connection.
fn failure(result: Result<String, Error>) -> String {
    match result {
        Ok(out) => panic!("psql succeeded where it should fail, printing {out:?}"),
        Err(Error::Command { output, .. }) => output,
        Err(other) => panic!("psql did not run: {other}"),
    }
}

fn accessors_name_the_pem_files_and_urls_verify_full_to_localhost(cluster: &Cluster) {
    assert!(cluster.is_tls());
    let ca = cluster.ca_cert_path().unwrap();
    let wrong = cluster.wrong_ca_cert_path().unwrap();
    // In the temp dir, which also holds the data directories on the local backend.
    let root = ca.parent().unwrap();
    assert!(
        root.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("replica-testkit-")
    );
    assert_eq!(ca, root.join("ca.crt"));
    assert_eq!(wrong, root.join("wrong-ca.crt"));
    if cluster.docker_id().is_none() {
        assert_eq!(root, cluster.primary().data_dir().parent().unwrap());
    }
    for path in [ca, wrong] {
        let pem = std::fs::read_to_string(path).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    }
    assert_eq!(
        cluster.url(NodeId::Replica(1)),
        format!(
            "postgres://postgres:{}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            cluster.password(),
            cluster.replicas()[1].port(),
            ca.display()
        )
    );
    // psql takes the URL as it is (user, password, sslmode, sslrootcert).
    let out = cluster
        .psql_tcp(&cluster.writer_url(), "unused", SSL_QUERY)
        .unwrap();
    assert_eq!(out, "f|t");
}

fn every_node_accepts_verify_full_to_localhost_over_tls(cluster: &Cluster) {
    for id in NODES {
        let out = cluster
            .psql_tcp(&verify_full(cluster, id), cluster.password(), SSL_QUERY)
            .unwrap_or_else(|e| panic!("{id:?}: {e}"));
        let in_recovery = if id == NodeId::Primary { "f" } else { "t" };
        assert_eq!(out, format!("{in_recovery}|t"), "{id:?}");
        // The replicas serve TLS with their own settings, copied by pg_basebackup.
        assert_eq!(cluster.psql(id, "SHOW ssl").unwrap(), "on", "{id:?}");
    }
}

fn replicas_stream_from_the_primary_over_tls(cluster: &Cluster) {
    let out = cluster
        .psql(
            NodeId::Primary,
            "SELECT string_agg(r.application_name || '=' || s.ssl, ',' ORDER BY r.application_name) \
             FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
        )
        .unwrap();
    assert_eq!(out, "replica-0=true,replica-1=true");
}

fn plaintext_tcp_is_refused_for_lack_of_encryption(cluster: &Cluster) {
    for id in NODES {
        let err = failure(cluster.psql_tcp(
            &conninfo(cluster, id, "localhost", "sslmode=disable"),
            cluster.password(),
            "SELECT 1",
        ));
        assert!(
            err.contains("no pg_hba.conf entry") && err.contains("no encryption"),
            "{id:?}: {err}"
        );
    }
}

fn verify_full_to_127_0_0_1_fails_on_the_host_name(cluster: &Cluster) {
    let ca = cluster.ca_cert_path().unwrap().display();
    let err = failure(cluster.psql_tcp(
        &conninfo(
            cluster,
            NodeId::Primary,
            "127.0.0.1",
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
        cluster.password(),
        "SELECT 1",
    ));
    assert!(err.contains("does not match host name"), "{err}");
    // The same CA with verify-ca, which skips the name, connects to 127.0.0.1.
    let out = cluster
        .psql_tcp(
            &conninfo(
                cluster,
                NodeId::Primary,
                "127.0.0.1",
                &format!("sslmode=verify-ca sslrootcert={ca}"),
            ),
            cluster.password(),
            SSL_QUERY,
        )
        .unwrap();
    assert_eq!(out, "f|t");
}

fn verify_ca_with_the_wrong_ca_fails(cluster: &Cluster) {
    let wrong = cluster.wrong_ca_cert_path().unwrap().display();
    let err = failure(cluster.psql_tcp(
        &conninfo(
            cluster,
            NodeId::Replica(0),
            "localhost",
            &format!("sslmode=verify-ca sslrootcert={wrong}"),
        ),
        cluster.password(),
        "SELECT 1",
    ));
    assert!(err.contains("certificate verify failed"), "{err}");
}

fn psql_tcp_errors_never_show_the_password(cluster: &Cluster) {
    let password = "wrong-pw-7a1f";
    let with_key = format!(
        "{} password={password}",
        verify_full(cluster, NodeId::Primary)
    );
    let err = cluster
        .psql_tcp(&with_key, password, "SELECT 1")
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains(password), "{text}");
}

fn set_password_changes_tcp_logins_on_primary_and_replicas(cluster: &Cluster) {
    let old = cluster.password();
    // A quote and a backslash test the quoting; "zq9" marks the password in any escaping.
    let new = r"n3w-zq9 'pass\word";
    cluster.set_password("postgres", new).unwrap();
    cluster.wait_for_replication().unwrap();
    for id in NODES {
        let info = verify_full(cluster, id);
        let err = failure(cluster.psql_tcp(&info, old, "SELECT 1"));
        assert!(
            err.contains("password authentication failed"),
            "{id:?}: {err}"
        );
        assert_eq!(
            cluster.psql_tcp(&info, new, "SELECT 1").unwrap(),
            "1",
            "{id:?}"
        );
    }
    // Never in the server log either.
    let log = || server_log(cluster);
    assert!(!log().contains("zq9"));

    // Unknown roles fail without showing the password.
    let err = cluster.set_password("no_such_role", new).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("does not exist"), "{text}");
    assert!(!text.contains("zq9"), "{text}");
    assert!(!log().contains("zq9"));

    // Back to the testkit's password, which the URLs carry.
    cluster.set_password("postgres", old).unwrap();
    let out = cluster
        .psql_tcp(&cluster.writer_url(), "unused", "SELECT 1")
        .unwrap();
    assert_eq!(out, "1");
}

fn an_added_replica_streams_over_tls_and_takes_verify_full(cluster: &Cluster) {
    let id = cluster.add_replica().unwrap();
    assert_eq!(id, NodeId::Replica(2));
    let out = cluster
        .psql(
            NodeId::Primary,
            "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
             WHERE r.application_name = 'replica-2'",
        )
        .unwrap();
    assert_eq!(out, "t");
    let out = cluster
        .psql_tcp(&cluster.url(id), cluster.password(), SSL_QUERY)
        .unwrap();
    assert_eq!(out, "t|t");
}

/// The primary's server log: its log file, or on Docker its container's log.
fn server_log(cluster: &Cluster) -> String {
    let Some(id) = cluster.docker_id() else {
        return read(&cluster.primary().data_dir().with_extension("log"));
    };
    let container = format!("drt-{id}-{}", cluster.primary().name());
    let out = std::process::Command::new("docker")
        .args(["logs", &container])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
