//! `surge_core::protocol::parse_request` on arbitrary text (the input bytes
//! decoded as UTF-8, invalid sequences replaced).
//!
//! Invariants: no panic; an `Err` carries a non-empty message and the
//! request's `id` when the text is a JSON object with one; an `Ok` comes
//! from a JSON object whose `type` names the request, echoes its `id`, and
//! survives a round trip: written back as JSON and parsed again it is the
//! same request.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use surge_core::protocol::{ClientRequest, ErrorCode, RequestKind, parse_request};

/// The request written back as the JSON a client would send.
fn to_json(request: &ClientRequest) -> Value {
    let mut obj = Map::new();
    if let Some(id) = &request.id {
        obj.insert("id".into(), id.clone());
    }
    let (kind, fields) = match &request.kind {
        RequestKind::Subscribe { channels } => ("subscribe", json!({ "channels": channels })),
        RequestKind::Unsubscribe { channels } => ("unsubscribe", json!({ "channels": channels })),
        RequestKind::Replay { from_seq, to_seq } => {
            ("replay", json!({ "from_seq": from_seq, "to_seq": to_seq }))
        }
        RequestKind::Ping => ("ping", json!({})),
        RequestKind::Resume {
            channels,
            since_sseq,
            epoch,
        } => {
            let mut fields = json!({ "channels": channels, "since_sseq": since_sseq });
            if let Some(epoch) = epoch {
                fields["epoch"] = json!(epoch);
            }
            ("resume", fields)
        }
        RequestKind::Refresh { token } => ("refresh", json!({ "token": token })),
    };
    obj.insert("type".into(), json!(kind));
    if let Value::Object(fields) = fields {
        obj.extend(fields);
    }
    Value::Object(obj)
}

fn kind_names(kind: &RequestKind) -> &'static [&'static str] {
    match kind {
        RequestKind::Subscribe { .. } => &["subscribe"],
        RequestKind::Unsubscribe { .. } => &["unsubscribe"],
        RequestKind::Replay { .. } => &["replay"],
        RequestKind::Ping => &["ping", "heartbeat"],
        RequestKind::Resume { .. } => &["resume"],
        RequestKind::Refresh { .. } => &["refresh"],
    }
}

/// Ids compare equal, floats within serde_json's best-effort parsing (its
/// default float parsing may be one unit in the last place off).
fn same_id(a: &Option<Value>, b: &Option<Value>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same_value(a, b),
        (a, b) => a == b,
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()) * 4.0
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        (a, b) => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed_json = serde_json::from_str::<Value>(&text).ok();
    match parse_request(&text) {
        Err(error) => {
            assert!(
                !error.message.trim().is_empty(),
                "error without a message: {error:?}"
            );
            match &parsed_json {
                None => {
                    assert_eq!(error.code, ErrorCode::InvalidJson);
                    assert_eq!(error.id, None);
                }
                Some(value) => {
                    assert_ne!(error.code, ErrorCode::InvalidJson);
                    assert_eq!(error.id, value.get("id").cloned(), "error lost the id");
                }
            }
            // The error becomes a server frame; it must encode.
            let frame = surge_core::protocol::ServerMessage::from(error).encode();
            let back: Value = serde_json::from_slice(&frame).expect("error frame is JSON");
            assert_eq!(back["type"], "error");
        }
        Ok(request) => {
            let value = parsed_json.expect("Ok for text that is not JSON");
            let obj = value
                .as_object()
                .expect("Ok for JSON that is not an object");
            let kind = obj
                .get("type")
                .and_then(Value::as_str)
                .expect("Ok without a type");
            assert!(
                kind_names(&request.kind).contains(&kind),
                "{kind} parsed as {request:?}"
            );
            assert_eq!(request.id, obj.get("id").cloned(), "id not echoed");
            if let RequestKind::Replay { from_seq, to_seq } = request.kind {
                assert_eq!(obj["from_seq"].as_u64(), Some(from_seq));
                assert_eq!(obj["to_seq"].as_u64(), Some(to_seq));
            }
            let written = to_json(&request).to_string();
            let again = parse_request(&written)
                .unwrap_or_else(|e| panic!("{written} no longer parses: {e:?}"));
            assert_eq!(again.kind, request.kind, "round trip through {written}");
            assert!(
                same_id(&again.id, &request.id),
                "id {:?} came back as {:?}",
                request.id,
                again.id
            );
        }
    }
});
