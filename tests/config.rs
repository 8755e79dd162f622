//! Configuration from the environment, from a secret and from serde: what
//! each bad input reports, and that no password ever shows.

mod common;

use std::time::Duration;

use common::report;
use diesel_replica::{Config, ConfigError};

const PASSWORD: &str = "s3cr3t-Pa55";

fn env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_vars(None, vars.iter().copied())
}

fn env_err(vars: &[(&str, &str)]) -> ConfigError {
    let err = env(vars).expect_err("configuration should be rejected");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(PASSWORD), "password leaked: {text}");
    err
}

fn writer() -> String {
    format!("postgres://app:{PASSWORD}@writer.internal:5432/app")
}

#[test]
fn replica_urls_tolerate_blanks_and_a_trailing_comma() {
    let urls =
        format!(" postgres://app:{PASSWORD}@r1:5432/app, ,postgres://app:{PASSWORD}@r2:5432/app,");
    let config = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_URLS", &urls),
    ])
    .unwrap();
    let addresses: Vec<_> = config.replicas.iter().map(|r| r.address()).collect();
    assert_eq!(addresses, ["r1:5432", "r2:5432"]);
}

#[test]
fn replica_hosts_inherit_credentials_database_and_port_from_the_writer() {
    let config = env(&[
        ("DATABASE_URL", &format!("{}?sslmode=disable", writer())),
        (
            "DATABASE_REPLICA_HOSTS",
            "reader-1,reader-2:6432,[::1]:7000",
        ),
    ])
    .unwrap();
    let shown: Vec<_> = config.replicas.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "postgres://app:***@reader-1:5432/app?sslmode=disable",
            "postgres://app:***@reader-2:6432/app?sslmode=disable",
            "postgres://app:***@[::1]:7000/app?sslmode=disable",
        ]
    );
}

#[test]
fn any_number_of_replicas_including_none() {
    let config = env(&[("DATABASE_URL", &writer())]).unwrap();
    assert!(config.replicas.is_empty());
    let hosts: Vec<_> = (0..40).map(|i| format!("reader-{i}")).collect();
    let config = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_HOSTS", &hosts.join(",")),
    ])
    .unwrap();
    assert_eq!(config.replicas.len(), 40);
}

#[test]
fn secret_json_as_ecs_injects_it_with_port_as_number_or_string() {
    for port in [r#"5433"#, r#""5433""#] {
        let secret = format!(
            r#"{{"username":"app","password":"{PASSWORD}","engine":"postgres","host":"aurora.cluster","port":{port},"dbname":"main","dbClusterIdentifier":"x"}}"#
        );
        let config = env(&[
            ("DATABASE_SECRET", &secret),
            ("DATABASE_REPLICA_HOSTS", "reader-a"),
        ])
        .unwrap();
        assert_eq!(
            config.writer.to_string(),
            "postgres://app:***@aurora.cluster:5433/main"
        );
        assert_eq!(config.replicas[0].address(), "reader-a:5433");
    }
}

#[test]
fn secret_password_with_url_special_characters_survives() {
    let secret =
        r#"{"username":"app","password":"p@ss:w/rd?#","host":"h","port":5432,"dbname":"d"}"#;
    let config = env(&[("DATABASE_SECRET", secret)]).unwrap();
    assert_eq!(config.writer.to_string(), "postgres://app:***@h:5432/d");
}

#[test]
fn prefix_selects_its_own_variables() {
    let vars = [
        ("DATABASE_URL", "postgres://main-writer/app".to_owned()),
        ("ANALYTICS_DATABASE_URL", writer()),
        ("ANALYTICS_DATABASE_REPLICA_HOSTS", "olap-1".to_owned()),
    ];
    for prefix in ["ANALYTICS", "ANALYTICS_"] {
        let config = Config::from_vars(Some(prefix), vars.clone()).unwrap();
        assert_eq!(config.writer.address(), "writer.internal:5432");
        assert_eq!(config.replicas.len(), 1);
    }
    let err = Config::from_vars(Some("BILLING"), vars).unwrap_err();
    assert!(
        err.to_string()
            .contains("`BILLING_DATABASE_URL` is not set"),
        "{err}"
    );
}

#[test]
fn pool_settings_from_env() {
    let config = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_WRITER_POOL_SIZE", "4"),
        ("DATABASE_REPLICA_POOL_SIZE", "32"),
        ("DATABASE_WARM_UP", "3"),
        ("DATABASE_POOL_TIMEOUT_MS", "250"),
        ("DATABASE_CONNECT_TIMEOUT_MS", "1500"),
        ("DATABASE_RECYCLE_TIMEOUT_MS", "100"),
        ("DATABASE_APPLICATION_NAME", "billing"),
    ])
    .unwrap();
    assert_eq!(config.writer_pool.max_size, 4);
    assert_eq!(config.replica_pool.max_size, 32);
    for pool in [&config.writer_pool, &config.replica_pool] {
        assert_eq!(pool.warm_up, 3);
        assert_eq!(pool.wait_timeout, Some(Duration::from_millis(250)));
        assert_eq!(pool.connect_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(pool.recycle_timeout, Some(Duration::from_millis(100)));
    }
    assert_eq!(config.application_name, "billing");
}

