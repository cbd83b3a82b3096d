//! Comparing a presented secret with the configured one, shared by the
//! admin endpoints and the dashboard's session.

/// Whether `presented` equals `expected`, in a time that depends on their
/// lengths only, not on how many leading bytes match.
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, &e) in expected.iter().enumerate() {
        diff |= e ^ presented.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(diff) == 0
}

/// The credentials of the one `Authorization: Bearer <token>` header
/// (scheme in any case) among `values`; `None` for none, several, or
/// another scheme.
pub fn bearer<'a>(
    mut values: impl Iterator<Item = &'a axum::http::HeaderValue>,
) -> Option<&'a str> {
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, credentials)| credentials.trim()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_bytes_and_length_match() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
