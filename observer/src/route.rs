//! Endpoint labels: a request target becomes one of a bounded set of label values.

use std::collections::HashSet;

/// Label for everything past the cap.
pub const OVERFLOW: &str = "other";
/// Label for the path `/`.
pub const ROOT: &str = "root";

/// Classifies request targets by their first path segment, interning at most `cap` labels.
#[derive(Debug)]
pub struct Router {
    known: HashSet<&'static str>,
    cap: usize,
}

impl Router {
    pub fn new(cap: usize) -> Self {
        Router { known: HashSet::new(), cap }
    }

    /// The endpoint label of `target`, and whether it overflowed the cap.
    /// Labels are leaked into `&'static str`: at most `cap` of them ever exist.
    pub fn classify(&mut self, target: &str) -> (&'static str, bool) {
        let segment = first_segment(target);
        if segment.is_empty() {
            return (ROOT, false);
        }
        if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return (OVERFLOW, true);
        }
        if let Some(label) = self.known.get(segment) {
            return (label, false);
        }
        if self.known.len() >= self.cap {
            return (OVERFLOW, true);
        }
        let label: &'static str = Box::leak(segment.to_owned().into_boxed_str());
        self.known.insert(label);
        (label, false)
    }
}

/// First segment of the path, without query or fragment; absolute-form targets
/// (`http://host/path`) are reduced to their path.
fn first_segment(target: &str) -> &str {
    let path = match target.find("://") {
        Some(i) => target[i + 3..].find('/').map_or("", |j| &target[i + 3 + j..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.trim_start_matches('/').split('/').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_segment_is_the_label() {
        let mut r = Router::new(10);
        for (target, label) in [
            ("/boot/aa:bb:cc:dd:ee:ff", "boot"),
            ("/boot", "boot"),
            ("/images/debian.qcow2?token=secret", "images"),
            ("/", ROOT),
            ("/?q=1", ROOT),
            ("*", OVERFLOW),
            ("http://example.com/api/v1", "api"),
            ("http://example.com", ROOT),
            ("/%2e%2e/x", OVERFLOW),
        ] {
            assert_eq!(r.classify(target).0, label, "{target}");
        }
    }

    #[test]
    fn labels_are_capped() {
        let mut r = Router::new(3);
        let labels: HashSet<_> = (0..1000).map(|i| r.classify(&format!("/s{i}/x")).0).collect();
        assert_eq!(labels.len(), 4);
        assert!(labels.contains(OVERFLOW));
        assert_eq!(r.classify("/s1"), ("s1", false));
        assert_eq!(r.classify("/s999"), (OVERFLOW, true));
    }
}