#[test]
fn env_and_serde_give_the_same_config() {
    let from_env = env(&[
        ("DATABASE_URL", &writer()),
        (
            "DATABASE_REPLICA_URLS",
            &format!("postgres://app:{PASSWORD}@r1/app"),
        ),
        ("DATABASE_REPLICA_HOSTS", "r2:5433"),
        ("DATABASE_REPLICA_POOL_SIZE", "20"),
        ("DATABASE_WARM_UP", "2"),
        ("DATABASE_POOL_TIMEOUT_MS", "750"),
        ("DATABASE_APPLICATION_NAME", "svc"),
    ])
    .unwrap();
    let json = serde_json::json!({
        "url": writer(),
        "replica_urls": [format!("postgres://app:{PASSWORD}@r1/app")],
        "replica_hosts": ["r2:5433"],
        "application_name": "svc",
        "writer_pool": { "warm_up": 2, "wait_timeout_ms": 750 },
        "replica_pool": { "max_size": 20, "warm_up": 2, "wait_timeout_ms": 750 }
    });
    let from_serde: Config = serde_json::from_value(json).unwrap();
    assert_eq!(from_env, from_serde);

    let secret = format!(
        r#"{{"username":"app","password":"{PASSWORD}","host":"h","port":"5432","dbname":"d"}}"#
    );
    let from_env = env(&[("DATABASE_SECRET", &secret)]).unwrap();
    let from_serde: Config = serde_json::from_value(serde_json::json!({
        "secret": serde_json::from_str::<serde_json::Value>(&secret).unwrap()
    }))
    .unwrap();
    assert_eq!(from_env, from_serde);
}

#[test]
fn serde_rejects_unknown_fields_and_reports_config_errors() {
    let err = serde_json::from_str::<Config>(r#"{"url":"postgres://h/d","replicas_urls":[]}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `replicas_urls`"), "{err}");
    let err = serde_json::from_str::<Config>(r#"{"replica_hosts":["r1"]}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`url` is not set"), "{err}");
}

#[test]
fn missing_writer_names_both_ways_to_set_it() {
    let err = env_err(&[("DATABASE_REPLICA_HOSTS", "r1")]);
    assert!(matches!(err, ConfigError::Missing { .. }));
    assert_eq!(
        err.to_string(),
        "`DATABASE_URL` is not set: set it to the writer's URL, or set `DATABASE_SECRET`"
    );
}

#[test]
fn empty_writer_is_rejected() {
    let err = env_err(&[("DATABASE_URL", "  ")]);
    assert!(
        matches!(err, ConfigError::Empty { ref key } if key == "DATABASE_URL"),
        "{err}"
    );
}

#[test]
fn url_and_secret_together_conflict() {
    let err = env_err(&[("DATABASE_URL", &writer()), ("DATABASE_SECRET", "{}")]);
    assert_eq!(
        err.to_string(),
        "`DATABASE_URL` and `DATABASE_SECRET` are both set: set only one of them"
    );
}

#[test]
fn malformed_urls_name_the_key_and_hide_the_password() {
    let cases = [
        (
            format!("postgres://app:{PASSWORD}@host:99999/db"),
            "invalid value for option `port`",
        ),
        (
            format!("mysql://app:{PASSWORD}@host/db"),
            "scheme `mysql` is not supported",
        ),
        ("no url here".to_owned(), "invalid connection string"),
        (
            format!("host=h user=app password={PASSWORD} dbname"),
            "invalid connection string",
        ),
        (
            format!("host=h,h2 user=app password={PASSWORD}"),
            "it names 2 hosts",
        ),
    ];
    for (url, problem) in cases {
        let err = env_err(&[("DATABASE_URL", &url)]);
        assert!(matches!(err, ConfigError::InvalidUrl { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("`DATABASE_URL` is not a usable"), "{text}");
        assert!(text.contains(problem), "{text}");
    }
    let urls = format!("postgres://r1/db,postgres://app:{PASSWORD}@r2:port/db");
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_URLS", &urls),
    ]);
    assert!(
        err.to_string()
            .starts_with("`DATABASE_REPLICA_URLS[1]` is not a usable PostgreSQL URL"),
        "{err}"
    );
}

#[test]
fn parse_errors_quote_no_part_of_a_password_and_only_a_short_excerpt() {
    let second = "Zq9second";
    for url in [
        format!("host=db user=app password=first {second} dbname=app"),
        format!("host=db user=app password=first {second}=x dbname=app"),
        format!("host=db password='{PASSWORD} {second}' {second}"),
    ] {
        for key in ["DATABASE_URL", "DATABASE_REPLICA_URLS"] {
            let vars = match key {
                "DATABASE_URL" => vec![("DATABASE_URL", url.clone())],
                _ => vec![
                    ("DATABASE_URL", writer()),
                    ("DATABASE_REPLICA_URLS", url.clone()),
                ],
            };
            let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let err = env_err(&vars);
            let text = format!("{err} {err:?}");
            assert!(!text.contains(second), "{key}={url}: {text}");
            assert!(text.contains("***"), "{key}={url}: {text}");
        }
    }
    // What follows a password still names the key at fault.
    let err = env_err(&[("DATABASE_URL", "host=db password=pw port=abc")]);
    assert!(err.to_string().contains("`port`"), "{err}");
    // Junk is quoted as a short excerpt, whatever its size.
    for junk in ["x".repeat(100_000), format!("{}://db", "s".repeat(100_000))] {
        let err = env_err(&[("DATABASE_URL", &junk)]);
        let text = err.to_string();
        assert!(text.len() < 400, "{} bytes: {}", text.len(), &text[..400]);
    }
}

#[test]
fn malformed_replica_host_is_rejected() {
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_HOSTS", "ok,bad:port"),
    ]);
    assert!(
        matches!(err, ConfigError::InvalidHost { ref key, .. } if key == "DATABASE_REPLICA_HOSTS[1]"),
        "{err}"
    );
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_HOSTS", "host/db"),
    ]);
    assert!(
        err.to_string().contains("expected host or host:port"),
        "{err}"
    );
}

