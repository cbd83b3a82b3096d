//! `resume`: the retained messages on a client's channels after its last
//! `sseq`, read back from the stream.
//!
//! The read is bounded by the stream's last sequence at the moment of the
//! fetch (`Fetched::last_sseq`); the session layer holds live messages
//! meanwhile and drops live ones at or below that sequence, so the seam
//! between recovered and live messages has neither a gap nor a duplicate.
//!
//! # Filtering with one filter subject per consumer
//!
//! Debian's nats-server (2.9) takes a single `filter_subject` per consumer.
//! Each channel a client resumes that lies within one of the stream's
//! subjects is read through its own short-lived consumer filtered by that
//! channel (channels covered by another of the same request are dropped
//! first), and the reads are merged by stream sequence, overlapping matches
//! counted once. Server-side filtering means a resume reads only what the
//! client will receive, which is what matters when thousands of clients
//! resume at once after an outage. Only when a request has more than
//! [`MAX_FILTERED_READS`] channels, or a channel wider than any one stream
//! subject (the server refuses such a filter, e.g. `odin.>` on a stream of
//! `odin.token.>` and `odin.global.>`), is the range read once unfiltered
//! and matched here: its cost is bounded by the stream's retention.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::Stream;
use futures_util::StreamExt;
use futures_util::future::try_join_all;
use surge_core::protocol::Published;
use surge_core::subjects::{Pattern, Subject};
use surge_runtime::{BrokerError, Fetched};

use super::{Link, priority_of, unavailable};

/// Most filtered consumers one resume creates; past it one unfiltered read
/// is cheaper for the server.
pub(super) const MAX_FILTERED_READS: usize = 8;
/// Messages asked for in one pull of a read.
const BATCH: usize = 512;
/// A resume that takes longer fails (the client gets an error and keeps
/// its subscriptions) rather than holding live messages indefinitely.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The server removes a read's consumer this long after its last pull if
/// the explicit delete did not get through.
const READ_INACTIVE: Duration = Duration::from_secs(10);

/// How one resume reads the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// No channel can match anything the stream holds.
    Nothing,
    /// One consumer per pattern, filtered by the server.
    Filtered(Vec<Pattern>),
    /// One consumer over everything, matched here.
    Unfiltered,
}

fn plan(patterns: &[Pattern], stream_subjects: &[Pattern]) -> Plan {
    let relevant: Vec<&Pattern> = patterns
        .iter()
        .filter(|p| stream_subjects.iter().any(|s| s.overlaps(p)))
        .collect();
    // Keep a pattern unless another one covers it; of equal patterns keep
    // the first.
    let minimal: Vec<Pattern> = relevant
        .iter()
        .enumerate()
        .filter(|&(i, p)| {
            !relevant
                .iter()
                .enumerate()
                .any(|(j, q)| j != i && q.covers(p) && (!p.covers(q) || j < i))
        })
        .map(|(_, p)| (*p).clone())
        .collect();
    if minimal.is_empty() {
        return Plan::Nothing;
    }
    let filterable = minimal
        .iter()
        .all(|p| stream_subjects.iter().any(|s| s.covers(p)));
    if filterable && minimal.len() <= MAX_FILTERED_READS {
        Plan::Filtered(minimal)
    } else {
        Plan::Unfiltered
    }
}

pub(super) async fn fetch(
    link: &Link,
    patterns: Vec<Pattern>,
    since: u64,
) -> Result<Fetched, BrokerError> {
    match tokio::time::timeout(FETCH_TIMEOUT, fetch_within(link, &patterns, since)).await {
        Ok(result) => result,
        Err(_) => Err(BrokerError::Unavailable(format!(
            "NATS: reading the stream for resume took longer than {FETCH_TIMEOUT:?}"
        ))),
    }
}

async fn fetch_within(
    link: &Link,
    patterns: &[Pattern],
    since: u64,
) -> Result<Fetched, BrokerError> {
    if !link.connected() {
        return Err(BrokerError::Unavailable("NATS is disconnected".into()));
    }
    let stream = link
        .js
        .get_stream(&link.spec.name)
        .await
        .map_err(|e| unavailable("reading the stream", e))?;
    let epoch = link.note_stream(&stream);
    let state = &stream.cached_info().state;
    let mut fetched = Fetched {
        first_retained: (state.messages > 0).then_some(state.first_sequence),
        messages: Vec::new(),
        last_sseq: state.last_sequence,
        epoch,
    };
    if since >= fetched.last_sseq {
        return Ok(fetched);
    }
    let range = (since + 1, fetched.last_sseq);
    fetched.messages = match plan(patterns, &link.subjects) {
        Plan::Nothing => Vec::new(),
        Plan::Unfiltered => read(&stream, None, range, patterns).await?,
        Plan::Filtered(filters) => {
            let reads = filters.iter().map(|f| read(&stream, Some(f), range, &[]));
            let mut merged = BTreeMap::new();
            for message in try_join_all(reads).await?.into_iter().flatten() {
                merged.entry(message.sseq).or_insert(message);
            }
            merged.into_values().collect()
        }
    };
    Ok(fetched)
}

