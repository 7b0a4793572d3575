//! The PostgreSQL store's fast path: the commands that carry the queue's traffic —
//! enqueues without an Idempotency-Key, claims, and the ends of attempts — applied
//! a group at a time in a few set-based statements (one INSERT for every enqueue
//! of the group, one UPDATE for every start, one for every success), prepared once
//! per connection, without a savepoint per command.
//!
//! Why: with a savepoint and a statement (or three) per command, the server's one
//! backend spent its time on per-statement work, not on rows (docs/benchmarks.md).
//!
//! Invariants:
//! - the fast path only *borrows* the group's commands: if any of its statements
//!   fails, the transaction is rolled back and the whole group is applied again by
//!   the careful path (a savepoint per command, `postgres.rs`), so a failure still
//!   undoes one command alone and its caller hears of it;
//! - within the group, starts are applied before successes (one job's start and
//!   end in one group keep their order), and claims come last, so they see the
//!   jobs the group's INSERT enqueued (what the careful path applies — releases,
//!   failures — comes after them, and is claimed at the pump's next look);
//! - only the owner of a running job can end it, and only under the claim that ran
//!   the attempt (`owner = $me AND claims = u.claim`), as in the careful path: a
//!   result for a job another daemon took over changes nothing, even once this
//!   daemon claimed the job again;
//! - jobs whose lease expired are taken over by a claim at most once a second per
//!   service (their index entries are the costly part of a claim), so a dead
//!   node's jobs wait at most a second longer than its lease.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::{Client, Statement, Transaction};

use super::super::apply::{dropped, in_claim_order, unstarted};
use super::super::row::{COLUMNS, view};
use super::super::state::Transition;
use super::super::{
    Claimed, Cmd, Finish, JobState, JobView, StoreError, ms_to_rfc3339, new_id, now_ms,
};

/// The fast path's statements, prepared on one connection.
pub(super) struct Prepared {
    insert: Statement,
    notify_jobs: Statement,
    start: Statement,
    done: Statement,
    due: Statement,
    take_over: Statement,
    claim: Statement,
}

impl Prepared {
    pub(super) async fn new(client: &Client) -> Result<Prepared, tokio_postgres::Error> {
        Ok(Prepared {
            insert: client.prepare(&INSERT_MANY).await?,
            notify_jobs: client
                .prepare("SELECT pg_notify('paddock_jobs', s) FROM unnest($1::text[]) AS s")
                .await?,
            start: client.prepare(&START_MANY).await?,
            done: client.prepare(&DONE_MANY).await?,
            due: client.prepare(&super::DUE).await?,
            take_over: client.prepare(&super::TAKE_OVER).await?,
            claim: client.prepare(&super::CLAIM).await?,
        })
    }
}

static INSERT_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO paddock_jobs (id, service, method, content_type, body, state, max_attempts, created_ms, run_after_ms, priority)
         SELECT u.id, u.service, u.method, u.ct, u.body,
                CASE WHEN u.run_after > $9::BIGINT THEN '{scheduled}' ELSE '{queued}' END,
                u.max_attempts, $9::BIGINT, GREATEST(u.run_after, $9::BIGINT), u.priority
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int[], $7::bigint[], $8::int[])
           AS u(id, service, method, ct, body, max_attempts, run_after, priority)
         RETURNING {COLUMNS}",
        scheduled = JobState::Scheduled.as_str(),
        queued = JobState::Queued.as_str(),
    )
});

pub(super) static START_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    Transition::Start.sql(
        "UPDATE paddock_jobs AS j SET state = {to}, attempts = j.attempts + 1, started_ms = $2
         FROM unnest($1::bigint[], $4::bigint[]) AS u(seq, claim)
         WHERE j.seq = u.seq AND j.state IN ({from}) AND j.owner = $3 AND j.claims = u.claim
         RETURNING j.seq, j.claims",
    )
});

pub(super) static DONE_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    Transition::Complete.sql(
        "UPDATE paddock_jobs AS j SET state = {to}, result = u.result, result_content_type = u.ct,
           finished_ms = $4, owner = NULL, lease_until_ms = NULL,
           history = j.history || jsonb_build_array(jsonb_build_object('attempt', j.attempts, 'at', $5::text, 'outcome', 'done'))
         FROM unnest($1::text[], $2::bytea[], $3::text[], $7::bigint[]) AS u(id, result, ct, claim)
         WHERE j.id = u.id AND j.state IN ({from}) AND j.owner = $6 AND j.claims = u.claim
         RETURNING j.id, j.claims",
    )
});

/// Whether the fast path takes this command.
pub(super) fn fast(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Enqueue(job, _) => job.idempotency_key.is_none(),
        Cmd::Claim { .. } => true,
        Cmd::Finish { finish, .. } => matches!(finish, Finish::Start { .. } | Finish::Done { .. }),
        _ => false,
    }
}