#[test]
fn malformed_ipv6_hosts_are_refused_at_config() {
    for host in ["[:::1]", "[::g]", "[1:2:3:4:5:6:7:8:9]"] {
        let url = format!("postgres://app:{PASSWORD}@{host}:5432/app");
        let err = env_err(&[("DATABASE_URL", &url)]);
        assert!(err.to_string().contains("IPv6"), "{host}: {err}");
        let address = format!("{host}:5433");
        let err = env_err(&[
            ("DATABASE_URL", &writer()),
            ("DATABASE_REPLICA_HOSTS", &address),
        ]);
        assert!(err.to_string().contains("IPv6"), "replica {host}: {err}");
        let err = env_err(&[
            ("DATABASE_URL", &writer()),
            ("DATABASE_DISCOVERY", "hosts"),
            ("DATABASE_CANDIDATE_HOSTS", &address),
        ]);
        assert!(err.to_string().contains("IPv6"), "candidate {host}: {err}");
        let err = env_err(&[(
            "DATABASE_URL",
            &format!("host={} password=pw", &host[1..host.len() - 1]),
        )]);
        assert!(err.to_string().contains("IPv6"), "key=value {host}: {err}");
    }
    // Valid ones pass, bracketed or not where the form allows.
    for url in [
        "postgres://app:pw@[::1]:5432/app",
        "postgres://app:pw@[2001:db8::5]/app",
        "host=::1 password=pw",
    ] {
        env(&[("DATABASE_URL", url)]).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_HOSTS", "[::1]:5433,[2001:db8::5]"),
    ])
    .unwrap();
}

#[test]
fn a_candidate_listed_twice_in_any_spelling_is_refused() {
    for list in [
        "writer.internal,writer.internal,r1",
        "WRITER.internal:5432,writer.internal",
        "r1,[::1]:5433,[0:0:0:0:0:0:0:1]:5433",
        "127.0.0.1:5433,r1,127.0.0.1:5433",
    ] {
        let err = env_err(&[
            ("DATABASE_URL", &writer()),
            ("DATABASE_DISCOVERY", "hosts"),
            ("DATABASE_CANDIDATE_HOSTS", list),
        ]);
        assert!(
            matches!(err, ConfigError::DuplicateCandidate { ref key, .. } if key.starts_with("DATABASE_CANDIDATE_HOSTS[")),
            "{list}: {err}"
        );
    }
    env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_DISCOVERY", "hosts"),
        (
            "DATABASE_CANDIDATE_HOSTS",
            "writer.internal,r1,r1:5433,[::1]",
        ),
    ])
    .unwrap();
    // Replicas too: two spellings of one IPv6 address.
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_HOSTS", "[::1]:5433,[0::1]:5433"),
    ]);
    assert!(matches!(err, ConfigError::DuplicateReplica { .. }), "{err}");
}

#[test]
fn unknown_sslmodes_and_unusable_tls_settings_are_rejected() {
    let err = env_err(&[("DATABASE_URL", &format!("{}?sslmode=maybe", writer()))]);
    assert!(
        err.to_string().contains("sslmode `maybe` is unknown; expected one of disable, allow, prefer, require, verify-ca, verify-full"),
        "{err}"
    );
    let err = env_err(&[("DATABASE_URL", &format!("{}?sslmode=verify-full", writer()))]);
    assert_eq!(
        err.to_string(),
        "`writer (writer.internal:5432)`: sslmode=verify-full needs a root certificate: set \
         sslrootcert to a PEM file (e.g. the RDS bundle) or to `system`"
    );
    for mode in ["disable", "allow", "prefer", "require"] {
        let url = format!("{}?sslmode={mode}", writer());
        assert!(env(&[("DATABASE_URL", &url)]).is_ok(), "{mode}");
    }
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_SSLMODE", "verify-ca"),
        ("DATABASE_SSLROOTCERT", "/nonexistent/rds-bundle.pem"),
    ]);
    let text = err.to_string();
    assert!(
        text.contains("sslrootcert `/nonexistent/rds-bundle.pem`"),
        "{text}"
    );
    let err = env_err(&[("DATABASE_URL", &writer()), ("DATABASE_SSLMODE", "strict")]);
    assert!(
        err.to_string()
            .starts_with("`DATABASE_SSLMODE`: sslmode `strict` is unknown"),
        "{err}"
    );
}

#[test]
fn tls_defaults_reach_every_node_that_sets_none_of_its_own() {
    let config = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_SSLMODE", "require"),
        (
            "DATABASE_REPLICA_URLS",
            "postgres://app@r1/app,postgres://app@r2/app?sslmode=disable",
        ),
        ("DATABASE_REPLICA_HOSTS", "r3"),
    ])
    .unwrap();
    let shown: Vec<String> = std::iter::once(&config.writer)
        .chain(&config.replicas)
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shown,
        [
            "postgres://app:***@writer.internal:5432/app?sslmode=require",
            "postgres://app@r1:5432/app?sslmode=require",
            "postgres://app@r2:5432/app?sslmode=disable",
            "postgres://app:***@r3:5432/app?sslmode=require",
        ]
    );
}

#[test]
fn duplicate_replica_is_rejected() {
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_URLS", "postgres://u@r1:5432/app"),
        ("DATABASE_REPLICA_HOSTS", "R1"),
    ]);
    assert_eq!(
        err.to_string(),
        "`DATABASE_REPLICA_HOSTS[0]`: replica R1:5432 is listed twice"
    );
}

