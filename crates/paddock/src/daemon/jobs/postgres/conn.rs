//! The PostgreSQL store's connections: opening one (the URL's password never in a
//! message), reconnecting with backoff after a loss, and the LISTEN connection that
//! wakes each service's pump when a job is enqueued anywhere.

use std::collections::HashMap;
use std::time::Duration;

use super::super::error::StoreError;
use super::super::finishes::Finishes;
use super::super::pump::Signals;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// Connections one daemon holds: the store's, the lease heartbeat's, and the
/// one that LISTENs.
pub(in crate::daemon) const CONNECTIONS_PER_DAEMON: u32 = 3;

pub(super) async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.map_err(|e| {
        let full = e.code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS);
        let hint = if full {
            format!(
                " (the server's connection limit, max_connections, is reached: each paddock daemon holds {CONNECTIONS_PER_DAEMON} connections; raise max_connections, or put a pooler such as PgBouncer in session mode in front)"
            )
        } else {
            String::new()
        };
        StoreError::Unreachable(format!(
            "job store {}: {}{hint}",
            redact(url),
            super::super::error::describe_pg(&e)
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::error!("job store connection: {e}");
        }
    });
    Ok(client)
}

/// Connects again after a connection was lost, with backoff, until it works.
pub(super) async fn reconnect(url: &str, what: &str) -> Client {
    let mut delay = Duration::from_millis(100);
    loop {
        match connect(url).await {
            Ok(c) => {
                tracing::info!("job store: {what} connection re-established");
                return c;
            }
            Err(e) => {
                tracing::error!("job store: reconnecting the {what} connection: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The URL without its password, for messages and `paddock jobs stats`.
pub(in crate::daemon) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(a), Some(b)) if b > a => {
            let creds = &url[a + 3..b];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..a + 3], &url[b..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A connection that LISTENs for new jobs and wakes the matching pump, for
/// cancelled jobs (`paddock_cancel`, "SERVICE ID") that this daemon's pump may hold
/// claimed, and for finished jobs (`paddock_finish`, "ID ID …") clients may wait for; it reconnects if the connection is lost (the pumps' periodic claim
/// covers the gap; a cancel missed meanwhile is found when the job's start or
/// outcome does not apply).
pub(super) async fn listen(
    url: String,
    pumps: HashMap<String, Signals>,
    finishes: std::sync::Arc<Finishes>,
) -> Result<(), StoreError> {
    let first = tokio_postgres::connect(&url, NoTls)
        .await
        .map_err(|e| StoreError::Unreachable(format!("job store {}: {e}", redact(&url))))?;
    tokio::spawn(async move {
        let mut next = Some(first);
        let mut delay = Duration::from_millis(100);
        loop {
            let (client, mut conn) = match next.take() {
                Some(c) => c,
                None => match tokio_postgres::connect(&url, NoTls).await {
                    Ok(c) => {
                        tracing::info!("job store: notification connection re-established");
                        delay = Duration::from_millis(100);
                        c
                    }
                    Err(e) => {
                        tracing::error!("job store: reconnecting the notification connection: {e}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            let listening = client
                .batch_execute("LISTEN paddock_jobs; LISTEN paddock_cancel; LISTEN paddock_finish");
            let mut listening = std::pin::pin!(listening);
            let mut subscribed = false;
            loop {
                tokio::select! {
                    r = &mut listening, if !subscribed => {
                        subscribed = true;
                        if let Err(e) = r {
                            tracing::error!("LISTEN paddock_jobs, paddock_cancel, paddock_finish: {e}; reconnecting");
                            break;
                        }
                        // Listening again: whatever was notified while it was not is
                        // found by a fresh look (pumps claim, waiters read again).
                        for p in pumps.values() {
                            p.wake();
                        }
                        finishes.wake_all();
                    }
                    msg = std::future::poll_fn(|cx| conn.poll_message(cx)) => match msg {
                        Some(Ok(AsyncMessage::Notification(n))) => match n.channel() {
                            // Several ids, separated by spaces (one id from
                            // daemons before the bulk store).
                            "paddock_finish" => finishes.committed(n.payload().split(' ')),
                            "paddock_cancel" => {
                                if let Some((service, id)) = n.payload().split_once(' ')
                                    && let Some(p) = pumps.get(service)
                                {
                                    p.cancelled(id.to_string());
                                }
                            }
                            _ => {
                                if let Some(p) = pumps.get(n.payload()) {
                                    p.wake();
                                }
                            }
                        },
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::error!("job store notifications: {e}");
                            break;
                        }
                        None => break,
                    }
                }
            }
            // Wake every pump and every long-poll: notifications may have been
            // missed meanwhile (a waiter reads its job again and waits on). They
            // are woken again once LISTEN is back.
            for p in pumps.values() {
                p.wake();
            }
            finishes.wake_all();
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
