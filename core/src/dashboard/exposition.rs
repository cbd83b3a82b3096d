//! Reads the Prometheus / OpenMetrics text that `/metrics` serves back into
//! samples, so the dashboard's numbers are computed from exactly what a
//! Prometheus scrape sees (a renamed metric breaks both alike).
//!
//! Only the subset the gateway's encoder writes is read: `# ` comment
//! lines (HELP, TYPE, UNIT, EOF) are skipped, and each other line is
//! `name`, an optional `{label="value",…}` set with `\\`, `\"` and `\n`
//! escapes, one space, and a value (`+Inf`, `-Inf` and `NaN` included); an
//! optional timestamp after the value is ignored. Written here rather than
//! taken from a crate: the parsers on crates.io bring a date-time library
//! and regular expressions for these thirty lines, and none is kept up
//! with the OpenMetrics form the encoder writes.

use std::collections::BTreeSet;

/// One sample line: a series and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order written.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the series has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A line that is not a sample the parser understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

/// Every sample of one exposition, in the order written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Result<Exposition, ParseError> {
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |reason| ParseError {
                line: i + 1,
                reason,
                text: line.to_owned(),
            };
            samples.push(parse_line(line).map_err(fail)?);
        }
        Ok(Exposition { samples })
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The series named `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the series `name` that has every label of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name)
            .find(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .map(|s| s.value)
    }

    /// The sum over every series named `name` (0 when there is none).
    pub fn sum(&self, name: &str) -> f64 {
        self.series(name).map(|s| s.value).sum()
    }

    /// Every sample name (series names, with `_total`, `_bucket`, … as
    /// written).
    pub fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("invalid metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"").ok_or("label without =\"")?;
            if !valid_name(key) {
                return Err("invalid label name");
            }
            let (value, after) = unescape_until_quote(after).ok_or("unterminated label value")?;
            labels.push((key.to_owned(), value));
            rest = after;
        }
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ')
        .next()
        .ok_or("no value")?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse::<f64>().map_err(|_| "value is not a number")?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The label value up to its closing quote, unescaped, and what follows
/// the quote.
fn unescape_until_quote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP surge_connections Live WebSocket connections.
# TYPE surge_connections gauge
surge_connections 3
# TYPE surge_handshakes counter
surge_handshakes_total{outcome="accepted"} 7
surge_handshakes_total{outcome="timeout"} 1 1700000000
surge_handshake_duration_seconds_bucket{le="0.001"} 2
surge_handshake_duration_seconds_bucket{le="+Inf"} 8
surge_odd{a="x\"y\\z\n",b="",c="}"} -Inf
surge_cpu_percent 12.5
# EOF
"#;

    #[test]
    fn reads_every_sample_with_labels_escapes_and_special_values() {
        let e = Exposition::parse(TEXT).expect("parses");
        assert_eq!(e.samples().len(), 7);
        assert_eq!(e.value("surge_connections", &[]), Some(3.0));
        assert_eq!(
            e.value("surge_handshakes_total", &[("outcome", "timeout")]),
            Some(1.0)
        );
        assert_eq!(e.sum("surge_handshakes_total"), 8.0);
        assert_eq!(
            e.value("surge_handshake_duration_seconds_bucket", &[("le", "+Inf")]),
            Some(8.0)
        );
        let odd = e.series("surge_odd").next().expect("odd");
        assert_eq!(odd.label("a"), Some("x\"y\\z\n"));
        assert_eq!(odd.label("b"), Some(""));
        assert_eq!(odd.label("c"), Some("}"));
        assert_eq!(odd.value, f64::NEG_INFINITY);
        assert_eq!(e.value("surge_cpu_percent", &[]), Some(12.5));
        assert_eq!(e.value("surge_missing", &[]), None);
        assert_eq!(e.sum("surge_missing"), 0.0);
        assert!(e.names().contains("surge_handshakes_total"));
    }

    #[test]
    fn a_broken_line_is_an_error_naming_it() {
        for bad in [
            "surge_x",
            "surge_x{a=\"1\" 2",
            "surge_x{a=1} 2",
            "surge_x twelve",
            "9x 1",
        ] {
            let e = Exposition::parse(&format!("# TYPE x gauge\n{bad}\n")).expect_err(bad);
            assert_eq!(e.line, 2, "{bad}");
        }
    }
}
