//! Waking an idle relay when messages are committed.

use std::time::Duration;

use outbox::schema::WAKEUP_CHANNEL;
use sqlx::postgres::PgListener;
use sqlx::PgPool;

/// Waits for a commit notification or a timeout, whichever comes first.
/// Notifications sent while the listener's connection was down are lost,
/// which the timeout (the poll interval) makes up for.
pub struct Waker {
    pool: PgPool,
    listener: Option<PgListener>,
    enabled: bool,
}

impl Waker {
    /// A waker that listens when `notify` is true, and only sleeps otherwise.
    pub fn new(pool: PgPool, notify: bool) -> Self {
        Waker {
            pool,
            listener: None,
            enabled: notify,
        }
    }

    /// Whether this waker listens for notifications (`--wakeup notify`).
    pub fn listens(&self) -> bool {
        self.enabled
    }

    /// Starts listening now, so a commit between this call and the next
    /// [`wait`](Self::wait) is not missed.
    pub async fn listen(&mut self) {
        if !self.enabled || self.listener.is_some() {
            return;
        }
        let connect = async {
            let mut l = PgListener::connect_with(&self.pool).await?;
            l.listen(WAKEUP_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match connect.await {
            Ok(l) => self.listener = Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for new messages; polling until it works")
            }
        }
    }

    /// Returns when a commit was notified or `timeout` passed.
    pub async fn wait(&mut self, timeout: Duration) {
        self.listen().await;
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(timeout).await;
            return;
        };
        match tokio::time::timeout(timeout, listener.recv()).await {
            Ok(Ok(_)) => {
                // One look at the table covers every commit so far.
                while listener.next_buffered().is_some() {}
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lost the LISTEN connection; reconnecting");
                self.listener = None;
            }
            Err(_elapsed) => {}
        }
    }
}