/// What the fast path did, by the command's place in the group.
#[derive(Default)]
pub(super) struct Done {
    pub(super) enqueued: HashMap<usize, JobView>,
    pub(super) claimed: HashMap<usize, Vec<Claimed>>,
}

/// How often claims look for jobs whose lease expired, per service.
const TAKE_OVER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Applies the group's fast commands in `tx`. `taken_over`: when a claim of each
/// service last took over jobs whose lease expired (at most once a second: it is
/// the costly part of a claim, and expired leases are rare).
pub(super) async fn apply(
    tx: &Transaction<'_>,
    p: &Prepared,
    cmds: &[Cmd],
    owner: &str,
    lease_ms: i64,
    taken_over: &mut HashMap<String, std::time::Instant>,
) -> Result<Done, StoreError> {
    let started = std::time::Instant::now();
    let mut take_over = |service: &str| match taken_over.get(service) {
        Some(t) if started.duration_since(*t) < TAKE_OVER_EVERY => false,
        _ => {
            taken_over.insert(service.to_string(), started);
            true
        }
    };
    let now = now_ms();
    let at = ms_to_rfc3339(now);
    let mut done = Done::default();

    // Every enqueue in one INSERT.
    let mut ids = vec![];
    let mut places = HashMap::new();
    let (mut services, mut methods, mut cts, mut bodies) = (vec![], vec![], vec![], vec![]);
    let (mut attempts, mut run_after, mut priority) = (vec![], vec![], vec![]);
    for (i, c) in cmds.iter().enumerate() {
        if let Cmd::Enqueue(job, _) = c
            && fast(c)
        {
            let id = new_id();
            places.insert(id.clone(), i);
            ids.push(id);
            services.push(job.service.as_str());
            methods.push(job.method.as_str());
            cts.push(job.content_type.as_str());
            bodies.push(job.body.as_slice());
            attempts.push(job.max_attempts as i32);
            run_after.push(job.run_after_ms.unwrap_or(now));
            priority.push(job.priority);
        }
    }
    if !ids.is_empty() {
        let rows = tx
            .query(
                &p.insert,
                &[
                    &ids, &services, &methods, &cts, &bodies, &attempts, &run_after, &priority,
                    &now,
                ],
            )
            .await?;
        for r in &rows {
            let v = view(r)?;
            if let Some(&i) = places.get(&v.id) {
                done.enqueued.insert(i, v);
            }
        }
        let woken: Vec<&str> = services
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        tx.execute(&p.notify_jobs, &[&woken]).await?;
    }

    // Every start in one UPDATE, then every success in one.
    let (mut starts, mut start_claims) = (vec![], vec![]);
    for c in cmds {
        if let Cmd::Finish {
            claim,
            finish: Finish::Start { seq },
            ..
        } = c
        {
            starts.push(*seq);
            start_claims.push(*claim);
        }
    }
    if !starts.is_empty() {
        let rows = tx
            .query(&p.start, &[&starts, &now, &owner, &start_claims])
            .await?;
        if rows.len() < starts.len() {
            let started: BTreeSet<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            for c in cmds {
                if let Cmd::Finish {
                    id,
                    claim,
                    finish: Finish::Start { seq },
                } = c
                    && !started.contains(&(*seq, *claim))
                {
                    tracing::info!("{}", unstarted(id, *claim));
                }
            }
        }
    }
    let (mut done_ids, mut results, mut result_cts, mut done_claims) =
        (vec![], vec![], vec![], vec![]);
    for c in cmds {
        if let Cmd::Finish {
            id,
            claim,
            finish: Finish::Done { content_type, body },
        } = c
        {
            done_ids.push(id.as_str());
            results.push(body.as_slice());
            result_cts.push(content_type.as_str());
            done_claims.push(*claim);
        }
    }
    if !done_ids.is_empty() {
        let rows = tx
            .query(
                &p.done,
                &[
                    &done_ids,
                    &results,
                    &result_cts,
                    &now,
                    &at,
                    &owner,
                    &done_claims,
                ],
            )
            .await?;
        if rows.len() < done_ids.len() {
            // A job may end twice in one group (a late result and the new claim's),
            // so each outcome is matched by its id and claim.
            let finished: BTreeSet<(String, i64)> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            for (id, claim) in done_ids.iter().zip(&done_claims) {
                if !finished.contains(&(id.to_string(), *claim)) {
                    tracing::warn!("{}", dropped(id, *claim));
                }
            }
        }
    }

    // Claims last: they see what this group's INSERT enqueued. (Releases, failures
    // and enqueues with an Idempotency-Key are applied after them, by the careful
    // path; their jobs are claimed at the pump's next look.)
    for (i, c) in cmds.iter().enumerate() {
        if let Cmd::Claim { service, limit, .. } = c {
            let stmts = [&p.due, &p.take_over, &p.claim];
            let rows = super::claim_rows(
                tx,
                stmts,
                service,
                *limit,
                owner,
                lease_ms,
                take_over(service),
            )
            .await?;
            done.claimed.insert(i, in_claim_order(rows));
        }
    }
    Ok(done)
}