#[test]
fn replica_equal_to_writer_is_rejected() {
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_HOSTS", "writer.internal"),
    ]);
    assert!(
        matches!(err, ConfigError::ReplicaIsWriter { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("replica writer.internal:5432 is the writer"),
        "{err}"
    );
}

#[test]
fn invalid_secret_json_is_rejected_without_quoting_it() {
    let err = env_err(&[("DATABASE_SECRET", &format!(r#"{{"password":"{PASSWORD}""#))]);
    assert!(matches!(err, ConfigError::InvalidSecret { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("`DATABASE_SECRET` is not a valid database secret"),
        "{err}"
    );
}

#[test]
fn missing_or_mistyped_secret_fields_are_named() {
    let cases = [
        (r#"{"password":"P","host":"h"}"#, "username", "is missing"),
        (r#"{"username":"u","host":"h"}"#, "password", "is missing"),
        (r#"{"username":"u","password":"P"}"#, "host", "is missing"),
        (
            r#"{"username":"u","password":"P","host":"h","port":"http"}"#,
            "port",
            "is not a port number",
        ),
        (
            r#"{"username":"u","password":"P","host":"h","port":70000}"#,
            "port",
            "is not a port number",
        ),
        (
            r#"{"username":"u","password":7,"host":"h"}"#,
            "password",
            "is not a non-empty string",
        ),
    ];
    for (secret, field, problem) in cases {
        let secret = secret.replace("\"P\"", &format!("\"{PASSWORD}\""));
        let err = env_err(&[("DATABASE_SECRET", &secret)]);
        let text = err.to_string();
        assert!(
            text.contains(&format!("field `{field}` of the database secret {problem}")),
            "{secret}: {text}"
        );
    }
}

#[test]
fn bad_numbers_and_pool_sizes_are_rejected() {
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_POOL_SIZE", "ten"),
    ]);
    assert_eq!(
        err.to_string(),
        "`DATABASE_REPLICA_POOL_SIZE` = `ten` is not a whole number"
    );
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_WRITER_POOL_SIZE", "0"),
    ]);
    assert_eq!(
        err.to_string(),
        "`DATABASE_WRITER_POOL_SIZE` = 0 is out of range: expected from 1 to 10000 connections"
    );
    let err = env_err(&[("DATABASE_URL", &writer()), ("DATABASE_WARM_UP", "11")]);
    assert_eq!(
        err.to_string(),
        "`DATABASE_WARM_UP` = 11 is larger than the pool size 10"
    );
}

#[test]
fn debug_of_a_config_hides_every_password() {
    let config = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_HOSTS", "r1,r2"),
    ])
    .unwrap();
    let text = format!("{config:?}");
    assert!(!text.contains(PASSWORD), "{text}");
    assert_eq!(text.matches("app:***@").count(), 3, "{text}");
}

#[test]
fn builder_checks_like_the_environment() {
    let config = Config::new(&writer())
        .unwrap()
        .with_replica("postgres://r1/app")
        .unwrap();
    assert_eq!(config.replicas.len(), 1);
    let err = config.with_replica("postgres://r1/app").unwrap_err();
    assert_eq!(
        err.to_string(),
        "`replicas[1]`: replica r1:5432 is listed twice"
    );
}

#[test]
fn health_and_balance_settings_from_env_and_serde_agree() {
    use diesel_replica::Balance;

    let from_env = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_HOSTS", "r1,r2"),
        ("DATABASE_BALANCE", "weighted"),
        ("DATABASE_REPLICA_WEIGHTS", "3, 1"),
        ("DATABASE_EJECT_AFTER", "5"),
        ("DATABASE_READ_RETRIES", "1"),
        ("DATABASE_PROBE_INTERVAL_MS", "100"),
        ("DATABASE_PROBE_MAX_INTERVAL_MS", "400"),
        ("DATABASE_READS_FALL_BACK_TO_WRITER", "false"),
        ("DATABASE_STATEMENT_TIMEOUT_MS", "1500"),
    ])
    .unwrap();
    assert_eq!(from_env.balance, Balance::Weighted);
    assert_eq!(from_env.replica_weights, [3, 1]);
    assert_eq!(from_env.health.eject_after, 5);
    assert_eq!(from_env.health.read_retries, 1);
    assert_eq!(from_env.health.probe_interval, Duration::from_millis(100));
    assert_eq!(
        from_env.health.probe_max_interval,
        Duration::from_millis(400)
    );
    assert!(!from_env.health.reads_fall_back_to_writer);
    assert_eq!(
        from_env.replica_pool.statement_timeout,
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        from_env.writer_pool.statement_timeout,
        Some(Duration::from_millis(1500))
    );

    let from_serde: Config = serde_json::from_value(serde_json::json!({
        "url": writer(),
        "replica_hosts": ["r1", "r2"],
        "balance": "weighted",
        "replica_weights": [3, 1],
        "health": {
            "eject_after": 5,
            "read_retries": 1,
            "probe_interval_ms": 100,
            "probe_max_interval_ms": 400,
            "reads_fall_back_to_writer": false
        },
        "writer_pool": { "statement_timeout_ms": 1500 },
        "replica_pool": { "statement_timeout_ms": 1500 }
    }))
    .unwrap();
    assert_eq!(from_env, from_serde);
}

#[test]
fn defaults_of_health_and_balance() {
    use diesel_replica::Balance;

    let config = env(&[("DATABASE_URL", &writer())]).unwrap();
    assert_eq!(config.balance, Balance::LeastInFlight);
    assert_eq!(config.health.eject_after, 2);
    assert_eq!(config.health.read_retries, 2);
    assert_eq!(config.health.probe_interval, Duration::from_millis(200));
    assert_eq!(config.health.probe_max_interval, Duration::from_millis(500));
    assert!(config.health.reads_fall_back_to_writer);
    assert_eq!(
        config.replica_pool.statement_timeout,
        Some(Duration::from_secs(10))
    );
}

#[test]
fn bad_balance_settings_are_rejected() {
    let err = env_err(&[("DATABASE_URL", &writer()), ("DATABASE_BALANCE", "fastest")]);
    assert_eq!(
        err.to_string(),
        "`DATABASE_BALANCE` = `fastest` is not valid: expected one of round_robin, random, least_in_flight, weighted"
    );
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_HOSTS", "r1,r2"),
        ("DATABASE_REPLICA_WEIGHTS", "3"),
    ]);
    assert_eq!(
        err.to_string(),
        "`DATABASE_REPLICA_WEIGHTS` has 1 weight(s) for 2 replica(s): give one weight per replica, in order, not all 0"
    );
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_HOSTS", "r1"),
        ("DATABASE_REPLICA_WEIGHTS", "0"),
    ]);
    assert!(matches!(err, ConfigError::InvalidWeights { .. }), "{err:?}");
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_WEIGHTS", "x"),
    ]);
    assert_eq!(
        err.to_string(),
        "`DATABASE_REPLICA_WEIGHTS` = `x` is not a whole number"
    );
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_READS_FALL_BACK_TO_WRITER", "maybe"),
    ]);
    assert_eq!(
        err.to_string(),
        "`DATABASE_READS_FALL_BACK_TO_WRITER` = `maybe` is not valid: expected true or false"
    );
    let err = serde_json::from_str::<Config>(r#"{"url":"postgres://h/d","balance":"fastest"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown strategy `fastest`"), "{err}");
}