/// The messages with sseq in `first..=last`, in order: those on `filter`
/// when given (the server filters), else those matching `patterns`.
async fn read(
    stream: &Stream,
    filter: Option<&Pattern>,
    (first, last): (u64, u64),
    patterns: &[Pattern],
) -> Result<Vec<Arc<Published>>, BrokerError> {
    let consumer = stream
        .create_consumer(pull::Config {
            description: Some("surge resume read".into()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: first,
            },
            ack_policy: AckPolicy::None,
            filter_subject: filter.map(|f| f.as_str().to_owned()).unwrap_or_default(),
            inactive_threshold: READ_INACTIVE,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("creating a resume consumer", e))?;
    let name = consumer.cached_info().name.clone();
    let mut out = Vec::new();
    let mut done = consumer.cached_info().num_pending == 0;
    let result = async {
        while !done {
            // `fetch` does not wait: it returns what is stored and ends.
            let mut batch = consumer
                .fetch()
                .max_messages(BATCH)
                .messages()
                .await
                .map_err(|e| unavailable("reading for resume", e))?;
            let mut got = 0usize;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| unavailable("reading for resume", e))?;
                got += 1;
                let (sseq, pending) = match message.info() {
                    Ok(info) => (info.stream_sequence, info.pending),
                    Err(e) => return Err(unavailable("reading message metadata", e)),
                };
                if sseq > last {
                    done = true;
                    break;
                }
                if let Ok(subject) = Subject::parse(message.subject.as_str())
                    && (filter.is_some() || patterns.iter().any(|p| p.matches(&subject)))
                {
                    out.push(Published::new(
                        subject,
                        sseq,
                        priority_of(message.headers.as_ref()),
                        &message.payload,
                    ));
                }
                if sseq >= last || pending == 0 {
                    done = true;
                    break;
                }
            }
            // Nothing more is stored: what was pending has since expired.
            done |= got == 0;
        }
        Ok(())
    }
    .await;
    let stream = stream.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.delete_consumer(&name)).await;
    });
    result.map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(list: &[&str]) -> Vec<Pattern> {
        list.iter()
            .map(|p| Pattern::parse(p).expect("pattern"))
            .collect()
    }

    fn stream() -> Vec<Pattern> {
        pats(&["odin.token.>", "odin.global.>"])
    }

    #[test]
    fn one_channel_is_one_filtered_read() {
        assert_eq!(
            plan(&pats(&["odin.token.BTC.trade"]), &stream()),
            Plan::Filtered(pats(&["odin.token.BTC.trade"]))
        );
    }

    #[test]
    fn covered_and_repeated_channels_are_read_once() {
        assert_eq!(
            plan(
                &pats(&[
                    "odin.token.BTC.trade",
                    "odin.token.*.trade",
                    "odin.global.trending",
                    "odin.token.*.trade",
                ]),
                &stream()
            ),
            Plan::Filtered(pats(&["odin.token.*.trade", "odin.global.trending"]))
        );
    }

    #[test]
    fn channels_outside_the_stream_read_nothing() {
        assert_eq!(
            plan(&pats(&["other.>", "odin.x"]), &stream()),
            Plan::Nothing
        );
        assert_eq!(
            plan(&pats(&["other.>", "odin.global.a"]), &stream()),
            Plan::Filtered(pats(&["odin.global.a"]))
        );
    }

    #[test]
    fn wide_or_many_channels_read_unfiltered() {
        assert_eq!(plan(&pats(&["odin.>"]), &stream()), Plan::Unfiltered);
        assert_eq!(plan(&pats(&[">"]), &stream()), Plan::Unfiltered);
        let many: Vec<String> = (0..=MAX_FILTERED_READS)
            .map(|i| format!("odin.token.S{i}.trade"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(plan(&pats(&many), &stream()), Plan::Unfiltered);
        assert!(matches!(
            plan(&pats(&many[..MAX_FILTERED_READS]), &stream()),
            Plan::Filtered(f) if f.len() == MAX_FILTERED_READS
        ));
    }
}
