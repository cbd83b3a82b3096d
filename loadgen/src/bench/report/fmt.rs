//! How figures are written in the report.

use std::collections::BTreeMap;

pub fn int(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

pub fn ok(cond: bool) -> String {
    if cond { "met" } else { "NOT met" }.into()
}

pub fn bound(flag: bool) -> &'static str {
    if flag { " (loadgen-bound)" } else { "" }
}

pub fn fails(map: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k} {}", int(*v as f64)))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

pub fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("–".into(), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(int(0.0), "0");
        assert_eq!(int(999.4), "999");
        assert_eq!(int(10_000.0), "10,000");
        assert_eq!(int(1_234_567.0), "1,234,567");
        assert_eq!(int(-1_000.0), "-1,000");
    }
}
