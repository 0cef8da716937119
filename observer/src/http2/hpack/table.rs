//! The static table (RFC 7541 Appendix A) and the dynamic table, which may be only partly
//! known: a connection joined after it started has entries nobody here saw inserted.
//!
//! Entries are inserted at the front and evicted from the back, so the entries inserted since
//! we joined are always the newest: they sit at known indexes, with known sizes, and the
//! unknown ones all lie behind them. An unknown entry never makes a known one's index or
//! eviction uncertain; only an insertion whose name or value is itself unknown does (its size
//! is unknown), and then the whole table is taken as unknown from there on.

use std::collections::VecDeque;

use super::{Error, Text};

/// RFC 7541 Appendix A, indexes 1 to 61.
#[rustfmt::skip]
pub const STATIC: [(&str, &str); 61] = [
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""), ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""), ("accept-ranges", ""), ("accept", ""), ("access-control-allow-origin", ""),
    ("age", ""), ("allow", ""), ("authorization", ""), ("cache-control", ""),
    ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""),
    ("from", ""), ("host", ""), ("if-match", ""), ("if-modified-since", ""),
    ("if-none-match", ""), ("if-range", ""), ("if-unmodified-since", ""), ("last-modified", ""),
    ("link", ""), ("location", ""), ("max-forwards", ""), ("proxy-authenticate", ""),
    ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
    ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
    ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""),
    ("www-authenticate", ""),
];

/// Bytes an entry counts for beyond its name and value (RFC 7541 4.1); also the smallest an
/// entry can be.
pub const ENTRY_OVERHEAD: usize = 32;

#[derive(Debug)]
struct Entry {
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

#[derive(Debug)]
pub struct Dynamic {
    /// Known entries, newest first.
    entries: VecDeque<Entry>,
    /// Sum of their sizes.
    size: usize,
    /// The table's maximum size in force (the last size update, or the initial 4,096).
    max: usize,
    /// Entries older than `entries` may exist that we never saw inserted.
    unknown_tail: bool,
}

/// A name and a value as an index finds them: `None` where held by an entry from before we
/// joined.
pub type Found<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

impl Dynamic {
    pub fn new(max: usize, joined_late: bool) -> Self {
        Dynamic { entries: VecDeque::new(), size: 0, max, unknown_tail: joined_late && max > 0 }
    }

    /// Entries known, and whether older unknown ones may exist.
    pub fn known(&self) -> (usize, bool) {
        (self.entries.len(), self.unknown_tail)
    }

    /// The name and value at `index` (1-based, static table first), borrowed.
    pub fn get_ref(&self, index: usize) -> Result<Found<'_>, Error> {
        if index == 0 {
            return Err(Error::Index(index));
        }
        if let Some((name, value)) = STATIC.get(index - 1) {
            return Ok((Some(name.as_bytes()), Some(value.as_bytes())));
        }
        match self.entries.get(index - STATIC.len() - 1) {
            Some(entry) => Ok((Some(&entry.name), Some(&entry.value))),
            None if self.unknown_tail => Ok((None, None)),
            None => Err(Error::Index(index)),
        }
    }

    /// Inserts a field at the front, evicting from the back what no longer fits.
    pub fn insert(&mut self, name: Text, value: Text) {
        let (Text::Known(name), Text::Known(value)) = (name, value) else {
            // Its size is unknown, so which older entries it evicted is too.
            self.entries.clear();
            self.size = 0;
            self.unknown_tail = true;
            return;
        };
        let entry = Entry { name, value };
        if entry.size() > self.max {
            // Larger than the table: the table is emptied (RFC 7541 4.4).
            self.entries.clear();
            self.size = 0;
            self.unknown_tail = false;
            return;
        }
        self.size += entry.size();
        self.entries.push_front(entry);
        self.evict();
    }

    /// A dynamic table size update.
    pub fn resize(&mut self, max: usize) {
        self.max = max;
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max {
            let Some(oldest) = self.entries.pop_back() else { break };
            self.size -= oldest.size();
            self.unknown_tail = false; // an unknown entry would have gone before this one
        }
        // No room left for even the smallest entry behind the known ones: none is there.
        if self.size + ENTRY_OVERHEAD > self.max {
            self.unknown_tail = false;
        }
    }
}
