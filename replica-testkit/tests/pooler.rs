//! PgBouncer in transaction mode in front of a real node: clients share its server
//! connections, and it refuses what PgBouncer 1.18 refuses by default.

use diesel_replica_testkit::{Cluster, NodeId, PgBouncer};

#[test]
fn pgbouncer_pools_in_transaction_mode_and_refuses_startup_options() {
    let cluster = Cluster::start(0).unwrap();
    let pooler = PgBouncer::start(cluster.node(NodeId::Primary).port(), 1).unwrap();
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
        pooler.port()
    );
    let ask = |conninfo: &str, sql: &str| cluster.psql_tcp(conninfo, cluster.password(), sql);

    // Two clients, one after the other, get the one server connection of a pool of 1;
    // and a client's two transactions may land on any, here the same.
    let first = ask(&conninfo, "SELECT pg_backend_pid()").unwrap();
    let second = ask(&conninfo, "SELECT pg_backend_pid()").unwrap();
    assert_eq!(first, second, "{}", pooler.log());
    // Session state set by one client is seen by the next one on that server connection:
    // transaction mode resets nothing between clients.
    ask(&conninfo, "SET work_mem = '77MB'").unwrap();
    assert_eq!(ask(&conninfo, "SHOW work_mem").unwrap(), "77MB");

    // Startup `options` are refused, as RDS Proxy refuses them.
    let refused = ask(
        &format!("{conninfo} options=-cstatement_timeout=5s"),
        "SELECT 1",
    )
    .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("unsupported startup parameter: options"),
        "{refused}"
    );
    // A wrong password is refused by PgBouncer itself.
    let wrong = cluster.psql_tcp(&conninfo, "not-the-password", "SELECT 1");
    assert!(wrong.is_err(), "{wrong:?}");
    assert!(pooler.url().contains(&format!(":{}/", pooler.port())));
}
