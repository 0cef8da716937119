//! Native (exponential) histograms as the daemon exposes them in Prometheus' protobuf format:
//! their bucket increases over an interval, and quantiles read from those, so `observer top`
//! shows latencies known within a bucket's width (~9 % at schema 3) at every scale.

use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::Histogram;

/// One native histogram's counts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Native {
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero: f64,
    /// (bucket index, count), ascending: bucket `i` holds (2^((i-1)/2^schema), 2^(i/2^schema)].
    pub buckets: Vec<(i32, f64)>,
}

/// Where a quantile lies: at a value, or only known to be below or above a bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantile {
    At(f64),
    Below(f64),
    Above(f64),
}

impl Quantile {
    /// A value to sort by.
    pub fn seconds(self) -> f64 {
        match self {
            Quantile::At(s) | Quantile::Below(s) | Quantile::Above(s) => s,
        }
    }
}

impl Native {
    /// The native part of a protobuf histogram; `None` for a classic-only one, or one that
    /// does not add up (spans longer than the deltas, indexes or counts out of range: a
    /// daemon `--url` points at is not trusted to be ours).
    pub fn of(h: &Histogram) -> Option<Native> {
        if h.positive_span.is_empty() && h.zero_threshold == 0.0 {
            return None;
        }
        if !(-4..=8).contains(&h.schema) {
            return None;
        }
        let mut buckets = Vec::with_capacity(h.positive_delta.len());
        let (mut deltas, mut index, mut count) = (h.positive_delta.iter(), 0i32, 0i64);
        for span in &h.positive_span {
            index = index.checked_add(span.offset)?;
            for _ in 0..span.length {
                count = count.checked_add(*deltas.next()?).filter(|c| *c >= 0)?;
                buckets.push((index, count as f64));
                index = index.checked_add(1)?;
            }
        }
        Some(Native {
            schema: h.schema,
            zero_threshold: h.zero_threshold,
            zero: h.zero_count as f64,
            buckets,
        })
    }

    /// What was added between `old` and `self`; `None` if the two cannot be compared (the
    /// schema changed). A reset (a restarted daemon) counts all of `self`.
    pub fn since(&self, old: Option<&Native>) -> Option<Native> {
        let Some(old) = old else { return Some(self.clone()) };
        if old.schema != self.schema || old.zero_threshold != self.zero_threshold {
            return None;
        }
        let was = |i: i32| old.buckets.binary_search_by_key(&i, |b| b.0).map_or(0.0, |at| old.buckets[at].1);
        let reset = self.zero < old.zero || self.buckets.iter().any(|&(i, n)| n < was(i));
        if reset {
            return Some(self.clone());
        }
        let buckets = self.buckets.iter().map(|&(i, n)| (i, n - was(i))).filter(|b| b.1 > 0.0).collect();
        Some(Native { buckets, zero: self.zero - old.zero, ..self.clone() })
    }

    /// The q-quantile, interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does; below the zero threshold when it falls in the zero bucket.
    pub fn quantile(&self, q: f64) -> Option<Quantile> {
        let total = self.zero + self.buckets.iter().map(|b| b.1).sum::<f64>();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        if rank <= self.zero {
            return Some(Quantile::Below(self.zero_threshold));
        }
        let mut seen = self.zero;
        for &(index, count) in &self.buckets {
            if seen + count >= rank {
                let (lower, upper) = (self.bound(index - 1), self.bound(index));
                let lower = lower.max(self.zero_threshold);
                return Some(Quantile::At(lower + (upper - lower) * (rank - seen) / count));
            }
            seen += count;
        }
        self.buckets.last().map(|&(index, _)| Quantile::At(self.bound(index)))
    }

    /// The upper bound of bucket `index`.
    fn bound(&self, index: i32) -> f64 {
        (f64::from(index) * (-f64::from(self.schema)).exp2()).exp2()
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::histogram::{Histogram as Recorder, NativeHistogramConfig};

    use super::*;
    use crate::metrics::{NATIVE_SCHEMA, NATIVE_ZERO_THRESHOLD};

    /// What the daemon's recorder exposes for `values`, decoded back.
    fn native_of(values: &[f64]) -> Native {
        let config = NativeHistogramConfig::with_schema(NATIVE_SCHEMA).zero_threshold(NATIVE_ZERO_THRESHOLD);
        let recorder = Recorder::new_classic_and_native([1.0], config);
        for &v in values {
            recorder.observe(v);
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("d", "d", recorder);
        let families = prometheus_client::encoding::prometheus_protobuf::encode(&registry).unwrap();
        Native::of(families[0].metric[0].histogram.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn quantiles_are_within_a_buckets_width_at_every_scale() {
        for scale in [20e-6, 2e-3, 1.5] {
            // 99 values spread ±20 % around the scale: the median is the scale.
            let values: Vec<f64> = (0..99).map(|i| scale * (0.8 + 0.4 * f64::from(i) / 98.0)).collect();
            let Some(Quantile::At(p50)) = native_of(&values).quantile(0.5) else { panic!() };
            assert!((p50 / scale - 1.0).abs() < 0.045, "{scale}: {p50}");
        }
    }

    #[test]
    fn histograms_that_do_not_add_up_are_refused_not_panicked_on() {
        use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::BucketSpan;
        let with = |schema, offset, length, positive_delta: Vec<i64>| Histogram {
            schema,
            positive_span: vec![BucketSpan { offset, length }],
            positive_delta,
            ..Default::default()
        };
        let bad = [
            with(3, 1, 3, vec![1]),                  // spans longer than the deltas
            with(3, i32::MAX, 2, vec![1, 1]),        // index past i32
            with(3, 0, 2, vec![i64::MAX, i64::MAX]), // count past i64
            with(3, 0, 1, vec![-5]),                 // a negative count
            with(99, 0, 1, vec![1]),                 // no such schema
        ];
        for h in &bad {
            assert_eq!(Native::of(h), None, "{h:?}");
        }
    }

    #[test]
    fn below_the_zero_threshold_is_said_so_and_increases_are_per_bucket() {
        let tiny = native_of(&[1e-9; 10]);
        assert_eq!(tiny.quantile(0.5), Some(Quantile::Below(NATIVE_ZERO_THRESHOLD)));
        let before = native_of(&[0.001; 10]);
        let mut values = vec![0.001; 10];
        values.extend([0.1; 30]);
        let now = native_of(&values);
        let added = now.since(Some(&before)).unwrap();
        let Some(Quantile::At(p50)) = added.quantile(0.5) else { panic!() };
        assert!((p50 / 0.1 - 1.0).abs() < 0.1, "{p50}");
        assert_eq!(added.buckets.iter().map(|b| b.1).sum::<f64>(), 30.0);
        assert_eq!(Native::default().quantile(0.5), None);
    }
}
