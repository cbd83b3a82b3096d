//! Properties of subject syntax, pattern algebra and the subscription index.
//!
//! Tokens come from a tiny alphabet so that random patterns and subjects
//! match each other often. The index is checked against the obvious,
//! slow answer: test every live (pattern, key) pair with `Pattern::matches`.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use proptest::prelude::*;
use surge_core::subjects::{Pattern, Subject, SubscriptionIndex};

/// Literal tokens used in generated patterns and subjects.
const ALPHABET: [&str; 3] = ["a", "b", "c"];

fn literal_token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&ALPHABET[..])
}

/// 1 to 5 literal tokens.
fn subject() -> impl Strategy<Value = Subject> {
    prop::collection::vec(literal_token(), 1..=5)
        .prop_map(|tokens| Subject::parse(&tokens.join(".")).expect("generated subject is valid"))
}

/// Up to 3 tokens from the alphabet or `*`, then optionally `>`; a pattern
/// with no token at all becomes `>`.
fn pattern() -> impl Strategy<Value = Pattern> {
    let token = prop_oneof![3 => literal_token(), 1 => Just("*")];
    (prop::collection::vec(token, 0..=3), any::<bool>()).prop_map(|(mut tokens, tail)| {
        if tail || tokens.is_empty() {
            tokens.push(">");
        }
        Pattern::parse(&tokens.join(".")).expect("generated pattern is valid")
    })
}

/// Every subject of 1 to 5 tokens over the alphabet plus a token no pattern
/// uses. Generated patterns have at most 4 tokens, so if two of them overlap
/// a subject here matches both, and if `a` does not cover `b` a subject here
/// matches `b` and not `a`: the properties below can be exact.
static UNIVERSE: LazyLock<Vec<Subject>> =
    LazyLock::new(|| surge_properties::all_subjects(&["a", "b", "c", "z"], 5));

#[derive(Debug, Clone)]
enum Op {
    Insert { pattern: usize, key: u32 },
    Remove { pattern: usize, key: u32 },
}

fn op(patterns: usize) -> impl Strategy<Value = Op> {
    (any::<bool>(), 0..patterns, 0u32..5).prop_map(|(insert, pattern, key)| {
        if insert {
            Op::Insert { pattern, key }
        } else {
            Op::Remove { pattern, key }
        }
    })
}

/// A pool of patterns, operations that pick from it (so removals often hit
/// live pairs), and subjects to look up after every operation.
fn scenario() -> impl Strategy<Value = (Vec<Pattern>, Vec<Op>, Vec<Subject>)> {
    prop::collection::vec(pattern(), 1..8).prop_flat_map(|pool| {
        let n = pool.len();
        (
            Just(pool),
            prop::collection::vec(op(n), 1..60),
            prop::collection::vec(subject(), 1..8),
        )
    })
}

fn naive(live: &BTreeSet<(Pattern, u32)>, subject: &Subject) -> Vec<u32> {
    let keys: BTreeSet<u32> = live
        .iter()
        .filter(|(p, _)| p.matches(subject))
        .map(|&(_, k)| k)
        .collect();
    keys.into_iter().collect()
}

proptest! {
    #![proptest_config(surge_properties::config("subjects", 256))]

    #[test]
    fn index_agrees_with_naive_matching((pool, ops, subjects) in scenario()) {
        let mut index = SubscriptionIndex::<u32>::new();
        let empty_nodes = index.node_count();
        let mut live = BTreeSet::new();
        let mut out = Vec::new();
        for op in &ops {
            match *op {
                Op::Insert { pattern, key } => {
                    let new = live.insert((pool[pattern].clone(), key));
                    prop_assert_eq!(index.insert(&pool[pattern], key), new, "{:?}", op);
                }
                Op::Remove { pattern, key } => {
                    let was = live.remove(&(pool[pattern].clone(), key));
                    prop_assert_eq!(index.remove(&pool[pattern], key), was, "{:?}", op);
                }
            }
            prop_assert_eq!(index.len(), live.len());
            prop_assert_eq!(index.is_empty(), live.is_empty());
            for subject in &subjects {
                index.matches_into(subject, &mut out);
                prop_assert_eq!(&out, &naive(&live, subject), "after {:?}, subject {}", op, subject);
            }
        }
        for (pattern, key) in std::mem::take(&mut live) {
            prop_assert!(index.remove(&pattern, key));
        }
        prop_assert!(index.is_empty());
        prop_assert_eq!(index.node_count(), empty_nodes, "removing everything frees every node");
    }

    #[test]
    fn pattern_round_trips(p in pattern()) {
        prop_assert_eq!(Pattern::parse(p.as_str()), Ok(p.clone()));
        prop_assert_eq!(p.to_string(), p.as_str());
        let json = serde_json::to_string(&p).expect("serialises");
        prop_assert_eq!(serde_json::from_str::<Pattern>(&json).expect("deserialises"), p);
    }

    #[test]
    fn subjects_are_literal_patterns(s in subject(), other in subject()) {
        let p = Pattern::parse(s.as_str()).expect("a subject is a valid pattern");
        prop_assert!(p.is_literal());
        prop_assert!(p.matches(&s));
        prop_assert_eq!(p.matches(&other), s == other);
        prop_assert_eq!(Subject::parse(s.as_str()), Ok(s.clone()));
    }

    #[test]
    fn covers_is_sound_on_random_subjects(a in pattern(), b in pattern(), subjects in prop::collection::vec(subject(), 1..32)) {
        if a.covers(&b) {
            for s in &subjects {
                prop_assert!(!b.matches(s) || a.matches(s), "{} covers {} but not {}", a, b, s);
            }
        }
    }

    #[test]
    fn covers_is_exact(a in pattern(), b in pattern()) {
        let counterexample = UNIVERSE.iter().find(|s| b.matches(s) && !a.matches(s));
        prop_assert_eq!(a.covers(&b), counterexample.is_none(), "counterexample {:?}", counterexample);
        prop_assert!(a.covers(&a));
    }

    #[test]
    fn overlaps_is_symmetric_and_exact(a in pattern(), b in pattern()) {
        prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
        let witness = UNIVERSE.iter().find(|s| a.matches(s) && b.matches(s));
        prop_assert_eq!(a.overlaps(&b), witness.is_some(), "witness {:?}", witness);
        if a.covers(&b) {
            prop_assert!(a.overlaps(&b), "a pattern overlaps what it covers");
        }
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(s in "[ab.*> \t]{0,12}") {
        // Whatever the text, parsing answers; a valid subject is a valid,
        // literal pattern.
        let pattern = Pattern::parse(&s);
        if Subject::parse(&s).is_ok() {
            prop_assert!(pattern.map(|p| p.is_literal()).unwrap_or(false));
        }
    }
}