#[test]
fn shared_schemas_from_env_and_serde_and_their_checks() {
    let from_env = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_SHARED_SCHEMAS", "public, reference"),
    ])
    .unwrap();
    assert_eq!(from_env.shared_schemas, ["public", "reference"]);
    let from_serde: Config = serde_json::from_value(serde_json::json!({
        "url": writer(),
        "shared_schemas": ["public", "reference"]
    }))
    .unwrap();
    assert_eq!(from_env, from_serde);
    assert_eq!(
        env(&[("DATABASE_URL", &writer())]).unwrap().shared_schemas,
        ["public"]
    );
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_SHARED_SCHEMAS", "public,x; DROP TABLE y"),
    ]);
    assert!(matches!(err, ConfigError::InvalidSchema { .. }), "{err:?}");
    assert_eq!(
        report(&err),
        "`DATABASE_SHARED_SCHEMAS`: schema name \"x; DROP TABLE y\" is not a plain identifier: \
         has ';' at byte 1: use lower-case ASCII letters, digits and `_`, not starting with a digit"
    );
}

#[test]
fn passwords_never_show_wherever_they_are_given() {
    let key_value = format!("host=writer.internal user=app password={PASSWORD} dbname=app");
    let query = format!("postgres://app@writer.internal/app?password={PASSWORD}");
    for url in [key_value, query] {
        let config = env(&[("DATABASE_URL", &url), ("DATABASE_REPLICA_HOSTS", "r1")]).unwrap();
        let text = format!("{config:?} {}", config.writer);
        assert!(!text.contains(PASSWORD), "{text}");
        assert_eq!(
            config.replicas[0].to_string(),
            "postgres://app:***@r1:5432/app"
        );
    }
    // A key=value string that does not parse is not echoed.
    let err = env_err(&[(
        "DATABASE_URL",
        &format!("host=writer user=app password={PASSWORD} port=x"),
    )]);
    assert!(err.to_string().contains("`port`"), "{err}");
}

#[test]
fn a_raw_slash_in_a_password_is_refused_with_a_hint() {
    let err = env_err(&[("DATABASE_URL", "postgres://u:4711/s3cr3t-Pa55@host:6500/db")]);
    let text = err.to_string();
    assert!(text.contains("percent-encode `/` as %2F"), "{text}");
    assert!(!text.contains("4711"), "{text}");
    let config = env(&[(
        "DATABASE_URL",
        "postgres://u:4711%2Fs3cr3t-Pa55@host:6500/db",
    )])
    .unwrap();
    assert_eq!(config.writer.address(), "host:6500");
}

#[test]
fn absurd_numbers_are_refused_with_the_setting_and_its_range() {
    let cases = [
        (
            "DATABASE_REPLICA_POOL_SIZE",
            "1000000000000",
            "from 1 to 10000 connections",
        ),
        (
            "DATABASE_REPLICA_POOL_SIZE",
            "18446744073709551615",
            "from 1 to 10000",
        ),
        (
            "DATABASE_WRITER_POOL_SIZE",
            "99999999999999999999999",
            "at most 18446744073709551615",
        ),
        (
            "DATABASE_CONNECT_TIMEOUT_MS",
            "0",
            "from 1 to 2147483647 ms",
        ),
        (
            "DATABASE_RECYCLE_TIMEOUT_MS",
            "0",
            "from 1 to 2147483647 ms",
        ),
        (
            "DATABASE_STATEMENT_TIMEOUT_MS",
            "2147483648",
            "from 1 to 2147483647 ms",
        ),
        (
            "DATABASE_POOL_TIMEOUT_MS",
            "18446744073709551615",
            "to 2147483647 ms",
        ),
        (
            "DATABASE_PROBE_INTERVAL_MS",
            "0",
            "from 10 to 2147483647 ms",
        ),
        (
            "DATABASE_PROBE_MAX_INTERVAL_MS",
            "100",
            "at least the probe interval, 200 ms",
        ),
        ("DATABASE_EJECT_AFTER", "0", "from 1 to 4294967295"),
        ("DATABASE_READ_RETRIES", "4294967296", "at most 4294967295"),
    ];
    for (key, value, expected) in cases {
        let err = env_err(&[("DATABASE_URL", &writer()), (key, value)]);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("`{key}` = ")),
            "{key}={value}: {text}"
        );
        assert!(text.contains(expected), "{key}={value}: {text}");
    }
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_REPLICA_HOSTS", "r1"),
        ("DATABASE_REPLICA_WEIGHTS", "4294967296"),
    ]);
    assert!(err.to_string().contains("at most 4294967295"), "{err}");
}

#[test]
fn zero_statement_timeout_means_none() {
    let config = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_STATEMENT_TIMEOUT_MS", "0"),
    ])
    .unwrap();
    assert_eq!(config.writer_pool.statement_timeout, None);
    let config: Config = serde_json::from_value(serde_json::json!({
        "url": writer(),
        "replica_pool": { "statement_timeout_ms": 0 }
    }))
    .unwrap();
    assert_eq!(config.replica_pool.statement_timeout, None);
}

