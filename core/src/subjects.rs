//! NATS subjects, subscription patterns and the index that fans a published
//! message out to its subscribers.
//!
//! Clients subscribe to channels with the same syntax as NATS: dot-separated
//! tokens, `*` for exactly one token and `>` for one or more trailing tokens.
//! Validation is stricter than NATS in one place: a wildcard character inside
//! a longer token (`a*b`) is rejected instead of being taken literally, since
//! a user who writes it almost always meant a wildcard.
//!
//! [`SubscriptionIndex`] is a trie keyed by token, so a publish walks only the
//! branches its own tokens reach instead of testing every subscription: a
//! subject with `t` tokens visits at most the literal and `*` children along
//! its path. Subscriber sets are `BTreeSet`s so every lookup returns keys in
//! ascending order, which keeps simulated runs deterministic.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::iter::Peekable;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

/// Longest subject or pattern accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;

/// Most tokens a subject or pattern may have.
pub const MAX_TOKENS: usize = 16;

/// Why a string is not a valid subject or pattern.
///
/// Token positions count from 1, as a user reading the subject would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject is empty")]
    Empty,
    #[error(
        "subject has an empty token at position {position} (no leading, trailing or doubled dots)"
    )]
    EmptyToken { position: usize },
    #[error("subject contains whitespace (space, tab, CR or LF)")]
    Whitespace,
    #[error(
        "token `{token}` mixes a wildcard with other characters; `*` and `>` must be whole tokens"
    )]
    PartialWildcard { token: String },
    #[error("`>` may only be the last token of a pattern")]
    FullWildcardNotLast,
    #[error("a published subject cannot contain the wildcards `*` or `>`")]
    WildcardInSubject,
    #[error("subject is {len} bytes long; the maximum is {max}")]
    TooLong { len: usize, max: usize },
    #[error("subject has {count} tokens; the maximum is {max}")]
    TooManyTokens { count: usize, max: usize },
}

/// What a string is being validated as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Subject,
    Pattern,
}

