//! What each pooled connection remembers between its users: whether one of
//! its statements failed since its session was last reset, told by
//! diesel's instrumentation, which sees every statement whatever sent it.
//!
//! A failed statement may have left the session in a failed transaction,
//! where nothing but `ROLLBACK` runs, so the next reset starts with one
//! (see the session module). Without failures, the reset needs no
//! `ROLLBACK`, which warns (and is logged) when there is no transaction.

use std::sync::Arc;

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::wire::Tap;

/// Forwards every event to the instrumentation diesel would have given the
/// connection, and notes failed statements.
pub(crate) struct Watch {
    inner: Option<Box<dyn Instrumentation>>,
    failed: bool,
    /// What follows the connection's wire, when something does (see the
    /// wire module).
    tap: Option<Arc<Tap>>,
}

impl Watch {
    /// Installs a watch on a new connection.
    pub(crate) fn install(conn: &mut AsyncPgConnection, tap: Option<Arc<Tap>>) {
        conn.set_instrumentation(Watch {
            inner: diesel::connection::get_default_instrumentation(),
            failed: false,
            tap,
        });
    }

    /// What follows the connection's wire. A connection whose watch a body
    /// replaced has none any more: its reads get the whole reset.
    pub(crate) fn tap(conn: &mut AsyncPgConnection) -> Option<Arc<Tap>> {
        conn.instrumentation()
            .downcast_mut::<Watch>()
            .and_then(|watch| watch.tap.clone())
    }

    /// Whether a statement failed since the last call, which forgets it. A
    /// connection whose watch a body replaced gets a new one, and counts
    /// as failed: nothing is known of it.
    ///
    /// Call only while no query of the connection is in flight.
    pub(crate) fn take_failed(conn: &mut AsyncPgConnection) -> bool {
        match conn.instrumentation().downcast_mut::<Watch>() {
            Some(watch) => std::mem::take(&mut watch.failed),
            None => {
                Self::install(conn, None);
                true
            }
        }
    }
}

impl Instrumentation for Watch {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::FinishQuery { error: Some(_), .. } = &event {
            self.failed = true;
        }
        if let Some(inner) = &mut self.inner {
            inner.on_connection_event(event);
        }
    }
}