#[test]
fn serde_and_hand_built_configs_are_checked_like_the_environment() {
    let err = serde_json::from_value::<Config>(serde_json::json!({
        "url": writer(),
        "replica_pool": { "max_size": 1_000_000_u64 }
    }))
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("`replica_pool.max_size` = 1000000 is out of range"),
        "{err}"
    );
    let err = serde_json::from_value::<Config>(serde_json::json!({
        "url": writer(),
        "health": { "probe_interval_ms": 0 }
    }))
    .unwrap_err();
    assert!(err.to_string().contains("`health.probe_interval`"), "{err}");

    let mut config = Config::new(&writer()).unwrap();
    config.replica_pool.max_size = usize::MAX;
    let err = diesel_replica::ReplicaSet::new(config)
        .err()
        .expect("an absurd pool size is refused");
    assert!(
        err.to_string().contains(&format!(
            "`replica_pool.max_size` = {} is out of range",
            usize::MAX
        )),
        "{err}"
    );
    let mut config = Config::new(&writer()).unwrap();
    config.writer_pool.connect_timeout = Some(Duration::ZERO);
    assert!(diesel_replica::ReplicaSet::new(config).is_err());
    let mut config = Config::new(&writer()).unwrap();
    config.health.probe_max_interval = Duration::from_millis(50);
    assert!(diesel_replica::ReplicaSet::new(config).is_err());
}

#[test]
fn replica_address_errors_give_one_reason() {
    for (host, reason) in [
        (":5433", "it names no host; expected host or host:port"),
        ("user@h", "takes no user name or password"),
    ] {
        let err = env_err(&[
            ("DATABASE_URL", &writer()),
            ("DATABASE_REPLICA_HOSTS", host),
        ]);
        let text = err.to_string();
        assert!(text.contains(reason), "{host}: {text}");
        assert_eq!(text.matches("expected").count(), 1, "{host}: {text}");
    }
}

#[test]
fn obvious_spellings_are_accepted() {
    let config = Config::from_vars(
        Some("analytics"),
        [
            ("ANALYTICS_DATABASE_URL", writer()),
            ("ANALYTICS_DATABASE_BALANCE", "LEAST_IN_FLIGHT".to_owned()),
            (
                "ANALYTICS_DATABASE_READS_FALL_BACK_TO_WRITER",
                "FALSE".to_owned(),
            ),
        ],
    )
    .unwrap();
    assert_eq!(config.balance, diesel_replica::Balance::LeastInFlight);
    assert!(!config.health.reads_fall_back_to_writer);
    let config: Config = serde_json::from_value(serde_json::json!({
        "url": writer(),
        "balance": "Round-Robin"
    }))
    .unwrap();
    assert_eq!(config.balance, diesel_replica::Balance::RoundRobin);
    let err = Config::from_vars(Some("my app"), [("X", "y")]).unwrap_err();
    assert!(
        err.to_string().contains("prefix `my app` is not valid"),
        "{err}"
    );
}

#[test]
fn secret_files_are_read_and_their_problems_named_without_the_password() {
    let dir = std::env::temp_dir().join(format!("diesel-replica-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        format!(
            r#"{{"username":"app","password":"{PASSWORD}","host":"db","port":5433,"dbname":"app"}}"#
        ),
    )
    .unwrap();
    let config = env(&[
        ("DATABASE_SECRET_FILE", good.to_str().unwrap()),
        ("DATABASE_REPLICA_HOSTS", "r1"),
    ])
    .unwrap();
    assert_eq!(config.writer.address(), "db:5433");
    assert!(config.credentials.is_some());
    assert!(!format!("{config:?}").contains(PASSWORD));

    let malformed = dir.join("malformed.json");
    std::fs::write(&malformed, format!("{{\"password\": \"{PASSWORD}\"")).unwrap();
    let missing = dir.join("missing.json");
    for (path, expected) in [
        (&missing, "cannot be read"),
        (&malformed, "EOF while parsing"),
    ] {
        let err = env_err(&[("DATABASE_SECRET_FILE", path.to_str().unwrap())]);
        let text = err.to_string();
        assert!(
            text.starts_with("`DATABASE_SECRET_FILE` is not a valid database secret"),
            "{text}"
        );
        assert!(
            text.contains(path.to_str().unwrap()) && text.contains(expected),
            "{text}"
        );
    }
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_SECRET_FILE", good.to_str().unwrap()),
    ]);
    assert!(matches!(err, ConfigError::Conflict { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn secret_files_that_never_end_or_are_too_large_are_refused_at_once() {
    let dir = std::env::temp_dir().join(format!(
        "diesel-replica-config-special-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let huge = dir.join("huge.json");
    // A valid secret followed by 1 MiB of blanks: read whole, it would parse.
    let mut text = format!(r#"{{"username":"app","password":"{PASSWORD}","host":"db"}}"#);
    text.push_str(&" ".repeat(1 << 20));
    std::fs::write(&huge, text).unwrap();
    for (path, expected) in [
        (fifo.as_path(), "not a regular file"),
        (std::path::Path::new("/dev/zero"), "not a regular file"),
        (dir.as_path(), "not a regular file"),
        (huge.as_path(), "more than 65536 bytes"),
    ] {
        // On its own thread: a reader that blocks fails the test, not the run.
        let value = path.to_str().unwrap().to_owned();
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(env(&[("DATABASE_SECRET_FILE", &value)]).map(|_| ()));
        });
        let err = result
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{}: still reading after 5 s", path.display()))
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.starts_with("`DATABASE_SECRET_FILE` is not a valid database secret")
                && text.contains(expected),
            "{}: {text}",
            path.display()
        );
        assert!(!format!("{err:?}").contains(PASSWORD), "{err:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connection_lifetimes_from_env_and_serde() {
    let config = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_MAX_LIFETIME_MS", "60000"),
        ("DATABASE_IDLE_TIMEOUT_MS", "5000"),
    ])
    .unwrap();
    assert_eq!(
        config.replica_pool.max_lifetime,
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        config.writer_pool.idle_timeout,
        Some(Duration::from_secs(5))
    );
    let config: Config = serde_json::from_value(serde_json::json!({
        "url": writer(),
        "replica_pool": { "max_lifetime_ms": null, "idle_timeout_ms": 2000 }
    }))
    .unwrap();
    assert_eq!(config.replica_pool.max_lifetime, None);
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_MAX_LIFETIME_MS", "10"),
    ]);
    assert!(
        err.to_string().contains("from 1000 to 2147483647 ms"),
        "{err}"
    );
}

#[test]
fn a_set_can_be_built_before_a_runtime_starts() {
    // Pools open nothing until used; background tasks wait for a runtime.
    assert!(diesel_replica::ReplicaSet::new(Config::new(&writer()).unwrap()).is_ok());
    let config = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_DISCOVERY", "hosts"),
        ("DATABASE_CANDIDATE_HOSTS", "a,b:5433"),
    ])
    .unwrap();
    assert!(matches!(
        &config.discovery,
        diesel_replica::Discovery::Hosts { candidates, .. } if candidates.len() == 2
    ));
    assert!(diesel_replica::ReplicaSet::new(config).is_ok());
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_DISCOVERY", "aurora"),
    ]);
    assert!(
        err.to_string().contains("DATABASE_AURORA_HOST_PATTERN"),
        "{err}"
    );
    let config = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_DISCOVERY", "Aurora"),
        (
            "DATABASE_AURORA_HOST_PATTERN",
            "?.cluster-xyz.eu-west-1.rds.amazonaws.com",
        ),
    ])
    .unwrap();
    assert!(matches!(
        &config.discovery,
        diesel_replica::Discovery::Aurora { interval, .. } if *interval == Duration::from_secs(30)
    ));
    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_DISCOVERY", "consul"),
    ]);
    assert!(err.to_string().contains("static, hosts or aurora"), "{err}");
    let err = env_err(&[("DATABASE_URL", &writer()), ("DATABASE_DISCOVERY", "hosts")]);
    assert!(
        err.to_string().contains("DATABASE_CANDIDATE_HOSTS"),
        "{err}"
    );
}

