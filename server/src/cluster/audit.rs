//! The master's cluster-wide ownership audit: who owns every entity, checked every second.
//!
//! Every [`limits::AUDIT_MS`] each shard reports, between two ticks, the `NetId`s it owns with
//! their ownership generation, and those it holds frozen in handoffs (`InTransit`: not owners),
//! with its tick, map epoch and clock ([`OwnershipReport`], sent as [`AuditPart`]s). The master
//! keeps the latest complete report of each live member ([`Auditor::part`]) and, every
//! `AUDIT_MS`, audits them together ([`Auditor::take`]): per-shard counts, totals, the distinct
//! entities held, and the entities owned by two members at once ([`Audit`], `GET /api/audit`).
//!
//! **The rule.** Two reports are never taken at the same instant: a handoff between them shows
//! its entity on both shards, or on neither, though it never had two owners. The generations
//! tell those cases apart. An entity's generation grows with each handoff, and its owners over
//! time hold non-decreasing generations (a handoff's target takes `g + 1`, a refused or
//! cancelled attempt's source resumes at `g + 1`, a dead member's adopter, or a source taking
//! back what it handed a dead member, continues at the dead member's generation); one owner
//! stops before the next starts. So two live members report the entity owned and
//! - **at the same generation** (`same_generation`): two owners, whenever the reports were
//!   taken. Each `(id, generation)` has one owner for its whole life; the one exception, a dead
//!   member's generation continued by its adopter, cannot show here, because a member's report
//!   leaves the audit when the master declares it dead ([`Auditor::forget`]), before any map
//!   gives its cells away, and a fenced member's later reports are refused;
//! - **at different generations**, the older one reported at a later time than the newer one
//!   (`stale_generation`, by more than [`limits::AUDIT_CLOCK_SKEW_MS`] between the shards'
//!   clocks): an owner at the older generation after an owner at the newer one existed, which
//!   no handoff chain does;
//! - otherwise the older report came first: a handoff between the two reports, not counted as a
//!   duplicate (`handed_between_reports`). A second owner that lasts is caught by the next
//!   round, whose report of the older owner is then the later one.
//!
//! Each report is timed by its own shard when taken (its state holds from the end of one tick
//! to the start of the next, so the time is exact), and reports are kept whatever their age:
//! by the rule above an old report can hide a duplicate, never invent one.
//!
//! **Bounds.** A part carries at most [`limits::AUDIT_PART_ENTRIES_MAX`] entries, a report at
//! most [`limits::AUDIT_PARTS_MAX`] parts; the master keeps at most
//! [`limits::AUDIT_ENTITIES_MAX`] entries of all reports together (past it a member's report is
//! not kept and the audit names the member unaudited) and lists at most
//! [`limits::AUDIT_DUPLICATES_LISTED_MAX`] duplicates per audit (it counts them all). An audit
//! walks the sorted lists once, merging them: `O(n log m)` for `n` entries of `m` members.

use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{AuditPart, OwnershipReport};
use zonescaler_shared::{NetId, ShardId};

/// Why a part was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PartRefused {
    #[error("a part that does not follow the one before (its report was dropped)")]
    OutOfOrder,
    #[error("ids not in ascending order across parts")]
    Unsorted,
    #[error(
        "the master keeps at most {} audit entries",
        limits::AUDIT_ENTITIES_MAX
    )]
    Full,
    #[error("a malformed id list: {0}")]
    Malformed(&'static str),
}

/// How a duplicate was recognised (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Two members own it at one generation.
    SameGeneration,
    /// A member owns it at an older generation in a report taken after another member's report
    /// of a newer one.
    StaleGeneration,
}

/// One member's report of owning an entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub shard: u16,
    pub generation: u32,
    /// When that member took its report (its clock).
    pub taken_ms: u64,
}

/// An entity owned by two or more members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    /// `origin:counter`, the `NetId` as logs print it.
    pub id: String,
    pub rule: Rule,
    pub owners: Vec<Owner>,
}

/// One member's latest report in an audit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditedShard {
    pub id: u16,
    pub owned: u64,
    pub in_transit: u64,
    pub tick: u64,
    pub epoch: u64,
    pub taken_ms: u64,
    /// How long before the audit the master got the report (its clock).
    pub age_ms: u64,
}

