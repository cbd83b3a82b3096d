//! The JetStream stream surge reads: ensured at start, never silently
//! rewritten.
//!
//! Several surge instances, and the publishers, share one stream, so an
//! instance started with different retention settings must not quietly
//! change what everybody else relies on. [`ensure`] creates the stream when
//! it is missing, accepts it when it matches, and otherwise refuses with
//! every difference named, unless the operator opted in with
//! `SURGE_JS_UPDATE_STREAM=true`; then it updates the stream and logs what
//! changed. Storage type and retention policy cannot be changed in place by
//! JetStream, so those differences are refused even with the opt-in.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{Context, GetStreamErrorKind};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use surge_core::config::{Config, format_bytes, format_duration};

use super::NatsError;

/// The stream as the configuration describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    pub max_age: Duration,
    pub max_messages: u64,
    pub max_bytes: u64,
    pub replicas: u32,
}

impl StreamSpec {
    /// From `SURGE_JS_*`.
    pub fn from_config(config: &Config) -> Self {
        StreamSpec {
            name: config.js_stream.clone(),
            subjects: config.js_subjects.clone(),
            max_age: config.js_max_age,
            max_messages: config.js_max_msgs,
            max_bytes: config.js_max_bytes,
            replicas: config.js_replicas,
        }
    }

    /// The JetStream configuration to create the stream with: limits
    /// retention (every instance reads everything; nothing is removed by
    /// acknowledgement), file storage, oldest messages discarded first.
    pub fn to_stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            max_age: self.max_age,
            max_messages: i64::try_from(self.max_messages).unwrap_or(i64::MAX),
            max_bytes: i64::try_from(self.max_bytes).unwrap_or(i64::MAX),
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            num_replicas: self.replicas as usize,
            ..Default::default()
        }
    }

    /// `existing` with surge's settings applied and everything else (a
    /// description, a duplicate window, …) kept as the operator left it.
    fn applied_to(&self, existing: &stream::Config) -> stream::Config {
        let wanted = self.to_stream_config();
        stream::Config {
            subjects: wanted.subjects,
            max_age: wanted.max_age,
            max_messages: wanted.max_messages,
            max_bytes: wanted.max_bytes,
            num_replicas: wanted.num_replicas,
            ..existing.clone()
        }
    }
}

/// One setting on which an existing stream and the configuration disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The stream's field, as `nats stream info` calls it.
    pub field: &'static str,
    /// The surge setting that asks for the other value.
    pub setting: &'static str,
    pub existing: String,
    pub configured: String,
    /// Whether JetStream can change it on a live stream.
    pub updatable: bool,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: the stream has {}, {} asks for {}",
            self.field, self.existing, self.setting, self.configured
        )?;
        if !self.updatable {
            write!(f, " (JetStream cannot change this on an existing stream)")?;
        }
        Ok(())
    }
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Unchanged,
    Updated(Vec<Difference>),
}

fn subjects_text(subjects: &[String]) -> String {
    subjects.join(",")
}

fn limit_text(value: i64, format: impl Fn(u64) -> String) -> String {
    match u64::try_from(value) {
        Ok(v) if v > 0 => format(v),
        _ => "unlimited".to_owned(),
    }
}

fn age_text(age: Duration) -> String {
    if age.is_zero() {
        "unlimited".to_owned()
    } else {
        format_duration(age)
    }
}

/// Every way `existing` differs from what `spec` asks for, in a fixed
/// order. Subjects are compared as a set: their order means nothing.
pub fn differences(existing: &stream::Config, spec: &StreamSpec) -> Vec<Difference> {
    let wanted = spec.to_stream_config();
    let mut out = Vec::new();
    let mut differ = |field, setting, existing: String, configured: String, updatable| {
        out.push(Difference {
            field,
            setting,
            existing,
            configured,
            updatable,
        })
    };
    let have: BTreeSet<&String> = existing.subjects.iter().collect();
    let want: BTreeSet<&String> = wanted.subjects.iter().collect();
    if have != want {
        differ(
            "subjects",
            "SURGE_JS_SUBJECTS",
            subjects_text(&existing.subjects),
            subjects_text(&wanted.subjects),
            true,
        );
    }
    if existing.max_age != wanted.max_age {
        differ(
            "max_age",
            "SURGE_JS_MAX_AGE",
            age_text(existing.max_age),
            age_text(wanted.max_age),
            true,
        );
    }
    if existing.max_messages != wanted.max_messages {
        differ(
            "max_msgs",
            "SURGE_JS_MAX_MSGS",
            limit_text(existing.max_messages, |v| v.to_string()),
            limit_text(wanted.max_messages, |v| v.to_string()),
            true,
        );
    }
    if existing.max_bytes != wanted.max_bytes {
        differ(
            "max_bytes",
            "SURGE_JS_MAX_BYTES",
            limit_text(existing.max_bytes, format_bytes),
            limit_text(wanted.max_bytes, format_bytes),
            true,
        );
    }
    // The server reports 0 replicas for a stream created without the field.
    if existing.num_replicas.max(1) != wanted.num_replicas {
        differ(
            "replicas",
            "SURGE_JS_REPLICAS",
            existing.num_replicas.max(1).to_string(),
            wanted.num_replicas.to_string(),
            true,
        );
    }
    if existing.storage != wanted.storage {
        differ(
            "storage",
            "surge (always file storage)",
            format!("{:?}", existing.storage).to_lowercase(),
            "file".to_owned(),
            false,
        );
    }
    if existing.retention != wanted.retention {
        differ(
            "retention",
            "surge (every instance reads every message: limits retention)",
            format!("{:?}", existing.retention).to_lowercase(),
            "limits".to_owned(),
            false,
        );
    }
    out
}

