//! Reads the daemon's exposition into samples: Prometheus' protobuf format (what `observer
//! top` asks for: it carries the native buckets), or text (an older daemon's).

use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::{Metric, MetricFamily};

use super::native::Native;

/// One sample line (text), or its equivalent from a protobuf `Metric`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// A histogram's native buckets: on the histogram's own name (its `_count` value).
    pub native: Option<Native>,
}

/// The samples of protobuf `families`, named as the text format names them (`_total`,
/// `_bucket{le}`, `_sum`, `_count`), plus each native histogram under its family's name.
pub fn from_families(families: &[MetricFamily]) -> Vec<Sample> {
    let mut samples = Vec::new();
    for family in families {
        for metric in &family.metric {
            push_metric(&family.name, metric, &mut samples);
        }
    }
    samples
}

fn push_metric(name: &str, metric: &Metric, out: &mut Vec<Sample>) {
    let labels: Vec<(String, String)> =
        metric.label.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
    let sample = |name: String, labels: Vec<(String, String)>, value: f64| Sample {
        name,
        labels,
        value,
        native: None,
    };
    if let Some(counter) = &metric.counter {
        out.push(sample(name.to_owned(), labels.clone(), counter.value));
    }
    if let Some(gauge) = &metric.gauge {
        out.push(sample(name.to_owned(), labels.clone(), gauge.value));
    }
    let Some(h) = &metric.histogram else { return };
    let count = h.sample_count as f64;
    for bucket in &h.bucket {
        let mut with_le = labels.clone();
        let le = if bucket.upper_bound.is_finite() { bucket.upper_bound.to_string() } else { "+Inf".into() };
        with_le.push(("le".into(), le));
        out.push(sample(format!("{name}_bucket"), with_le, bucket.cumulative_count as f64));
    }
    if h.bucket.last().is_none_or(|b| b.upper_bound.is_finite()) {
        let mut with_le = labels.clone();
        with_le.push(("le".into(), "+Inf".into()));
        out.push(sample(format!("{name}_bucket"), with_le, count));
    }
    out.push(sample(format!("{name}_sum"), labels.clone(), h.sample_sum));
    out.push(sample(format!("{name}_count"), labels.clone(), count));
    out.push(Sample { native: Native::of(h), ..sample(name.to_owned(), labels, count) });
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text`; comment lines and lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(inner) => parse_labels(inner)?,
        None => (Vec::new(), &line[name_end..]),
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name, labels, value, native: None })
}

/// `k="v",k2="v2"}` → the pairs and what follows the `}`. Values are unescaped (`\\`, `\"`,
/// `\n`).
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches(',');
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        s = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_values_and_escapes() {
        let text = "# HELP x y\nhttp_requests_total{endpoint=\"/a \\\"b\\\"\",status=\"200\"} 12\n\
                    up 1 1700000000\nh_bucket{le=\"+Inf\",endpoint=\"/x\"} 3\nbroken{a=\"1\" 2\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 3, "{samples:?}");
        assert_eq!(samples[0].name, "http_requests_total");
        assert_eq!(samples[0].label("endpoint"), Some("/a \"b\""));
        assert_eq!(samples[0].label("status"), Some("200"));
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[1], Sample { name: "up".into(), labels: vec![], value: 1.0, native: None });
        assert_eq!(samples[2].label("le"), Some("+Inf"));
    }
}
