//! The group-commit loop both stores run: take every command waiting (up to
//! `MAX_GROUP`), apply them in one transaction, commit, and only then answer — so an
//! enqueue is acknowledged only once it is durable, and one fsync serves a whole
//! group.
//!
//! Invariants:
//! - a command's caller hears the commit's outcome, never an answer the commit then
//!   undid;
//! - a job's outcome (`Finish`) is never lost to a failed commit or a command that
//!   rolled back: it goes into a later group, after a pause, until it commits.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{Cmd, Finish, Reply, StoreError};

/// The most commands one transaction takes.
const MAX_GROUP: usize = 1024;

/// How long outcomes that failed to commit wait before they are tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What applying a group came to.
pub(super) struct Applied {
    /// One per command, in order; each is told the commit's error, if any.
    pub replies: Vec<Reply>,
    /// The commit's outcome.
    pub commit: Result<(), StoreError>,
    /// Outcomes whose own command rolled back inside a group that committed.
    pub again: Vec<Pending>,
}

/// An outcome written again: the job's id, the number of the claim that ran the
/// attempt, and how it ended.
pub(super) type Pending = (String, i64, Finish);

/// A store's dialect: applies a group of commands in one transaction.
pub(super) trait Dialect {
    fn apply_group(&mut self, cmds: Vec<Cmd>) -> impl Future<Output = Applied>;
}

/// Runs the store until every handle to it is dropped.
pub(super) async fn run(
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    mut dialect: impl Dialect,
    finishes: std::sync::Arc<super::finishes::Finishes>,
) {
    let mut retry: Vec<Pending> = vec![];
    loop {
        let mut group: Vec<Cmd> = if retry.is_empty() {
            match rx.recv().await {
                Some(first) => vec![first],
                None => return,
            }
        } else {
            tokio::time::sleep(RETRY_PAUSE).await;
            retry
                .drain(..)
                .map(|(id, claim, finish)| Cmd::Finish { id, claim, finish })
                .collect()
        };
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let outcomes = outcomes(&group);
        // Only when someone waits: a wait registered later reads the job after this
        // group's commit (reads go through this loop), so it misses nothing.
        let ended: Vec<String> = if finishes.any() {
            group.iter().filter_map(Cmd::ended).collect()
        } else {
            vec![]
        };
        let Applied {
            replies,
            commit,
            again,
        } = dialect.apply_group(group).await;
        let err = commit.err();
        retry = match &err {
            Some(e) => {
                tracing::error!("job store commit failed: {e}; job outcomes will be written again");
                outcomes
            }
            None => again,
        };
        for r in replies {
            r(err.as_ref());
        }
        if err.is_none() {
            finishes.committed(ended.iter().map(String::as_str));
        }
    }
}

/// The job outcomes in a group, to write again if it does not commit.
pub(super) fn outcomes(group: &[Cmd]) -> Vec<Pending> {
    group.iter().filter_map(Cmd::outcome).collect()
}

impl Cmd {
    /// The job whose attempt this command ends (done, failed) or that it cancels:
    /// whoever waits for it is woken once the group is committed.
    pub(super) fn ended(&self) -> Option<String> {
        match self {
            Cmd::Finish {
                id,
                finish: Finish::Done { .. } | Finish::Failed { .. },
                ..
            } => Some(id.clone()),
            Cmd::Cancel(id, _) => Some(id.clone()),
            _ => None,
        }
    }

    /// The job outcome this command records, if it is one.
    pub(super) fn outcome(&self) -> Option<Pending> {
        match self {
            Cmd::Finish { id, claim, finish } => Some((id.clone(), *claim, finish.clone())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// Records what each group held; fails the first `fail` commits.
    struct Fake {
        fail: usize,
        groups: std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    }

    impl Dialect for Fake {
        async fn apply_group(&mut self, cmds: Vec<Cmd>) -> Applied {
            let mut names = vec![];
            let mut replies: Vec<Reply> = vec![];
            for c in cmds {
                match c {
                    Cmd::Finish { id, .. } => {
                        names.push(format!("finish {id}"));
                        replies.push(Box::new(|_| {}));
                    }
                    Cmd::Sync(r) => {
                        names.push("sync".into());
                        replies.push(Box::new(move |err: Option<&StoreError>| {
                            assert!(err.is_none(), "a sync is answered after a commit");
                            let _ = r.send(());
                        }));
                    }
                    Cmd::Get(id, r) => {
                        names.push(format!("get {id}"));
                        replies.push(super::super::reply(
                            r,
                            Err(super::super::JobError::NotFound(id)),
                        ));
                    }
                    _ => unreachable!("not sent by this test"),
                }
            }
            self.groups.lock().unwrap().push(names);
            let commit = if self.fail > 0 {
                self.fail -= 1;
                Err("disk full".into())
            } else {
                Ok(())
            };
            Applied {
                replies,
                commit,
                again: vec![],
            }
        }
    }

    #[tokio::test]
    async fn outcomes_of_a_failed_commit_are_written_again_and_callers_hear_the_error() {
        let groups = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let (tx, rx) = mpsc::unbounded_channel();
        let finish = || Finish::Release {
            why: "test".into(),
            after_ms: 0,
        };
        tx.send(Cmd::Finish {
            id: "a".into(),
            claim: 1,
            finish: finish(),
        })
        .unwrap();
        let (get_tx, get_rx) = oneshot::channel();
        tx.send(Cmd::Get("b".into(), get_tx)).unwrap();
        let task = tokio::spawn(run(
            rx,
            Fake {
                fail: 1,
                groups: groups.clone(),
            },
            Default::default(),
        ));
        // The caller of the failed group hears the commit's error, not its answer.
        match get_rx.await.unwrap() {
            Err(super::super::JobError::Store(e)) => assert_eq!(e, "disk full".into()),
            other => panic!("expected the commit's error, got {other:?}"),
        }
        // A later sync is answered only once the outcome was written again.
        let (sync_tx, sync_rx) = oneshot::channel();
        tx.send(Cmd::Sync(sync_tx)).unwrap();
        sync_rx.await.unwrap();
        let seen = groups.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                vec!["finish a".to_string(), "get b".to_string()],
                vec!["finish a".to_string(), "sync".to_string()],
            ]
        );
        drop(tx);
        task.await.unwrap();
    }
}