#[test]
fn bad_discovery_settings_are_named() {
    let hosts = [
        ("DATABASE_URL", writer()),
        ("DATABASE_DISCOVERY", "hosts".into()),
    ];
    for (key, value, expected) in [
        (
            "DATABASE_CANDIDATE_HOSTS",
            "a,app@b",
            "takes no user name or password",
        ),
        (
            "DATABASE_DISCOVERY_INTERVAL_MS",
            "0",
            "from 10 to 2147483647 ms",
        ),
    ] {
        let mut vars = hosts.to_vec();
        vars.push((key, value.into()));
        if key != "DATABASE_CANDIDATE_HOSTS" {
            vars.push(("DATABASE_CANDIDATE_HOSTS", "a".into()));
        }
        let err = Config::from_vars(None, vars).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(key) && text.contains(expected), "{text}");
        assert!(!text.contains(PASSWORD), "{text}");
    }
    for pattern in [
        "instance.cluster-x.rds.amazonaws.com",
        "?.?.example",
        "?/db",
    ] {
        let err = env_err(&[
            ("DATABASE_URL", &writer()),
            ("DATABASE_DISCOVERY", "aurora"),
            ("DATABASE_AURORA_HOST_PATTERN", pattern),
        ]);
        assert!(
            err.to_string().contains("DATABASE_AURORA_HOST_PATTERN"),
            "{pattern}: {err}"
        );
    }
}

#[test]
fn consistency_settings_from_env_and_serde_agree_and_default() {
    let defaults = env(&[("DATABASE_URL", &writer())]).unwrap().consistency;
    assert_eq!(defaults.lag_interval, Duration::from_millis(500));
    assert_eq!(defaults.max_replica_lag, None);
    assert_eq!(defaults.max_replica_lag_bytes, None);
    assert_eq!(defaults.read_your_writes_wait, Duration::from_millis(100));

    let from_env = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_LAG_INTERVAL_MS", "250"),
        ("DATABASE_MAX_REPLICA_LAG_MS", "2000"),
        ("DATABASE_MAX_REPLICA_LAG_BYTES", "16777216"),
        ("DATABASE_READ_YOUR_WRITES_WAIT_MS", "0"),
    ])
    .unwrap();
    let consistency = &from_env.consistency;
    assert_eq!(consistency.lag_interval, Duration::from_millis(250));
    assert_eq!(consistency.max_replica_lag, Some(Duration::from_secs(2)));
    assert_eq!(consistency.max_replica_lag_bytes, Some(16 << 20));
    assert_eq!(consistency.read_your_writes_wait, Duration::ZERO);
    let from_serde: Config = serde_json::from_value(serde_json::json!({
        "url": writer(),
        "consistency": {
            "lag_interval_ms": 250,
            "max_replica_lag_ms": 2000,
            "max_replica_lag_bytes": 16777216,
            "read_your_writes_wait_ms": 0
        }
    }))
    .unwrap();
    assert_eq!(from_env, from_serde);
}

#[test]
fn bad_consistency_settings_are_named_with_their_range() {
    /// Variables set, the one named in the error, and what it says.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 7] = [
        (
            &[("DATABASE_MAX_REPLICA_LAG_MS", "0")],
            "DATABASE_MAX_REPLICA_LAG_MS",
            "from 1 to 2147483647 ms",
        ),
        (
            &[("DATABASE_MAX_REPLICA_LAG_MS", "99999999999")],
            "DATABASE_MAX_REPLICA_LAG_MS",
            "from 1 to 2147483647 ms",
        ),
        (
            &[("DATABASE_MAX_REPLICA_LAG_BYTES", "0")],
            "DATABASE_MAX_REPLICA_LAG_BYTES",
            "or unset for no limit",
        ),
        (
            &[("DATABASE_MAX_REPLICA_LAG_BYTES", "-1")],
            "DATABASE_MAX_REPLICA_LAG_BYTES",
            "number",
        ),
        (
            &[("DATABASE_LAG_INTERVAL_MS", "5")],
            "DATABASE_LAG_INTERVAL_MS",
            "from 10 to 2147483647 ms",
        ),
        (
            &[
                ("DATABASE_LAG_INTERVAL_MS", "0"),
                ("DATABASE_MAX_REPLICA_LAG_MS", "100"),
            ],
            "DATABASE_LAG_INTERVAL_MS",
            "a lag limit is set",
        ),
        (
            &[("DATABASE_READ_YOUR_WRITES_WAIT_MS", "60001")],
            "DATABASE_READ_YOUR_WRITES_WAIT_MS",
            "from 0 to 60000 ms",
        ),
    ];
    for (vars, key, expected) in cases {
        let mut all = vec![("DATABASE_URL", writer())];
        all.extend(vars.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let err = Config::from_vars(None, all).expect_err(key);
        let text = err.to_string();
        assert!(text.contains(&format!("`{key}`")), "{vars:?}: {text}");
        assert!(text.contains(expected), "{vars:?}: {text}");
    }
    // A hand-built config is checked the same way.
    let mut config = Config::new(&writer()).unwrap();
    config.consistency.max_replica_lag_bytes = Some(0);
    let err = diesel_replica::ReplicaSet::new(config)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("max_replica_lag_bytes"), "{err}");
}

