//! Calls on the throwaway local cluster of `--local`: the testkit's kill,
//! restart and promotion block, so they run on the blocking pool while the
//! workers go on.

use std::sync::Arc;

use diesel_replica_testkit::Cluster;

/// Runs a blocking testkit call on the blocking pool.
pub(crate) async fn blocking(
    cluster: &Arc<Cluster>,
    call: impl FnOnce(&Cluster) -> Result<(), diesel_replica_testkit::Error> + Send + 'static,
) -> Result<(), String> {
    let cluster = cluster.clone();
    match tokio::task::spawn_blocking(move || call(&cluster)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the blocking task failed: {e}")),
    }
}
