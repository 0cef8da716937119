//! One `/metrics` text, read by metric name and labels.

/// One `/metrics` text, with lookups by metric name and labels.
pub struct Scrape(pub String);

impl Scrape {
    /// Sum of every sample named `name` whose labels include all of `labels`. A value ending
    /// in `*` matches by prefix (`("endpoint", "/images/*")`).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let has = |l: &str, k: &str, v: &str| match v.strip_suffix('*') {
            Some(prefix) => l.contains(&format!("{k}=\"{prefix}")),
            None => l.contains(&format!("{k}=\"{v}\"")),
        };
        self.samples(name).filter(|(l, _)| labels.iter().all(|(k, v)| has(l, k, v))).map(|(_, v)| v).sum()
    }

    /// `(labels, value)` of every sample named exactly `name`.
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0.lines().filter(|l| !l.starts_with('#')).filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            Some((labels, value.parse().ok()?))
        })
    }

    /// Distinct values of `label` across samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .samples(name)
            .filter_map(|(labels, _)| {
                let start = labels.find(&format!("{label}=\""))? + label.len() + 2;
                Some(labels[start..].split('"').next()?.to_owned())
            })
            .collect();
        values.sort();
        values.dedup();
        values
    }
}