/// One audit (`GET /api/audit`), with the counts since the master started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// When the master took it (its clock; 0: none taken yet).
    pub at_ms: u64,
    /// Audits taken since the master started, this one included.
    pub audits_total: u64,
    /// Duplicates found, summed over every audit (one owned twice for three audits counts 3),
    /// and the audits that found any.
    pub duplicates_total: u64,
    pub audits_with_duplicates: u64,
    /// Whether every live member's report is in (else `unaudited` names who is missing: not
    /// reported yet, or its report did not fit the master's bound).
    pub complete: bool,
    pub unaudited: Vec<u16>,
    pub shards: Vec<AuditedShard>,
    /// Owned entities and frozen ones, summed over the reports (an entity handed over between
    /// two reports counts on both or on neither), and the distinct ids among both.
    pub total_owned: u64,
    pub total_in_transit: u64,
    pub distinct_entities: u64,
    /// Entities two members reported owned at different generations, in the order a handoff
    /// between their reports explains: not duplicates.
    pub handed_between_reports: u64,
    /// Entities owned twice in this audit, and the first of them.
    pub duplicates: u64,
    pub listed: Vec<Duplicate>,
    /// The newest audit that found duplicates: when, and what it listed.
    pub last_duplicates_at_ms: Option<u64>,
    pub last_duplicates: Vec<Duplicate>,
}

/// What `GET /api/cluster` says of the latest audit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditSummary {
    pub at_ms: u64,
    pub audits_total: u64,
    pub complete: bool,
    pub total_owned: u64,
    pub total_in_transit: u64,
    pub distinct_entities: u64,
    pub duplicates: u64,
    pub duplicates_total: u64,
}

impl Audit {
    pub fn summary(&self) -> AuditSummary {
        AuditSummary {
            at_ms: self.at_ms,
            audits_total: self.audits_total,
            complete: self.complete,
            total_owned: self.total_owned,
            total_in_transit: self.total_in_transit,
            distinct_entities: self.distinct_entities,
            duplicates: self.duplicates,
            duplicates_total: self.duplicates_total,
        }
    }
}

/// A member's report: being put together from its parts, or whole.
#[derive(Debug)]
struct Received {
    number: u64,
    parts: u16,
    /// Parts received so far.
    got: u16,
    /// The master's clock when its last part came.
    at_ms: u64,
    report: OwnershipReport,
}

/// The master's side: the latest report of each member, and the audits taken from them.
#[derive(Debug, Default)]
pub struct Auditor {
    /// Reports being put together.
    assembling: BTreeMap<ShardId, Received>,
    /// The latest complete report of each member.
    latest: BTreeMap<ShardId, Received>,
    /// Entries held in both, against `limits::AUDIT_ENTITIES_MAX`.
    held: usize,
    next_due_ms: u64,
    last: Arc<Audit>,
}

impl Auditor {
    /// Part `part` of `from`'s report, heard at `now_ms`. A part that does not follow the one
    /// before drops the report it belonged to (its session delivers a report's parts in order,
    /// so that is a bug or a hostile peer, not a network fault).
    pub fn part(&mut self, from: ShardId, part: AuditPart, now_ms: u64) -> Result<(), PartRefused> {
        let owned = part.owned.entries().map_err(PartRefused::Malformed)?;
        let frozen = part.in_transit.entries().map_err(PartRefused::Malformed)?;
        if part.part == 0 {
            self.drop_assembly(from);
            let report = OwnershipReport {
                tick: part.tick,
                epoch: part.epoch,
                taken_ms: part.taken_ms,
                ..OwnershipReport::default()
            };
            let r = Received {
                number: part.report,
                parts: part.parts,
                got: 0,
                at_ms: now_ms,
                report,
            };
            self.assembling.insert(from, r);
        }
        let follows = self.assembling.get(&from).is_some_and(|r| {
            r.number == part.report && r.parts == part.parts && r.got == part.part
        });
        if !follows {
            self.drop_assembly(from);
            return Err(PartRefused::OutOfOrder);
        }
        if self.held + owned.len() + frozen.len() > limits::AUDIT_ENTITIES_MAX {
            self.drop_assembly(from);
            return Err(PartRefused::Full);
        }
        let r = self.assembling.get_mut(&from).expect("just checked");
        let ascending = |have: &[(NetId, u32)], new: &[(NetId, u32)]| {
            have.last().zip(new.first()).is_none_or(|(a, b)| a.0 < b.0)
        };
        if !ascending(&r.report.owned, &owned) || !ascending(&r.report.in_transit, &frozen) {
            self.drop_assembly(from);
            return Err(PartRefused::Unsorted);
        }
        self.held += owned.len() + frozen.len();
        r.report.owned.extend(owned);
        r.report.in_transit.extend(frozen);
        r.got += 1;
        r.at_ms = now_ms;
        if r.got == r.parts {
            let done = self.assembling.remove(&from).expect("just updated");
            self.drop_latest(from);
            self.latest.insert(from, done);
        }
        Ok(())
    }