fn validate(s: &str, syntax: Syntax) -> Result<(), SubjectError> {
    if s.is_empty() {
        return Err(SubjectError::Empty);
    }
    // Length first: everything after this, including the token echoed in
    // `PartialWildcard`, is bounded by it.
    if s.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong {
            len: s.len(),
            max: MAX_SUBJECT_LEN,
        });
    }
    if s.bytes().any(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
        return Err(SubjectError::Whitespace);
    }
    let count = s.bytes().filter(|&b| b == b'.').count() + 1;
    if count > MAX_TOKENS {
        return Err(SubjectError::TooManyTokens {
            count,
            max: MAX_TOKENS,
        });
    }
    for (index, token) in s.split('.').enumerate() {
        let last = index + 1 == count;
        match token {
            "" => {
                return Err(SubjectError::EmptyToken {
                    position: index + 1,
                });
            }
            "*" | ">" if syntax == Syntax::Subject => return Err(SubjectError::WildcardInSubject),
            ">" if !last => return Err(SubjectError::FullWildcardNotLast),
            "*" | ">" => {}
            t if t.contains(['*', '>']) => {
                return Err(SubjectError::PartialWildcard {
                    token: t.to_owned(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn is_wildcard(token: &str) -> bool {
    token == "*" || token == ">"
}

/// A validated literal subject: what a message is published on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Subject(String);

impl Subject {
    /// Validates `s` as a literal subject (no wildcards).
    pub fn parse(s: &str) -> Result<Subject, SubjectError> {
        validate(s, Syntax::Subject)?;
        Ok(Subject(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated tokens, in order.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

/// A validated subscription pattern: a subject that may use `*` and `>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Pattern(String);

impl Pattern {
    /// Validates `s` as a subscription pattern.
    pub fn parse(s: &str) -> Result<Pattern, SubjectError> {
        validate(s, Syntax::Pattern)?;
        Ok(Pattern(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated tokens, in order (wildcards included).
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// Does `subject` match this pattern? `>` needs at least one token, so
    /// `odin.>` does not match `odin`.
    pub fn matches(&self, subject: &Subject) -> bool {
        let mut subject_tokens = subject.tokens();
        for token in self.tokens() {
            match (token, subject_tokens.next()) {
                (">", next) => return next.is_some(),
                (_, None) => return false,
                ("*", Some(_)) => {}
                (literal, Some(s)) if literal == s => {}
                _ => return false,
            }
        }
        subject_tokens.next().is_none()
    }

    /// True when the pattern has no wildcard, i.e. it matches one subject.
    pub fn is_literal(&self) -> bool {
        !self.tokens().any(is_wildcard)
    }

    /// Could some subject match both patterns? Used to check a client's
    /// channel against the subjects the broker's stream carries.
    ///
    /// Each token position constrains the subject independently, so the
    /// patterns overlap exactly when every position is compatible and both
    /// can end at the same length.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let mut mine = self.tokens();
        let mut theirs = other.tokens();
        loop {
            match (mine.next(), theirs.next()) {
                (None, None) => return true,
                // `>` takes one or more tokens; the other side has at least
                // one here and may end or continue as it likes.
                (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
                // One side ends where the other still needs a token.
                (None, Some(_)) | (Some(_), None) => return false,
                (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }

    /// Does every subject that matches `other` also match `self`?
    pub fn covers(&self, other: &Pattern) -> bool {
        let mut mine = self.tokens();
        let mut theirs = other.tokens();
        loop {
            match (mine.next(), theirs.next()) {
                (None, None) => return true,
                // Our `>` takes whatever non-empty rest `other` requires.
                (Some(">"), Some(_)) => return true,
                // Their `>` allows tail lengths that our remaining, fixed
                // or `*`-prefixed, tokens cannot all take.
                (Some(_), Some(">")) => return false,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }
}

macro_rules! string_type_impls {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = SubjectError;
            fn from_str(s: &str) -> Result<Self, SubjectError> {
                $ty::parse(s)
            }
        }

        /// Validates without copying the string.
        impl TryFrom<String> for $ty {
            type Error = SubjectError;
            fn try_from(s: String) -> Result<Self, SubjectError> {
                validate(&s, Syntax::$ty)?;
                Ok($ty(s))
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }

        // Hand-written so serialising a message borrows the string instead
        // of cloning it as `#[serde(into = "String")]` would.
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

string_type_impls!(Subject);
string_type_impls!(Pattern);

/// Every literal subject is also a pattern, one that matches only itself.
impl From<Subject> for Pattern {
    fn from(subject: Subject) -> Pattern {
        Pattern(subject.0)
    }
}

/// One trie node: the position after a path of tokens.
struct Node<K> {
    literal: HashMap<Box<str>, Node<K>>,
    star: Option<Box<Node<K>>>,
    /// Keys whose pattern ends exactly at this node.
    exact: BTreeSet<K>,
    /// Keys whose pattern is this node's path followed by `>`.
    tail: BTreeSet<K>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            star: None,
            exact: BTreeSet::new(),
            tail: BTreeSet::new(),
        }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.exact.is_empty()
            && self.tail.is_empty()
    }
}

/// Which subscriptions (pattern, key) exist, organised so a published
/// subject finds its subscribers by walking its own tokens.
///
/// `K` is a connection id. Memory is proportional to the live subscriptions:
/// [`remove`](Self::remove) prunes nodes that no longer lead anywhere.
pub struct SubscriptionIndex<K> {
    root: Node<K>,
    /// (pattern, key) pairs.
    len: usize,
    /// Trie nodes including the root.
    nodes: usize,
}

impl<K> fmt::Debug for SubscriptionIndex<K> {
    // Summary only: printing the trie would expose HashMap order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionIndex")
            .field("len", &self.len)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl<K: Copy + Ord> Default for SubscriptionIndex<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Ord> SubscriptionIndex<K> {
    pub fn new() -> Self {
        SubscriptionIndex {
            root: Node::default(),
            len: 0,
            nodes: 1,
        }
    }

    /// Adds `key` as a subscriber of `pattern`; true if the pair is new.
    pub fn insert(&mut self, pattern: &Pattern, key: K) -> bool {
        let mut created = 0;
        let mut node = &mut self.root;
        let mut tokens = pattern.tokens();
        let set = loop {
            match tokens.next() {
                None => break &mut node.exact,
                // Validation guarantees `>` is the last token.
                Some(">") => break &mut node.tail,
                Some("*") => {
                    node = node.star.get_or_insert_with(|| {
                        created += 1;
                        Box::default()
                    });
                }
                Some(token) => {
                    node = node.literal.entry(Box::from(token)).or_insert_with(|| {
                        created += 1;
                        Node::default()
                    });
                }
            }
        };
        let added = set.insert(key);
        self.nodes += created;
        if added {
            self.len += 1;
        }
        added
    }

    /// Removes the pair; true if it was there. Nodes left without
    /// subscribers or children are freed.
    pub fn remove(&mut self, pattern: &Pattern, key: K) -> bool {
        let removed = Self::remove_below(&mut self.root, pattern.tokens(), key, &mut self.nodes);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_below<'p>(
        node: &mut Node<K>,
        mut tokens: impl Iterator<Item = &'p str>,
        key: K,
        nodes: &mut usize,
    ) -> bool {
        match tokens.next() {
            None => node.exact.remove(&key),
            Some(">") => node.tail.remove(&key),
            Some("*") => {
                let Some(child) = node.star.as_deref_mut() else {
                    return false;
                };
                let removed = Self::remove_below(child, tokens, key, nodes);
                if removed && child.is_empty() {
                    node.star = None;
                    *nodes -= 1;
                }
                removed
            }
            Some(token) => {
                let Some(child) = node.literal.get_mut(token) else {
                    return false;
                };
                let removed = Self::remove_below(child, tokens, key, nodes);
                if removed && child.is_empty() {
                    node.literal.remove(token);
                    *nodes -= 1;
                }
                removed
            }
        }
    }

    /// Is `key` subscribed to exactly this pattern?
    pub fn contains(&self, pattern: &Pattern, key: K) -> bool {
        let mut node = &self.root;
        for token in pattern.tokens() {
            let next = match token {
                ">" => return node.tail.contains(&key),
                "*" => node.star.as_deref(),
                literal => node.literal.get(literal),
            };
            match next {
                Some(child) => node = child,
                None => return false,
            }
        }
        node.exact.contains(&key)
    }

    /// Clears `out` and fills it with every key that has at least one
    /// pattern matching `subject`, each once, in ascending order.
    ///
    /// Allocation is limited to growing `out`: the walk recurses over the
    /// subject's tokens and the subscriber sets it reaches are merged
    /// straight into `out`.
    pub fn matches_into(&self, subject: &Subject, out: &mut Vec<K>) {
        out.clear();
        let mut hits = Hits {
            sets: [None; MERGE_FAN_IN],
            len: 0,
            out,
            spilled: false,
        };
        collect(&self.root, subject.as_str(), &mut hits);
        hits.finish();
    }

    /// [`matches_into`](Self::matches_into) into a new vector.
    pub fn matches(&self, subject: &Subject) -> Vec<K> {
        let mut out = Vec::new();
        self.matches_into(subject, &mut out);
        out
    }

    /// Number of (pattern, key) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Trie nodes, the root included: an empty index has 1.
    pub fn node_count(&self) -> usize {
        self.nodes
    }
}

/// Subscriber sets merged without sorting, up to this many per lookup; a
/// subject reaching more falls back to sort + dedup. A literal subject with
/// `t` tokens reaches at most `t + 1` sets unless `*` patterns branch.
const MERGE_FAN_IN: usize = 8;

/// The non-empty subscriber sets a lookup reached.
struct Hits<'t, 'o, K> {
    sets: [Option<&'t BTreeSet<K>>; MERGE_FAN_IN],
    len: usize,
    out: &'o mut Vec<K>,
    /// Too many sets to merge: they were appended to `out` unsorted.
    spilled: bool,
}

impl<'t, K: Copy + Ord> Hits<'t, '_, K> {
    fn add(&mut self, set: &'t BTreeSet<K>) {
        if set.is_empty() {
            return;
        }
        if !self.spilled && self.len == MERGE_FAN_IN {
            for earlier in self.sets.iter().flatten() {
                self.out.extend(earlier.iter().copied());
            }
            self.spilled = true;
        }
        if self.spilled {
            self.out.extend(set.iter().copied());
        } else {
            self.sets[self.len] = Some(set);
            self.len += 1;
        }
    }

    fn finish(self) {
        if self.spilled {
            self.out.sort_unstable();
            self.out.dedup();
            return;
        }
        match self.sets[..self.len] {
            [] => {}
            // The common case: one set, already sorted and unique.
            [Some(only)] => self.out.extend(only.iter().copied()),
            _ => merge(&self.sets[..self.len], self.out),
        }
    }
}

/// Merges sorted sets into `out`, ascending and without duplicates.
fn merge<K: Copy + Ord>(sets: &[Option<&BTreeSet<K>>], out: &mut Vec<K>) {
    out.reserve(sets.iter().flatten().map(|s| s.len()).sum());
    let mut iters: [Option<Peekable<std::collections::btree_set::Iter<'_, K>>>; MERGE_FAN_IN] =
        std::array::from_fn(|i| sets.get(i).copied().flatten().map(|s| s.iter().peekable()));
    loop {
        let mut smallest: Option<K> = None;
        let mut live = 0;
        for iter in iters.iter_mut().flatten() {
            if let Some(&&key) = iter.peek() {
                live += 1;
                if smallest.is_none_or(|s| key < s) {
                    smallest = Some(key);
                }
            }
        }
        if live == 1 {
            // Only one set left: the rest of it is already in order.
            let rest = iters
                .iter_mut()
                .flatten()
                .find_map(|i| if i.peek().is_some() { Some(i) } else { None });
            if let Some(last) = rest {
                out.extend(last.copied());
            }
            return;
        }
        let Some(key) = smallest else { return };
        out.push(key);
        for iter in iters.iter_mut().flatten() {
            iter.next_if_eq(&&key);
        }
    }
}

/// Visits `node` with the non-empty remainder `rest` of the subject still to
/// match, recording every subscriber set it satisfies.
fn collect<'t, K: Copy + Ord>(node: &'t Node<K>, rest: &str, hits: &mut Hits<'t, '_, K>) {
    // At least one token remains, which is what `>` here needs.
    hits.add(&node.tail);
    let (token, next) = match rest.split_once('.') {
        Some((token, next)) => (token, Some(next)),
        None => (rest, None),
    };
    let children = [node.literal.get(token), node.star.as_deref()];
    for child in children.into_iter().flatten() {
        match next {
            Some(next) => collect(child, next, hits),
            None => hits.add(&child.exact),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> Pattern {
        Pattern::parse(s).expect("valid pattern in test")
    }

    fn subject(s: &str) -> Subject {
        Subject::parse(s).expect("valid subject in test")
    }

    #[test]
    fn syntax_table() {
        use SubjectError::*;
        let long = "a".repeat(MAX_SUBJECT_LEN + 1);
        let max_len = "a".repeat(MAX_SUBJECT_LEN);
        let many = vec!["a"; MAX_TOKENS + 1].join(".");
        let most = vec!["a"; MAX_TOKENS].join(".");
        // (input, as subject, as pattern)
        type Expected = Result<(), SubjectError>;
        let table: Vec<(&str, Expected, Expected)> = vec![
            ("odin.token.BTC.trade", Ok(()), Ok(())),
            ("a", Ok(()), Ok(())),
            ("ünï.cødé", Ok(()), Ok(())),
            ("a-b_c:d", Ok(()), Ok(())),
            ("", Err(Empty), Err(Empty)),
            (
                ".a",
                Err(EmptyToken { position: 1 }),
                Err(EmptyToken { position: 1 }),
            ),
            (
                "a..b",
                Err(EmptyToken { position: 2 }),
                Err(EmptyToken { position: 2 }),
            ),
            (
                "a.b.",
                Err(EmptyToken { position: 3 }),
                Err(EmptyToken { position: 3 }),
            ),
            (
                ".",
                Err(EmptyToken { position: 1 }),
                Err(EmptyToken { position: 1 }),
            ),
            ("a b", Err(Whitespace), Err(Whitespace)),
            ("a.\tb", Err(Whitespace), Err(Whitespace)),
            ("a\r\n", Err(Whitespace), Err(Whitespace)),
            (" ", Err(Whitespace), Err(Whitespace)),
            ("odin.*.trade", Err(WildcardInSubject), Ok(())),
            ("odin.>", Err(WildcardInSubject), Ok(())),
            (">", Err(WildcardInSubject), Ok(())),
            ("*", Err(WildcardInSubject), Ok(())),
            ("*.*.>", Err(WildcardInSubject), Ok(())),
            (
                "odin.>.trade",
                Err(WildcardInSubject),
                Err(FullWildcardNotLast),
            ),
            ("a.>.>", Err(WildcardInSubject), Err(FullWildcardNotLast)),
            (
                "a*b",
                Err(PartialWildcard {
                    token: "a*b".into(),
                }),
                Err(PartialWildcard {
                    token: "a*b".into(),
                }),
            ),
            (
                "odin.token>",
                Err(PartialWildcard {
                    token: "token>".into(),
                }),
                Err(PartialWildcard {
                    token: "token>".into(),
                }),
            ),
            (
                "a.**",
                Err(PartialWildcard { token: "**".into() }),
                Err(PartialWildcard { token: "**".into() }),
            ),
            (&max_len, Ok(()), Ok(())),
            (
                &long,
                Err(TooLong { len: 257, max: 256 }),
                Err(TooLong { len: 257, max: 256 }),
            ),
            (&most, Ok(()), Ok(())),
            (
                &many,
                Err(TooManyTokens { count: 17, max: 16 }),
                Err(TooManyTokens { count: 17, max: 16 }),
            ),
        ];
        for (input, as_subject, as_pattern) in table {
            assert_eq!(
                Subject::parse(input).map(|_| ()),
                as_subject,
                "subject {input:?}"
            );
            assert_eq!(
                Pattern::parse(input).map(|_| ()),
                as_pattern,
                "pattern {input:?}"
            );
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let cases = [
            ("a..b", "subject has an empty token at position 2"),
            ("a*b", "token `a*b` mixes a wildcard"),
            ("a.>.b", "`>` may only be the last token"),
            ("", "subject is empty"),
        ];
        for (input, start) in cases {
            let message = Pattern::parse(input).expect_err("invalid").to_string();
            assert!(message.starts_with(start), "{input:?}: {message}");
        }
        let message = Subject::parse("a.*").expect_err("invalid").to_string();
        assert_eq!(
            message,
            "a published subject cannot contain the wildcards `*` or `>`"
        );
    }

    #[test]
    fn matching_table() {
        let table = [
            ("odin.token.BTC.trade", "odin.token.BTC.trade", true),
            ("odin.token.BTC.trade", "odin.token.ETH.trade", false),
            ("odin.token.*.trade", "odin.token.BTC.trade", true),
            ("odin.token.*.trade", "odin.token.BTC.book", false),
            // `*` is one token, never several.
            ("odin.*.trade", "odin.token.BTC.trade", false),
            ("odin.*", "odin.token", true),
            ("odin.*", "odin", false),
            ("odin.*", "odin.token.BTC", false),
            // `>` needs at least one token.
            ("odin.>", "odin", false),
            ("odin.>", "odin.token", true),
            ("odin.>", "odin.token.BTC.trade", true),
            (">", "odin", true),
            (">", "odin.token.BTC", true),
            ("*.>", "odin", false),
            ("*.>", "odin.x", true),
            ("*", "odin", true),
            ("*", "odin.token", false),
            ("odin", "odin.token", false),
            ("odin.token", "odin", false),
            ("odin.token.>", "odin.global.x", false),
        ];
        for (p, s, expected) in table {
            assert_eq!(pattern(p).matches(&subject(s)), expected, "{p} ~ {s}");
        }
    }

    #[test]
    fn literal_patterns() {
        assert!(pattern("odin.token.BTC").is_literal());
        assert!(!pattern("odin.*.BTC").is_literal());
        assert!(!pattern("odin.>").is_literal());
        let p = Pattern::from(subject("odin.token"));
        assert!(p.is_literal());
        assert!(p.matches(&subject("odin.token")));
    }

    #[test]
    fn overlaps_table() {
        let table = [
            ("odin.token.>", "odin.token.BTC.trade", true),
            ("odin.token.>", "odin.global.>", false),
            ("odin.token.>", "odin.>", true),
            ("odin.token.>", "odin.token", false),
            ("odin.token.>", "*.*.*", true),
            ("odin.*", "*.token", true),
            ("odin.*", "odin.*.*", false),
            ("odin.*.trade", "odin.BTC.*", true),
            ("odin.*.trade", "odin.BTC.book", false),
            ("a.*.>", "a.>", true),
            ("a.*.>", "a.b", false),
            (">", "a", true),
            (">", ">", true),
            ("a", "a", true),
            ("a", "b", false),
        ];
        for (a, b, expected) in table {
            assert_eq!(
                pattern(a).overlaps(&pattern(b)),
                expected,
                "{a} overlaps {b}"
            );
            assert_eq!(
                pattern(b).overlaps(&pattern(a)),
                expected,
                "{b} overlaps {a}"
            );
        }
    }

    #[test]
    fn covers_table() {
        let table = [
            ("odin.token.>", "odin.token.BTC.trade", true),
            ("odin.token.>", "odin.token.*.trade", true),
            ("odin.token.>", "odin.token.>", true),
            ("odin.token.>", "odin.token", false),
            ("odin.>", "odin.token.>", true),
            ("odin.token.>", "odin.>", false),
            (">", "a.b.c", true),
            (">", "*.>", true),
            ("*.>", ">", false),
            ("odin.*", "odin.BTC", true),
            ("odin.*", "odin.*", true),
            ("odin.*", "odin.>", false),
            ("odin.BTC", "odin.*", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("a", "a", true),
            ("a", "a.b", false),
            ("a.b", "a", false),
        ];
        for (a, b, expected) in table {
            assert_eq!(pattern(a).covers(&pattern(b)), expected, "{a} covers {b}");
        }
    }

    #[test]
    fn display_fromstr_and_serde_use_the_plain_string() {
        let p = pattern("odin.token.*.trade");
        assert_eq!(p.to_string(), "odin.token.*.trade");
        assert_eq!("odin.token.*.trade".parse::<Pattern>(), Ok(p.clone()));
        assert_eq!(
            serde_json::to_string(&p).expect("serialise"),
            "\"odin.token.*.trade\""
        );
        let back: Pattern = serde_json::from_str("\"odin.token.*.trade\"").expect("valid");
        assert_eq!(back, p);

        let s = subject("odin.token.BTC");
        assert_eq!(
            serde_json::to_string(&s).expect("serialise"),
            "\"odin.token.BTC\""
        );
        let err = serde_json::from_str::<Subject>("\"odin.*\"").expect_err("wildcard");
        assert!(
            err.to_string().contains("cannot contain the wildcards"),
            "{err}"
        );
        let err = serde_json::from_str::<Pattern>("\"a..b\"").expect_err("empty token");
        assert!(
            err.to_string().contains("empty token at position 2"),
            "{err}"
        );
        assert_eq!(String::from(s), "odin.token.BTC");
    }

    /// Recounts the trie and checks that no node below the root is empty.
    fn audit<K: Copy + Ord>(index: &SubscriptionIndex<K>) -> usize {
        fn walk<K>(node: &Node<K>, is_root: bool) -> usize {
            assert!(is_root || !node.is_empty(), "an empty node was left behind");
            let children = node.literal.values().chain(node.star.as_deref());
            1 + children.map(|c| walk(c, false)).sum::<usize>()
        }
        let counted = walk(&index.root, true);
        assert_eq!(counted, index.node_count());
        counted
    }

    #[test]
    fn insert_remove_and_prune() {
        let mut index = SubscriptionIndex::<u32>::new();
        assert!(index.is_empty());
        assert_eq!(index.node_count(), 1);

        let btc = pattern("odin.token.BTC.trade");
        let star = pattern("odin.token.*.trade");
        let tail = pattern("odin.token.>");
        assert!(index.insert(&btc, 1));
        assert!(!index.insert(&btc, 1), "the same pair twice is not new");
        assert!(index.insert(&btc, 2));
        assert!(index.insert(&star, 1));
        assert!(index.insert(&tail, 3));
        assert_eq!(index.len(), 4);
        // root, odin, token, BTC, trade, *, trade
        assert_eq!(audit(&index), 7);
        assert!(index.contains(&btc, 2));
        assert!(!index.contains(&star, 2));
        assert!(index.contains(&tail, 3));

        assert!(!index.remove(&star, 2), "never inserted");
        assert!(!index.remove(&pattern("odin.token.ETH.trade"), 1));
        assert!(!index.remove(&pattern("x.y"), 1));
        assert_eq!(audit(&index), 7, "a failed remove changes nothing");

        assert!(index.remove(&star, 1));
        assert!(!index.remove(&star, 1), "already removed");
        assert_eq!(audit(&index), 5, "the `*` branch was pruned");
        assert!(index.remove(&btc, 1));
        assert_eq!(audit(&index), 5, "key 2 still holds the branch");
        assert!(index.remove(&btc, 2));
        assert_eq!(audit(&index), 3, "odin.token stays for the `>` subscriber");
        assert!(index.remove(&tail, 3));
        assert_eq!(audit(&index), 1);
        assert!(index.is_empty());
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn lookups_find_each_key_once_in_order() {
        let mut index = SubscriptionIndex::<u32>::new();
        for key in (0..100).rev() {
            index.insert(&pattern("odin.token.BTC.trade"), key);
        }
        for key in (50..150).step_by(2) {
            index.insert(&pattern("odin.token.*.trade"), key);
            index.insert(&pattern("odin.token.>"), key);
        }
        index.insert(&pattern(">"), 7);
        index.insert(&pattern("odin.global.>"), 500);
        index.insert(&pattern("odin.token.BTC"), 501);

        let mut out = vec![999, 998];
        index.matches_into(&subject("odin.token.BTC.trade"), &mut out);
        let expected: Vec<u32> = (0..100).chain((100..150).step_by(2)).collect();
        assert_eq!(out, expected);

        index.matches_into(&subject("odin.token.ETH.trade"), &mut out);
        let mut expected: Vec<u32> = (50..150).step_by(2).collect();
        expected.insert(0, 7);
        assert_eq!(out, expected);

        assert_eq!(index.matches(&subject("odin.token.BTC")), {
            let mut e: Vec<u32> = (50..150).step_by(2).collect();
            e.insert(0, 7);
            e.push(501);
            e
        });
        assert_eq!(
            index.matches(&subject("odin")),
            vec![7],
            "`odin.>` needs a token"
        );
        assert_eq!(index.matches(&subject("odin.global.x")), vec![7, 500]);
        assert!(
            SubscriptionIndex::<u32>::new()
                .matches(&subject("a"))
                .is_empty()
        );
    }

    #[test]
    fn many_overlapping_sets_fall_back_to_sort_and_still_dedup() {
        // Every pattern of 4 tokens from {a, *} plus `>` at each depth:
        // 16 + 4 sets reach `a.a.a.a`, more than the merge handles.
        let mut index = SubscriptionIndex::<u32>::new();
        for key in 0..16u32 {
            let tokens: Vec<&str> = (0..4)
                .map(|i| if key & (1 << i) != 0 { "*" } else { "a" })
                .collect();
            let p = pattern(&tokens.join("."));
            index.insert(&p, key % 5);
            index.insert(&p, 100 - key);
        }
        for p in [">", "a.>", "a.*.>", "*.a.*.>"] {
            index.insert(&pattern(p), 3);
            index.insert(&pattern(p), 1000);
        }
        let got = index.matches(&subject("a.a.a.a"));
        let mut expected: Vec<u32> = (0..5).chain((85..=100).rev()).chain([1000]).collect();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(got, expected);
    }

    #[test]
    fn debug_output_is_a_summary() {
        let mut index = SubscriptionIndex::<u8>::default();
        index.insert(&pattern("a.b"), 1);
        assert_eq!(
            format!("{index:?}"),
            "SubscriptionIndex { len: 1, nodes: 3, .. }"
        );
    }
}
