//! Backfill planning: which stored events a reconnecting client gets, and
//! whether it must be told about a gap (`backfill_truncated`).

use serde::Serialize;
use ulid::Ulid;

use crate::filter::Filter;
use crate::store::{Scope, SharedStore, StoreError};

/// Heads read per planning query (filtered streams only).
const PLAN_PAGE: u32 = 5000;

/// The `backfill_truncated` event's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Truncation {
    /// The id the client asked to resume after.
    #[serde(serialize_with = "ulid_text")]
    pub requested: Ulid,
    /// The first event that will be replayed, if any.
    #[serde(serialize_with = "opt_ulid_text")]
    pub oldest_available: Option<Ulid>,
}

fn ulid_text<S: serde::Serializer>(id: &Ulid, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

fn opt_ulid_text<S: serde::Serializer>(id: &Option<Ulid>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}

/// Where replay starts and what to tell the client first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Replay the matching events with ids above this one.
    pub replay_after: Ulid,
    pub truncation: Option<Truncation>,
}

/// Counts matching events newest first until `max` are found.
#[derive(Debug)]
pub struct Planner {
    after: Ulid,
    max: usize,
    matched: usize,
    oldest: Option<Ulid>,
    overflow_at: Option<Ulid>,
}

impl Planner {
    /// Plans a replay of at most `max` events after `after`.
    pub fn new(after: Ulid, max: usize) -> Self {
        Self {
            after,
            max,
            matched: 0,
            oldest: None,
            overflow_at: None,
        }
    }

    /// Feeds the next older matching event; returns `false` once enough
    /// are known.
    pub fn push(&mut self, id: Ulid) -> bool {
        if self.matched == self.max {
            self.overflow_at = Some(id);
            return false;
        }
        self.matched += 1;
        self.oldest = Some(id);
        true
    }

    /// The plan; `pruned` says retention removed events after `after`.
    pub fn finish(self, pruned: bool) -> Plan {
        let truncated = self.overflow_at.is_some() || pruned;
        Plan {
            replay_after: self.overflow_at.unwrap_or(self.after),
            truncation: truncated.then_some(Truncation {
                requested: self.after,
                oldest_available: self.oldest,
            }),
        }
    }
}

/// Plans a replay from the store: the newest `max` matching events after
/// `after`, and whether retention cut into them.
///
/// # Errors
/// The store is unavailable.
pub async fn plan_from_store(
    store: &SharedStore,
    scope: Scope,
    after: Ulid,
    filter: &Filter,
    max: usize,
) -> Result<Plan, StoreError> {
    let pruned = store.pruned_through(scope).await? > after;
    if filter.is_everything() {
        // No filter: two index lookups instead of a scan.
        let max = u64::try_from(max).unwrap_or(u64::MAX);
        let overflow_at = store.id_at_offset_desc(scope, after, max).await?;
        let replay_after = overflow_at.unwrap_or(after);
        let truncation = if overflow_at.is_some() || pruned {
            let oldest = store.events_after(scope, replay_after, 1).await?;
            Some(Truncation {
                requested: after,
                oldest_available: oldest.first().map(|e| e.id),
            })
        } else {
            None
        };
        return Ok(Plan {
            replay_after,
            truncation,
        });
    }
    let mut planner = Planner::new(after, max);
    let mut before = Ulid::max();
    'scan: loop {
        let heads = store
            .heads_between_desc(scope, after, before, PLAN_PAGE)
            .await?;
        for head in &heads {
            if filter.matches(&head.event_type, &head.source) && !planner.push(head.id) {
                break 'scan;
            }
        }
        match heads.last() {
            Some(last) if heads.len() == PLAN_PAGE as usize => before = last.id,
            _ => break,
        }
    }
    Ok(planner.finish(pruned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Ulid {
        Ulid::from_parts(n, 0)
    }

    #[test]
    fn within_the_limit_replays_everything() {
        let mut p = Planner::new(id(1), 3);
        assert!(p.push(id(5)) && p.push(id(4)));
        let plan = p.finish(false);
        assert_eq!(
            plan,
            Plan {
                replay_after: id(1),
                truncation: None
            }
        );
    }

    #[test]
    fn over_the_limit_keeps_the_newest() {
        let mut p = Planner::new(id(1), 2);
        assert!(p.push(id(9)) && p.push(id(8)));
        assert!(!p.push(id(7)));
        let plan = p.finish(false);
        assert_eq!(plan.replay_after, id(7));
        assert_eq!(
            plan.truncation,
            Some(Truncation {
                requested: id(1),
                oldest_available: Some(id(8))
            })
        );
    }

    #[test]
    fn pruning_is_reported_even_when_nothing_remains() {
        let plan = Planner::new(id(1), 10).finish(true);
        assert_eq!(
            plan.truncation,
            Some(Truncation {
                requested: id(1),
                oldest_available: None
            })
        );
        let json = serde_json::to_value(plan.truncation.unwrap()).unwrap();
        assert_eq!(json["oldest_available"], serde_json::Value::Null);
        assert_eq!(json["requested"], id(1).to_string());
    }
}