#[test]
fn monitor_off_is_allowed_without_a_limit() {
    let config = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_LAG_INTERVAL_MS", "0"),
    ])
    .unwrap();
    assert_eq!(config.consistency.lag_interval, Duration::ZERO);
}

#[test]
fn the_pooler_is_none_or_transaction_from_env_and_serde() {
    use diesel_replica::Pooler;

    assert_eq!(
        env(&[("DATABASE_URL", &writer())]).unwrap().pooler,
        Pooler::None
    );
    let behind = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_POOLER", " Transaction "),
    ])
    .unwrap();
    assert_eq!(behind.pooler, Pooler::Transaction);
    let err = env_err(&[("DATABASE_URL", &writer()), ("DATABASE_POOLER", "session")]);
    assert_eq!(
        err.to_string(),
        "`DATABASE_POOLER` = `session` is not valid: expected none or transaction"
    );
    let json: Config =
        serde_json::from_str(r#"{"url":"postgres://h/d","pooler":"transaction"}"#).unwrap();
    assert_eq!(json.pooler, Pooler::Transaction);
    let err = serde_json::from_str::<Config>(r#"{"url":"postgres://h/d","pooler":"pgbouncer"}"#)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown pooler `pgbouncer`, expected none or transaction"),
        "{err}"
    );
}

#[test]
fn startup_options_are_refused_behind_a_transaction_mode_pooler() {
    let with_options = "postgres://app:s3cret@writer:5432/app?options=-c%20work_mem%3D64MB";
    // Without a pooler they are kept.
    assert!(env(&[("DATABASE_URL", with_options)]).is_ok());
    for (url, replicas) in [
        (with_options.to_owned(), String::new()),
        (
            writer(),
            "postgres://app:s3cret@r1:5432/app?options=-c%20work_mem%3D1MB".to_owned(),
        ),
    ] {
        let mut vars = vec![
            ("DATABASE_URL", url.as_str()),
            ("DATABASE_POOLER", "transaction"),
        ];
        if !replicas.is_empty() {
            vars.push(("DATABASE_REPLICA_URLS", replicas.as_str()));
        }
        let err = env_err(&vars).to_string();
        assert!(
            err.contains("no startup options behind a transaction-mode pooler"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }
}

#[test]
fn a_read_login_for_the_writer_from_env_and_serde_and_its_checks() {
    let config = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_WRITER_READ_USER", " app_reader "),
        ("DATABASE_WRITER_READ_PASSWORD", "reader-secret"),
    ])
    .unwrap();
    let login = config.writer_read_login.clone().unwrap();
    assert_eq!(login.user, "app_reader");
    assert_eq!(login.password.expose(), "reader-secret");
    assert!(!format!("{config:?}").contains("reader-secret"));
    // Without a password of its own, the writer's.
    let config = env(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_WRITER_READ_USER", "app_reader"),
    ])
    .unwrap();
    assert_eq!(
        config.writer_read_login.unwrap().password.expose(),
        PASSWORD
    );
    assert_eq!(
        env(&[("DATABASE_URL", &writer())])
            .unwrap()
            .writer_read_login,
        None
    );

    let err = env_err(&[
        ("DATABASE_URL", &writer()),
        ("DATABASE_WRITER_READ_PASSWORD", "reader-secret"),
    ])
    .to_string();
    assert!(err.contains("DATABASE_WRITER_READ_USER"), "{err}");
    assert!(!err.contains("reader-secret"), "{err}");
    let long = "r".repeat(64);
    for user in ["", "  ", "bad\nname", long.as_str()] {
        let err = env_err(&[
            ("DATABASE_URL", &writer()),
            ("DATABASE_WRITER_READ_USER", user),
            ("DATABASE_WRITER_READ_PASSWORD", "reader-secret"),
        ])
        .to_string();
        assert!(
            err.contains("a role name of 1 to 63 bytes"),
            "{user:?}: {err}"
        );
        assert!(!err.contains("reader-secret"), "{err}");
    }

    // Not with a credentials provider, whose login every connection takes.
    let secret = std::env::temp_dir().join(format!(
        "diesel-replica-read-login-{}.json",
        std::process::id()
    ));
    std::fs::write(
        &secret,
        r#"{"username":"app","password":"pw","host":"db","dbname":"app"}"#,
    )
    .unwrap();
    let err = env_err(&[
        ("DATABASE_SECRET_FILE", secret.to_str().unwrap()),
        ("DATABASE_WRITER_READ_USER", "app_reader"),
    ])
    .to_string();
    std::fs::remove_file(&secret).unwrap();
    assert!(err.contains("no credentials provider"), "{err}");

    let json: Config =
        serde_json::from_str(r#"{"url":"postgres://app:pw@h/d","writer_read_user":"app_reader"}"#)
            .unwrap();
    assert_eq!(json.writer_read_login.unwrap().password.expose(), "pw");
}
