//! Connections of the background tasks' own (discovery, the lag monitor),
//! outside the pools: one per node, opened when first needed and kept for
//! the next question while it works.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::pg::Pg;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::PoolableConnection;

use crate::connector::Connector;
use crate::credentials::CredentialsProvider;
use crate::error::error_chain;
use crate::node::NodeId;
use crate::pooler::Pooler;
use crate::session;
use crate::url::DatabaseUrl;

/// Why a question got no rows.
#[derive(Debug)]
pub(crate) enum Unanswered {
    /// The node answered, with an error: it is up.
    Refused(String),
    /// The connection could not be opened, or broke: the node is down or
    /// restarting.
    Lost(String),
    /// No connection, or no answer, within the timeout: the node is hung
    /// or cut off.
    Silent(String),
}

impl fmt::Display for Unanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(reason) | Self::Lost(reason) | Self::Silent(reason) => {
                f.write_str(reason)
            }
        }
    }
}

impl From<Unanswered> for String {
    fn from(unanswered: Unanswered) -> Self {
        unanswered.to_string()
    }
}

/// One task's connections.
pub(crate) struct Probes {
    application_name: String,
    credentials: Option<CredentialsProvider>,
    /// Bounds connecting and each query.
    timeout: Duration,
    pooler: Pooler,
    nodes: Mutex<Vec<Probe>>,
}

/// A node asked: its connector (built once: its TLS configuration reads the
/// certificate files) and its connection while it is not in use.
struct Probe {
    url: DatabaseUrl,
    connector: Arc<Connector>,
    idle: Option<AsyncPgConnection>,
    /// Whether the node has answered a question of this task's.
    answered: bool,
}

impl Probes {
    /// Connections named `{application_name}-{purpose}` (within the 63
    /// bytes the server keeps), so that they are told apart from the pools'
    /// in `pg_stat_activity`; a URL's own `application_name` still wins.
    pub(crate) fn new(
        application_name: &str,
        purpose: &str,
        credentials: Option<CredentialsProvider>,
        timeout: Duration,
        pooler: Pooler,
    ) -> Self {
        let mut room = 63usize
            .saturating_sub(purpose.len() + 1)
            .min(application_name.len());
        while !application_name.is_char_boundary(room) {
            room -= 1;
        }
        Self {
            application_name: format!("{}-{purpose}", &application_name[..room]),
            credentials,
            timeout,
            pooler,
            nodes: Mutex::default(),
        }
    }

    /// Runs `sql` on the connection to the node `url` names, opening one
    /// when there is none, each within the timeout. A connection that
    /// fails otherwise than with the server's answer is closed; the next
    /// question opens another.
    pub(crate) async fn query<R>(
        &self,
        url: &DatabaseUrl,
        sql: &'static str,
    ) -> Result<Vec<R>, Unanswered>
    where
        R: QueryableByName<Pg> + Send + 'static,
    {
        use diesel_async::RunQueryDsl;

        let (connector, idle) = self.take(url).map_err(Unanswered::Refused)?;
        let timeout = self.timeout;
        let mut conn = match idle {
            Some(conn) => conn,
            None => match tokio::time::timeout(timeout, connector.open()).await {
                Ok(opened) => opened.map_err(Unanswered::Lost)?,
                Err(_) => {
                    return Err(Unanswered::Silent(format!(
                        "no connection within {timeout:?}"
                    )));
                }
            },
        };
        let asked = {
            let shared: &AsyncPgConnection = &conn;
            let mut reader = shared;
            let question = diesel::sql_query(sql).load::<R>(&mut reader);
            tokio::time::timeout(timeout, session::ask(shared, self.pooler, question)).await
        };
        match asked {
            Ok(Ok(rows)) => {
                self.put_back(url, conn);
                Ok(rows)
            }
            Ok(Err(error)) => {
                let reason = error_chain(&error);
                let answered = matches!(&error, DieselError::DatabaseError(kind, _) if *kind != DatabaseErrorKind::ClosedConnection)
                    && !PoolableConnection::is_broken(&mut conn);
                if answered {
                    self.put_back(url, conn);
                    Err(Unanswered::Refused(reason))
                } else {
                    Err(Unanswered::Lost(reason))
                }
            }
            Err(_) => Err(Unanswered::Silent(format!("no answer within {timeout:?}"))),
        }
    }

    /// Forgets the nodes not in `live`, closing their connections.
    pub(crate) fn keep_only<'u>(&self, live: impl IntoIterator<Item = &'u DatabaseUrl>) {
        let live: Vec<&DatabaseUrl> = live.into_iter().collect();
        self.lock().retain(|probe| live.contains(&&probe.url));
    }

    /// The node's connector (built when first asked) and idle connection.
    fn take(
        &self,
        url: &DatabaseUrl,
    ) -> Result<(Arc<Connector>, Option<AsyncPgConnection>), String> {
        let mut nodes = self.lock();
        if let Some(probe) = nodes.iter_mut().find(|probe| probe.url == *url) {
            return Ok((Arc::clone(&probe.connector), probe.idle.take()));
        }
        let connector = Arc::new(Connector::new(
            url,
            &self.application_name,
            Some(self.timeout),
            self.credentials.as_ref(),
            NodeId::of(url).to_string(),
            Some(self.timeout),
            self.pooler,
        )?);
        nodes.push(Probe {
            url: url.clone(),
            connector: Arc::clone(&connector),
            idle: None,
            answered: false,
        });
        Ok((connector, None))
    }

    /// Whether the node `url` names has answered a question since it was
    /// first asked (and not forgotten by [`Probes::keep_only`] since): a
    /// node that stops answering, not one that was never reached.
    pub(crate) fn has_answered(&self, url: &DatabaseUrl) -> bool {
        self.lock()
            .iter()
            .any(|probe| probe.url == *url && probe.answered)
    }

    /// Keeps the connection of a node that answered, for the next question.
    fn put_back(&self, url: &DatabaseUrl, conn: AsyncPgConnection) {
        if let Some(probe) = self.lock().iter_mut().find(|probe| probe.url == *url) {
            probe.answered = true;
            probe.idle.get_or_insert(conn);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Probe>> {
        // Every change under the lock is a single push, retain or swap.
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_within_what_the_server_keeps_and_cut_on_a_character() {
        let short = Probes::new("billing", "lag", None, Duration::from_secs(1), Pooler::None);
        assert_eq!(short.application_name, "billing-lag");
        // 31 two-byte characters and one byte: 63 bytes, the longest name.
        let long = format!("{}x", "é".repeat(31));
        let probes = Probes::new(
            &long,
            "discovery",
            None,
            Duration::from_secs(1),
            Pooler::None,
        );
        assert!(
            probes.application_name.len() <= 63,
            "{}",
            probes.application_name
        );
        assert!(probes.application_name.ends_with("é-discovery"));
    }
}
