//! Model-based test of admission: random reserve / complete / abort /
//! close sequences across shards against a reference model that is too
//! simple to be wrong.

use proptest::prelude::*;
use surge_core::admission::{
    AbortCause, Admission, GuardConfig, LiveSlot, Refusal, Reservation, ShardId, SlotTable,
};

#[derive(Debug, Clone)]
enum Op {
    Admit,
    Complete(usize),
    Abort(usize, AbortCause),
    Close(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Admit),
        2 => any::<usize>().prop_map(Op::Complete),
        1 => (any::<usize>(), prop_oneof![
            Just(AbortCause::Rejected),
            Just(AbortCause::TimedOut),
            Just(AbortCause::Io),
            Just(AbortCause::Shutdown),
        ]).prop_map(|(i, c)| Op::Abort(i, c)),
        2 => any::<usize>().prop_map(Op::Close),
    ]
}

/// The reference: per shard (capacity, reserved, live).
#[derive(Debug, Clone)]
struct Model {
    shards: Vec<(u32, u32, u32)>,
}

impl Model {
    /// Least used/capacity ratio with room; ties to the lowest index.
    fn pick(&self) -> Option<usize> {
        let mut candidates: Vec<(usize, u32, u32)> = self
            .shards
            .iter()
            .enumerate()
            .filter(|(_, (cap, r, l))| r + l < *cap)
            .map(|(i, (cap, r, l))| (i, r + l, *cap))
            .collect();
        candidates.sort_by(|a, b| {
            let lhs = u64::from(a.1) * u64::from(b.2);
            let rhs = u64::from(b.1) * u64::from(a.2);
            lhs.cmp(&rhs).then(a.0.cmp(&b.0))
        });
        candidates.first().map(|c| c.0)
    }
}

fn check(admission: &Admission, model: &Model) -> Result<(), TestCaseError> {
    for (i, (table, (cap, r, l))) in admission.shards().iter().zip(&model.shards).enumerate() {
        prop_assert!(table.used() <= table.capacity(), "shard {i} over capacity");
        prop_assert_eq!(
            (table.capacity(), table.reserved(), table.live()),
            (*cap, *r, *l),
            "shard {}",
            i
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(surge_properties::config("admission", 256))]

    #[test]
    fn admission_matches_the_model(
        caps in prop::collection::vec(0u32..6, 1..5),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let tables = caps.iter().map(|&c| SlotTable::new(c)).collect();
        let mut admission = Admission::with_tables(tables, GuardConfig::default());
        let mut model = Model { shards: caps.iter().map(|&c| (c, 0, 0)).collect() };
        let mut reserved: Vec<Reservation> = Vec::new();
        let mut live: Vec<LiveSlot> = Vec::new();

        for op in ops {
            match op {
                Op::Admit => {
                    let expected = model.pick();
                    match admission.admit() {
                        Ok(r) => {
                            let shard = r.id().shard.0 as usize;
                            prop_assert_eq!(Some(shard), expected, "selector must pick a least-loaded shard with room");
                            model.shards[shard].1 += 1;
                            reserved.push(r);
                        }
                        Err(Refusal::Full { capacity }) => {
                            prop_assert_eq!(expected, None, "refused while the model had room");
                            prop_assert_eq!(capacity, caps.iter().map(|&c| u64::from(c)).sum::<u64>());
                        }
                        Err(other) => prop_assert!(false, "unexpected refusal {other:?}"),
                    }
                }
                Op::Complete(i) if !reserved.is_empty() => {
                    let r = reserved.swap_remove(i % reserved.len());
                    let shard = r.id().shard.0 as usize;
                    let slot = admission.complete(r);
                    prop_assert_eq!(slot.id().shard, ShardId(shard as u32));
                    model.shards[shard].1 -= 1;
                    model.shards[shard].2 += 1;
                    live.push(slot);
                }
                Op::Abort(i, cause) if !reserved.is_empty() => {
                    let r = reserved.swap_remove(i % reserved.len());
                    model.shards[r.id().shard.0 as usize].1 -= 1;
                    admission.abort(r, cause);
                }
                Op::Close(i) if !live.is_empty() => {
                    let slot = live.swap_remove(i % live.len());
                    model.shards[slot.id().shard.0 as usize].2 -= 1;
                    admission.close(slot);
                }
                _ => {}
            }
            check(&admission, &model)?;
            prop_assert_eq!(admission.used(), (reserved.len() + live.len()) as u64, "slots equal the tokens held");
        }

        // Every token handed back once: nothing is left and the counters balance.
        let c = admission.counters();
        prop_assert_eq!(c.reserved, c.completed + c.aborted + reserved.len() as u64);
        prop_assert_eq!(c.completed, c.closed + live.len() as u64);
        for r in reserved.drain(..) {
            admission.abort(r, AbortCause::Shutdown);
        }
        for slot in live.drain(..) {
            admission.close(slot);
        }
        prop_assert_eq!(admission.used(), 0);
        let c = admission.counters();
        prop_assert_eq!(c.reserved, c.completed + c.aborted);
        prop_assert_eq!(c.completed, c.closed);
    }

    #[test]
    fn even_split_never_loses_capacity(max in 0u32..100_000, shards in 1u32..64) {
        let admission = Admission::new(max, shards, GuardConfig::default());
        prop_assert_eq!(admission.capacity(), u64::from(max));
        let caps: Vec<u32> = admission.shards().iter().map(SlotTable::capacity).collect();
        let (lo, hi) = (caps.iter().min().copied().unwrap_or(0), caps.iter().max().copied().unwrap_or(0));
        prop_assert!(hi - lo <= 1);
    }
}
