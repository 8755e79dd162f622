//! The README's "Testing your app" example, as it is shown there (the
//! README quotes this file from `use` to the end; a test below checks).

use diesel_replica::ReplicaSet;
use diesel_replica_testkit::{Cluster, who_served};

#[tokio::test(flavor = "multi_thread")]
async fn reads_run_on_replicas_and_survive_one_going_down() {
    // A throwaway primary and two streaming replicas, removed when dropped.
    let cluster = Cluster::start(2).expect("a throwaway cluster");
    let db = ReplicaSet::connect(cluster.config()).await.unwrap();

    let served = db.read(who_served).await.unwrap();
    assert!(served.in_recovery, "reads run on a replica");

    // Kill one replica: every read still succeeds, on the other.
    cluster.kill(cluster.replica_ids()[0]).unwrap();
    for _ in 0..20 {
        let served = db.read(who_served).await.unwrap();
        assert_eq!(served.port, i32::from(cluster.replicas()[1].port()));
    }
}

#[test]
fn the_readme_shows_this_example() {
    let file = include_str!("testing_your_app.rs");
    let example = &file[file.find("use diesel_replica::").unwrap()..file.find("#[test]").unwrap()];
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(example.trim_end()),
        "README.md's \"Testing your app\" must show tests/testing_your_app.rs from `use` to the first #[test]"
    );
}
