//! The static table (RFC 7541 Appendix A) and the dynamic table, which may be only partly
//! known: a connection joined after it started has entries nobody here saw inserted.
//!
//! Entries are inserted at the front and evicted from the back, so the entries inserted since
//! we joined are always the newest: they sit at known indexes, with known sizes, and the
//! unknown ones all lie behind them. An unknown entry never makes a known one's index or
//! eviction uncertain; only an insertion whose name or value is itself unknown does (its size
//! is unknown), and then the whole table is taken as unknown from there on.

use std::collections::VecDeque;

use super::Error;

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

/// A name and its value, in one buffer (name first).
#[derive(Debug)]
struct Entry {
    bytes: Vec<u8>,
    name_len: usize,
}

impl Entry {
    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

/// Evicted entries' buffers kept for the next insertions: a server that indexes a field in
/// every response (nginx's `date`) evicts one entry per insertion once the table is full,
/// and reusing their buffers spares an allocation and a free each time.
const SPARE_BUFFERS: usize = 2;

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
    spare: Vec<Vec<u8>>,
}

/// A name and a value as an index finds them: `None` where held by an entry from before we
/// joined.
pub type Found<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

impl Dynamic {
    pub fn new(max: usize, joined_late: bool) -> Self {
        Dynamic {
            entries: VecDeque::new(),
            size: 0,
            max,
            unknown_tail: joined_late && max > 0,
            spare: Vec::new(),
        }
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
            Some(entry) => {
                let (name, value) = entry.bytes.split_at(entry.name_len);
                Ok((Some(name), Some(value)))
            }
            None if self.unknown_tail => Ok((None, None)),
            None => Err(Error::Index(index)),
        }
    }

    /// Inserts a field whose name or value is unknown (held by an entry from before we
    /// joined): its size is unknown, so which older entries it evicted is too.
    pub fn insert_unknown(&mut self) {
        self.clear();
        self.unknown_tail = true;
    }

    /// Inserts a field at the front, evicting from the back what no longer fits.
    pub fn insert(&mut self, name: &[u8], value: &[u8]) {
        if name.len() + value.len() + ENTRY_OVERHEAD > self.max {
            // Larger than the table: the table is emptied (RFC 7541 4.4).
            self.clear();
            self.unknown_tail = false;
            return;
        }
        let mut bytes = self.spare.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        let entry = Entry { bytes, name_len: name.len() };
        self.size += entry.size();
        self.entries.push_front(entry);
        self.evict();
    }

    fn clear(&mut self) {
        while let Some(entry) = self.entries.pop_back() {
            self.keep_spare(entry);
        }
        self.size = 0;
    }

    fn keep_spare(&mut self, entry: Entry) {
        if self.spare.len() < SPARE_BUFFERS {
            self.spare.push(entry.bytes);
        }
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
            self.keep_spare(oldest);
            self.unknown_tail = false; // an unknown entry would have gone before this one
        }
        // No room left for even the smallest entry behind the known ones: none is there.
        if self.size + ENTRY_OVERHEAD > self.max {
            self.unknown_tail = false;
        }
    }
}
