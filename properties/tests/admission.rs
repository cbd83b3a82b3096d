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
                    match admission.admit(std::net::IpAddr::from([10, 0, 0, 1]), surge_core::Instant::ZERO) {
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

/// Per-client limits as a model: who holds each slot, counted naively.
#[derive(Debug, Clone)]
enum ClientOp {
    Admit(u8),
    BindUser(usize, u8),
    Complete(usize),
    Abort(usize),
    Close(usize),
}

fn client_op() -> impl Strategy<Value = ClientOp> {
    prop_oneof![
        4 => (0u8..3).prop_map(ClientOp::Admit),
        3 => (any::<usize>(), 0u8..3).prop_map(|(i, u)| ClientOp::BindUser(i, u)),
        2 => any::<usize>().prop_map(ClientOp::Complete),
        1 => any::<usize>().prop_map(ClientOp::Abort),
        2 => any::<usize>().prop_map(ClientOp::Close),
    ]
}

/// A slot held in the model: its token, address, user and whether it is
/// still in its handshake.
struct Held<T> {
    token: T,
    ip: u8,
    user: Option<u8>,
}

fn address(ip: u8) -> std::net::IpAddr {
    std::net::IpAddr::from([10, 0, 0, ip])
}

proptest! {
    #![proptest_config(surge_properties::config("admission_client_limits", 256))]

    /// Admission with per-address and per-user limits refuses exactly when
    /// a naive count says the client is at a limit, and no count ever goes
    /// over its limit: checking and counting are one step.
    #[test]
    fn client_limits_match_a_naive_count(
        capacity in 1u32..12,
        per_ip in 0u32..4,
        per_user in 0u32..3,
        pending_per_ip in 0u32..3,
        ops in prop::collection::vec(client_op(), 1..200),
    ) {
        use surge_core::admission::ClientLimitConfig;
        let limits = ClientLimitConfig {
            connections_per_ip: per_ip,
            connections_per_user: per_user,
            handshakes_per_ip: pending_per_ip,
            handshake_rate_per_ip: 0,
        };
        let mut admission = Admission::new(capacity, 2, GuardConfig::default()).with_client_limits(limits);
        let now = surge_core::Instant::ZERO;
        let mut reserved: Vec<Held<Reservation>> = Vec::new();
        let mut live: Vec<Held<LiveSlot>> = Vec::new();

        for op in ops {
            let pending = |ip: u8, r: &[Held<Reservation>]| r.iter().filter(|h| h.ip == ip).count() as u32;
            let conns = |ip: u8, r: &[Held<Reservation>], l: &[Held<LiveSlot>]| {
                pending(ip, r) + l.iter().filter(|h| h.ip == ip).count() as u32
            };
            let of_user = |u: u8, r: &[Held<Reservation>], l: &[Held<LiveSlot>]| {
                (r.iter().filter(|h| h.user == Some(u)).count() + l.iter().filter(|h| h.user == Some(u)).count()) as u32
            };
            match op {
                ClientOp::Admit(ip) => {
                    let used = (reserved.len() + live.len()) as u32;
                    let expected = if used >= capacity {
                        Err(Refusal::Full { capacity: u64::from(capacity) })
                    } else if pending_per_ip != 0 && pending(ip, &reserved) >= pending_per_ip {
                        Err(Refusal::HandshakesPerIp { limit: pending_per_ip })
                    } else if per_ip != 0 && conns(ip, &reserved, &live) >= per_ip {
                        Err(Refusal::PerIp { limit: per_ip })
                    } else {
                        Ok(())
                    };
                    match admission.admit(address(ip), now) {
                        Ok(token) => {
                            prop_assert_eq!(expected, Ok(()));
                            reserved.push(Held { token, ip, user: None });
                        }
                        Err(refusal) => prop_assert_eq!(expected, Err(refusal)),
                    }
                }
                ClientOp::BindUser(i, user) if !reserved.is_empty() => {
                    let i = i % reserved.len();
                    if reserved[i].user.is_some() {
                        continue;
                    }
                    let at_limit = per_user != 0 && of_user(user, &reserved, &live) >= per_user;
                    match admission.bind_user(&reserved[i].token, &format!("user-{user}")) {
                        Ok(()) => {
                            prop_assert!(!at_limit, "bound a user at the limit");
                            if per_user != 0 {
                                reserved[i].user = Some(user);
                            }
                        }
                        Err(refusal) => {
                            prop_assert!(at_limit, "refused a user under the limit");
                            prop_assert_eq!(refusal, Refusal::PerUser { limit: per_user });
                            // The driver refuses the handshake.
                            let held = reserved.swap_remove(i);
                            admission.abort(held.token, AbortCause::Rejected);
                        }
                    }
                }
                ClientOp::Complete(i) if !reserved.is_empty() => {
                    let held = reserved.swap_remove(i % reserved.len());
                    let token = admission.complete(held.token);
                    live.push(Held { token, ip: held.ip, user: held.user });
                }
                ClientOp::Abort(i) if !reserved.is_empty() => {
                    let held = reserved.swap_remove(i % reserved.len());
                    admission.abort(held.token, AbortCause::Io);
                }
                ClientOp::Close(i) if !live.is_empty() => {
                    let held = live.swap_remove(i % live.len());
                    admission.close(held.token);
                }
                _ => {}
            }
            // The gateway's counts equal the naive ones and respect every limit.
            for ip in 0u8..3 {
                let counted = admission.connections_from(address(ip));
                let handshaking = admission.handshaking_from(address(ip));
                if per_ip != 0 || per_user != 0 || pending_per_ip != 0 {
                    prop_assert_eq!(counted, conns(ip, &reserved, &live));
                    prop_assert_eq!(handshaking, pending(ip, &reserved));
                }
                if per_ip != 0 { prop_assert!(counted <= per_ip); }
                if pending_per_ip != 0 { prop_assert!(handshaking <= pending_per_ip); }
            }
            for user in 0u8..3 {
                let counted = admission.connections_of(&format!("user-{user}"));
                prop_assert_eq!(counted, of_user(user, &reserved, &live));
                if per_user != 0 { prop_assert!(counted <= per_user); }
            }
        }
        for held in reserved.drain(..) {
            admission.abort(held.token, AbortCause::Shutdown);
        }
        for held in live.drain(..) {
            admission.close(held.token);
        }
        prop_assert_eq!(admission.used(), 0);
        prop_assert_eq!(admission.tracked_addresses(), 0, "nothing remembered once everyone left");
    }
}