    /// A member left (declared dead, drained): its reports leave the audit.
    pub fn forget(&mut self, id: ShardId) {
        self.drop_assembly(id);
        self.drop_latest(id);
    }

    fn drop_assembly(&mut self, id: ShardId) {
        if let Some(r) = self.assembling.remove(&id) {
            self.held -= r.report.owned.len() + r.report.in_transit.len();
        }
    }

    fn drop_latest(&mut self, id: ShardId) {
        if let Some(r) = self.latest.remove(&id) {
            self.held -= r.report.owned.len() + r.report.in_transit.len();
        }
    }

    /// Whether an audit is due at `now_ms` (every `limits::AUDIT_MS`).
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_due_ms
    }

    /// The latest audit taken (an empty one before the first).
    pub fn latest(&self) -> Arc<Audit> {
        self.last.clone()
    }

    /// Take an audit now of the reports of `live` (the members alive now; any other's reports
    /// are forgotten first).
    pub fn take(&mut self, now_ms: u64, live: &[ShardId]) -> Arc<Audit> {
        let gone: Vec<ShardId> = (self.latest.keys().chain(self.assembling.keys()))
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.forget(id);
        }
        self.next_due_ms = now_ms + limits::AUDIT_MS;
        let mut audit = self.merge(now_ms);
        let prev = &self.last;
        audit.at_ms = now_ms;
        audit.audits_total = prev.audits_total + 1;
        audit.duplicates_total = prev.duplicates_total + audit.duplicates;
        audit.audits_with_duplicates =
            prev.audits_with_duplicates + u64::from(audit.duplicates > 0);
        audit.unaudited = (live.iter())
            .filter(|id| !self.latest.contains_key(id))
            .map(|id| id.0)
            .collect();
        audit.complete = audit.unaudited.is_empty();
        if audit.duplicates > 0 {
            tracing::error!(
                duplicates = audit.duplicates,
                listed = ?audit.listed,
                "ownership audit: entities owned by two shards at once"
            );
            audit.last_duplicates_at_ms = Some(now_ms);
            audit.last_duplicates = audit.listed.clone();
        } else {
            audit.last_duplicates_at_ms = prev.last_duplicates_at_ms;
            audit.last_duplicates = prev.last_duplicates.clone();
        }
        self.last = Arc::new(audit);
        self.last.clone()
    }

    /// The kept reports merged: counts, distinct ids, duplicates.
    fn merge(&self, now_ms: u64) -> Audit {
        let mut audit = Audit::default();
        // One sorted list per (member, owned or frozen): cursors into them, and a heap of
        // each one's next id.
        let mut lists: Vec<(&[(NetId, u32)], Option<(ShardId, u64)>)> = Vec::new();
        for (id, r) in &self.latest {
            let rep = &r.report;
            audit.shards.push(AuditedShard {
                id: id.0,
                owned: rep.owned.len() as u64,
                in_transit: rep.in_transit.len() as u64,
                tick: rep.tick,
                epoch: rep.epoch,
                taken_ms: rep.taken_ms,
                age_ms: now_ms.saturating_sub(r.at_ms),
            });
            audit.total_owned += rep.owned.len() as u64;
            audit.total_in_transit += rep.in_transit.len() as u64;
            lists.push((&rep.owned, Some((*id, rep.taken_ms))));
            lists.push((&rep.in_transit, None));
        }
        let mut at = vec![0usize; lists.len()];
        let mut heap: BinaryHeap<Reverse<(NetId, usize)>> = (lists.iter().enumerate())
            .filter_map(|(i, (l, _))| l.first().map(|e| Reverse((e.0, i))))
            .collect();
        let mut owners: Vec<Owner> = Vec::new();
        while let Some(Reverse((id, _))) = heap.peek().copied() {
            owners.clear();
            while let Some(Reverse((next, i))) = heap.peek().copied()
                && next == id
            {
                heap.pop();
                let (list, owner) = lists[i];
                if let Some((shard, taken_ms)) = owner {
                    let generation = list[at[i]].1;
                    owners.push(Owner {
                        shard: shard.0,
                        generation,
                        taken_ms,
                    });
                }
                at[i] += 1;
                if let Some(e) = list.get(at[i]) {
                    heap.push(Reverse((e.0, i)));
                }
            }
            audit.distinct_entities += 1;
            if owners.len() < 2 {
                continue;
            }
            match verdict(&owners) {
                Some(rule) => {
                    audit.duplicates += 1;
                    if audit.listed.len() < limits::AUDIT_DUPLICATES_LISTED_MAX {
                        let owners = owners.clone();
                        let id = id.to_string();
                        audit.listed.push(Duplicate { id, rule, owners });
                    }
                }
                None => audit.handed_between_reports += 1,
            }
        }
        audit
    }
}

