//! The one place physical connections are made: a node's pool, whose
//! connections are opened from parsed settings (never from a string), the
//! seam where TLS and credential providers plug in.

use std::sync::Arc;

use deadpool::Runtime;
use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, SetupCallback,
};

use crate::config::PoolConfig;
use crate::error::error_chain;
use crate::url::DatabaseUrl;

/// A pool of connections to the node `url` names.
///
/// Idle connections are recycled without a check (diesel-async's `Fast`):
/// the first statement of each use is the check (see the attempt module).
pub(crate) fn pool(
    url: &DatabaseUrl,
    config: &PoolConfig,
    application_name: &str,
) -> Pool<AsyncPgConnection> {
    let mut manager_config = ManagerConfig::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup =
        connector(url.connect_config(application_name, config.statement_timeout()));
    // The manager's URL string is only a label: connections are opened
    // from the parsed settings above.
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        url.to_string(),
        manager_config,
    );
    Pool::builder(manager)
        .max_size(config.max_size)
        .wait_timeout(config.wait_timeout)
        .create_timeout(config.connect_timeout)
        .recycle_timeout(config.recycle_timeout)
        .runtime(Runtime::Tokio1)
        .build()
        .expect("a pool with a runtime always builds")
}

/// Opens connections from parsed settings, the one reading of the URL.
fn connector(config: tokio_postgres::Config) -> SetupCallback<AsyncPgConnection> {
    let config = Arc::new(config);
    Box::new(move |_label| {
        let config = Arc::clone(&config);
        Box::pin(async move {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| ConnectionError::BadConnection(error_chain(&e)))?;
            AsyncPgConnection::try_from_client_and_connection(client, connection).await
        })
    })
}