/// Creates the stream, accepts a matching one, or refuses / updates a
/// different one (see the module doc).
pub async fn ensure(
    js: &Context,
    spec: &StreamSpec,
    allow_update: bool,
) -> Result<(stream::Stream, Ensured), NatsError> {
    let existing = match js.get_stream(&spec.name).await {
        Ok(stream) => stream,
        Err(e) => {
            if !is_not_found(&e) {
                return Err(NatsError::ReadStream {
                    stream: spec.name.clone(),
                    reason: e.to_string(),
                });
            }
            let created = js
                .create_stream(spec.to_stream_config())
                .await
                .map_err(|e| NatsError::CreateStream {
                    stream: spec.name.clone(),
                    reason: e.to_string(),
                })?;
            tracing::info!(stream = %spec.name, subjects = %subjects_text(&spec.subjects), "JetStream stream created");
            return Ok((created, Ensured::Created));
        }
    };
    let diffs = differences(&existing.cached_info().config, spec);
    if diffs.is_empty() {
        return Ok((existing, Ensured::Unchanged));
    }
    let fixed: Vec<Difference> = diffs.iter().filter(|d| !d.updatable).cloned().collect();
    if !fixed.is_empty() {
        return Err(NatsError::StreamImmutable {
            stream: spec.name.clone(),
            differences: fixed,
        });
    }
    if !allow_update {
        return Err(NatsError::StreamMismatch {
            stream: spec.name.clone(),
            differences: diffs,
        });
    }
    let config = spec.applied_to(&existing.cached_info().config);
    js.update_stream(config)
        .await
        .map_err(|e| NatsError::UpdateStream {
            stream: spec.name.clone(),
            reason: e.to_string(),
        })?;
    for d in &diffs {
        tracing::warn!(stream = %spec.name, field = d.field, from = %d.existing, to = %d.configured, "JetStream stream updated (SURGE_JS_UPDATE_STREAM=true)");
    }
    let updated = js
        .get_stream(&spec.name)
        .await
        .map_err(|e| NatsError::ReadStream {
            stream: spec.name.clone(),
            reason: e.to_string(),
        })?;
    Ok((updated, Ensured::Updated(diffs)))
}

/// The stream for a running bridge: as it is now, or created again from
/// the configuration when it is gone (a server that lost its store). A
/// stream that exists is used as it is: a running instance does not stop
/// delivering because another one changed the limits.
pub async fn current(js: &Context, spec: &StreamSpec) -> Result<stream::Stream, String> {
    match js.get_stream(&spec.name).await {
        Ok(stream) => Ok(stream),
        Err(e) if is_not_found(&e) => {
            tracing::warn!(stream = %spec.name, "the JetStream stream is gone; creating it again");
            ensure(js, spec, false)
                .await
                .map(|(stream, _)| stream)
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(format!("reading stream {}: {e}", spec.name)),
    }
}

fn is_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        GetStreamErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StreamSpec {
        StreamSpec::from_config(&Config::default())
    }

    #[test]
    fn the_configured_stream_has_no_differences_whatever_the_subject_order() {
        let mut existing = spec().to_stream_config();
        assert_eq!(differences(&existing, &spec()), vec![]);
        existing.subjects.reverse();
        assert_eq!(differences(&existing, &spec()), vec![]);
        existing.num_replicas = 0;
        assert_eq!(differences(&existing, &spec()), vec![]);
    }

    #[test]
    fn each_difference_is_named_with_both_values_and_the_setting() {
        let mut existing = spec().to_stream_config();
        existing.subjects = vec!["odin.token.>".into()];
        existing.max_messages = -1;
        existing.max_age = Duration::from_secs(60);
        existing.max_bytes = 1 << 20;
        existing.storage = StorageType::Memory;
        let diffs = differences(&existing, &spec());
        let text: Vec<String> = diffs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "subjects: the stream has odin.token.>, SURGE_JS_SUBJECTS asks for odin.token.>,odin.global.>",
                "max_age: the stream has 1m, SURGE_JS_MAX_AGE asks for 30s",
                "max_msgs: the stream has unlimited, SURGE_JS_MAX_MSGS asks for 100000",
                "max_bytes: the stream has 1MiB, SURGE_JS_MAX_BYTES asks for 50MiB",
                "storage: the stream has memory, surge (always file storage) asks for file (JetStream cannot change this on an existing stream)",
            ]
        );
        assert_eq!(diffs.iter().filter(|d| !d.updatable).count(), 1);
    }

    #[test]
    fn an_update_keeps_what_surge_does_not_manage() {
        let mut existing = spec().to_stream_config();
        existing.description = Some("owned by the odin team".into());
        existing.duplicate_window = Duration::from_secs(5);
        existing.max_messages = 7;
        let updated = spec().applied_to(&existing);
        assert_eq!(
            updated.description.as_deref(),
            Some("owned by the odin team")
        );
        assert_eq!(updated.duplicate_window, Duration::from_secs(5));
        assert_eq!(updated.max_messages, 100_000);
        assert_eq!(differences(&updated, &spec()), vec![]);
    }
}