/// Whether `owners` (each a different member's report of owning one entity) are two owners,
/// and by which rule (see the module docs); `None`: a handoff between the reports.
pub fn verdict(owners: &[Owner]) -> Option<Rule> {
    let pairs = || {
        (0..owners.len())
            .flat_map(move |i| (i + 1..owners.len()).map(move |j| (owners[i], owners[j])))
    };
    if pairs().any(|(a, b)| a.generation == b.generation) {
        return Some(Rule::SameGeneration);
    }
    let stale = |old: Owner, new: Owner| {
        old.generation < new.generation
            && old.taken_ms > new.taken_ms.saturating_add(limits::AUDIT_CLOCK_SKEW_MS)
    };
    pairs()
        .any(|(a, b)| stale(a, b) || stale(b, a))
        .then_some(Rule::StaleGeneration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::protocol::IdList;

    fn id(n: u64) -> NetId {
        NetId::new(ShardId(1), n).expect("48 bits")
    }

    fn report(taken_ms: u64, owned: &[(u64, u32)], in_transit: &[(u64, u32)]) -> OwnershipReport {
        let list = |l: &[(u64, u32)]| l.iter().map(|(n, g)| (id(*n), *g)).collect();
        OwnershipReport {
            tick: taken_ms / 33,
            epoch: 1,
            taken_ms,
            owned: list(owned),
            in_transit: list(in_transit),
        }
    }

    fn feed(a: &mut Auditor, from: u16, r: &OwnershipReport, number: u64, now_ms: u64) {
        for p in r.parts(number) {
            a.part(ShardId(from), p, now_ms).expect("a good part");
        }
    }

    const LIVE: [ShardId; 2] = [ShardId(1), ShardId(2)];

    #[test]
    fn a_handoff_seen_from_both_sides_is_no_duplicate_but_two_owners_are() {
        let mut a = Auditor::default();
        // Entity 7 handed from shard 1 (generation 3) to shard 2 (takes it at 4) between
        // shard 1's report (earlier) and shard 2's (later): both show it owned.
        feed(&mut a, 1, &report(1_000, &[(5, 0), (7, 3)], &[]), 1, 1_010);
        feed(&mut a, 2, &report(1_400, &[(7, 4), (9, 0)], &[]), 1, 1_410);
        let audit = a.take(1_500, &LIVE);
        assert_eq!(
            audit.duplicates, 0,
            "a handoff between the reports: {audit:?}"
        );
        assert_eq!(audit.handed_between_reports, 1);
        assert_eq!((audit.total_owned, audit.distinct_entities), (4, 3));
        assert!(audit.complete);

        // Reports the other way round: shard 1 still owns generation 3 after shard 2 owned 4.
        feed(&mut a, 1, &report(2_400, &[(5, 0), (7, 3)], &[]), 2, 2_410);
        feed(&mut a, 2, &report(2_000, &[(7, 4), (9, 0)], &[]), 2, 2_010);
        let audit = a.take(2_500, &LIVE);
        assert_eq!(audit.duplicates, 1, "{audit:?}");
        assert_eq!(audit.listed[0].rule, Rule::StaleGeneration);
        assert_eq!(audit.listed[0].id, "1:7");

        // Same generation on both: two owners, whenever the reports were taken.
        feed(&mut a, 1, &report(3_000, &[(5, 0), (7, 4)], &[]), 3, 3_010);
        feed(&mut a, 2, &report(3_900, &[(7, 4), (9, 0)], &[]), 3, 3_910);
        let audit = a.take(4_000, &LIVE);
        assert_eq!(audit.duplicates, 1);
        assert_eq!(audit.listed[0].rule, Rule::SameGeneration);
        assert_eq!(
            (
                audit.audits_total,
                audit.duplicates_total,
                audit.audits_with_duplicates
            ),
            (3, 2, 2)
        );
        assert_eq!(audit.last_duplicates_at_ms, Some(4_000));
    }

    #[test]
    fn frozen_entities_are_counted_and_never_owners() {
        let mut a = Auditor::default();
        // Shard 1 froze entity 7 offering it at generation 4; shard 2 took it.
        feed(&mut a, 1, &report(1_000, &[(5, 0)], &[(7, 4)]), 1, 1_000);
        feed(&mut a, 2, &report(1_000, &[(7, 4)], &[]), 1, 1_000);
        let audit = a.take(1_100, &LIVE);
        assert_eq!(audit.duplicates, 0);
        assert_eq!(audit.handed_between_reports, 0);
        assert_eq!(
            (
                audit.total_owned,
                audit.total_in_transit,
                audit.distinct_entities
            ),
            (2, 1, 2)
        );
    }

    #[test]
    fn a_dead_members_report_leaves_the_audit_before_its_adopter_promotes() {
        let mut a = Auditor::default();
        feed(&mut a, 1, &report(1_000, &[(5, 2)], &[]), 1, 1_000);
        // Shard 1 is declared dead; shard 2 adopts it at the same generation.
        a.forget(ShardId(1));
        feed(&mut a, 2, &report(4_000, &[(5, 2)], &[]), 1, 4_000);
        let audit = a.take(4_100, &LIVE[1..]);
        assert_eq!(audit.duplicates, 0);
        assert_eq!(audit.total_owned, 1);
        // Without the forgetting, the same generation on two members is flagged.
        feed(&mut a, 1, &report(1_000, &[(5, 2)], &[]), 1, 4_200);
        assert_eq!(a.take(4_300, &LIVE).duplicates, 1);
        // A member no longer live is forgotten by the audit itself.
        let audit = a.take(4_400, &LIVE[1..]);
        assert_eq!((audit.duplicates, audit.shards.len()), (0, 1));
    }

    #[test]
    fn a_report_in_parts_counts_once_complete_and_a_broken_sequence_is_dropped() {
        let mut a = Auditor::default();
        let n = limits::AUDIT_PART_ENTRIES_MAX as u64 + 10;
        let owned: Vec<(u64, u32)> = (1..=n).map(|i| (i, 0)).collect();
        let big = report(1_000, &owned, &[(n + 1, 1)]);
        let parts = big.parts(1);
        assert_eq!(parts.len(), 2);
        a.part(ShardId(1), parts[0].clone(), 1_000)
            .expect("first part");
        let audit = a.take(1_100, &LIVE[..1]);
        assert_eq!(
            (audit.complete, audit.total_owned),
            (false, 0),
            "half a report is none"
        );
        a.part(ShardId(1), parts[1].clone(), 1_000)
            .expect("second part");
        let audit = a.take(2_100, &LIVE[..1]);
        assert!(audit.complete);
        assert_eq!((audit.total_owned, audit.total_in_transit), (n, 1));
        // A second part without its first is refused, and the last whole report stays.
        assert_eq!(
            a.part(ShardId(1), big.parts(2)[1].clone(), 2_200),
            Err(PartRefused::OutOfOrder)
        );
        assert_eq!(a.take(3_100, &LIVE[..1]).total_owned, n);
        // Parts whose ids go backwards are refused.
        let mut back = big.parts(3);
        back[1].owned = IdList::from_sorted(&[(id(1), 0)]);
        a.part(ShardId(1), back[0].clone(), 3_200)
            .expect("first part");
        assert_eq!(
            a.part(ShardId(1), back[1].clone(), 3_200),
            Err(PartRefused::Unsorted)
        );
    }

    #[test]
    fn the_verdict_of_three_owners_is_the_worst_pair() {
        let o = |shard, generation, taken_ms| Owner {
            shard,
            generation,
            taken_ms,
        };
        // Generation 2 reported after 3 by more than the skew: a second owner.
        assert_eq!(
            verdict(&[o(1, 2, 1_000), o(2, 3, 800), o(3, 4, 1_200)]),
            Some(Rule::StaleGeneration)
        );
        // Within the clocks' skew: a handoff between the reports.
        let skew = limits::AUDIT_CLOCK_SKEW_MS;
        assert_eq!(verdict(&[o(1, 2, 800 + skew), o(2, 3, 800)]), None);
        assert_eq!(
            verdict(&[o(1, 2, 500), o(2, 3, 800), o(3, 3, 100)]),
            Some(Rule::SameGeneration)
        );
    }
}
