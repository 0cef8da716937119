//! HPACK (RFC 7541) header block decoding, our own: the crates panic on bad input
//! (RUSTSEC-2023-0084/-0085), are private (h2's), and none can go on after a reference into
//! a table it never saw filled. Pure (bytes in, fields out), bounded, never panics.
//!
//! A connection joined after it started (`Decoder::joined_late`) decodes all that literals,
//! the static table and the entries inserted since allow; a reference into the unknown part
//! of the table yields `Text::Unknown` and decoding goes on (every representation says its
//! own length). An error leaves the table in an unknown state: the caller stops trusting the
//! direction.

mod huffman;
mod table;
#[cfg(test)]
mod tests;

use table::Dynamic;

/// The table size a connection starts with (SETTINGS_HEADER_TABLE_SIZE's default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// The largest table we keep for one direction of a connection: above it the direction is
/// not followed (servers advertise 4,096, some 65,536).
pub const MAX_TABLE_SIZE: usize = 64 << 10;

/// Most bytes of fields one block may decode to, counted as SETTINGS_MAX_HEADER_LIST_SIZE
/// counts them (name + value + 32 each). Fields beyond are decoded for the table's sake and
/// dropped (`Block::truncated`): a few bytes of indexes into a large entry must not become
/// megabytes (an HPACK bomb).
pub const MAX_LIST_SIZE: usize = 64 << 10;

/// A name or value: known, or held by a table entry inserted before we joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Known(Vec<u8>),
    Unknown,
}

impl Text {
    fn known(bytes: &[u8]) -> Self {
        Text::Known(bytes.to_vec())
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Text::Known(bytes) => Some(bytes),
            Text::Unknown => None,
        }
    }

    fn len(&self) -> usize {
        self.as_bytes().map_or(0, <[u8]>::len)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Text,
    pub value: Text,
}

/// One header block, decoded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Block {
    pub fields: Vec<Field>,
    /// Fields were dropped past `MAX_LIST_SIZE`.
    pub truncated: bool,
    /// Fields that referred to table entries inserted before we joined.
    pub unresolved: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("header block ends inside a representation")]
    Truncated,
    #[error("integer overflows")]
    Integer,
    #[error("index {0} is in no table")]
    Index(usize),
    #[error("invalid Huffman code")]
    Huffman,
    #[error("table size update to {size} above the limit {limit}")]
    TableSize { size: usize, limit: usize },
    #[error("table size update after a field")]
    LateTableSizeUpdate,
}

#[derive(Debug)]
pub struct Decoder {
    table: Dynamic,
    /// The name and value of the literal being indexed.
    name: Vec<u8>,
    value: Vec<u8>,
    /// The largest size an update may set: the decoding side's SETTINGS_HEADER_TABLE_SIZE.
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder for a direction seen from its first header block.
    pub fn new() -> Self {
        Decoder::with_table(Dynamic::new(DEFAULT_TABLE_SIZE, false))
    }

    /// A decoder for a direction whose earlier blocks were not seen: its table may hold
    /// entries we cannot know.
    pub fn joined_late() -> Self {
        Decoder::with_table(Dynamic::new(DEFAULT_TABLE_SIZE, true))
    }

    fn with_table(table: Dynamic) -> Self {
        Decoder { table, name: Vec::new(), value: Vec::new(), limit: DEFAULT_TABLE_SIZE }
    }

    /// The decoding side acknowledged a SETTINGS_HEADER_TABLE_SIZE of `size`: updates up to
    /// it (and `MAX_TABLE_SIZE`) are allowed from now on.
    pub fn set_limit(&mut self, size: usize) {
        self.limit = size;
    }

    /// Entries known in the dynamic table, and whether unknown older ones may be there.
    pub fn known_entries(&self) -> (usize, bool) {
        self.table.known()
    }

    /// Every field of `block`.
    pub fn decode(&mut self, block: &[u8]) -> Result<Block, Error> {
        self.decode_with(block, None)
    }

    /// The fields of `block` whose name `keep` accepts; fields whose name is unknown (held
    /// by an entry from before we joined) are only counted in `unresolved`. The others are
    /// decoded only as far as the table needs: an indexed field is not copied out, and the
    /// value of a literal that is not indexed is passed over, not Huffman-decoded (so an
    /// error inside it goes unnoticed). What following a stream costs per request: measured
    /// under h2load against nginx, decoding every field (nginx's `date`, Huffman-coded in
    /// each response; h2load's indexed request headers, copied out) took about half the
    /// daemon's time.
    pub fn decode_only(&mut self, block: &[u8], keep: &dyn Fn(&[u8]) -> bool) -> Result<Block, Error> {
        self.decode_with(block, Some(keep))
    }

    fn decode_with(&mut self, block: &[u8], keep: Option<Keep<'_>>) -> Result<Block, Error> {
        let wanted = |name: Option<&[u8]>| match (keep, name) {
            (None, _) => true,
            (Some(keep), Some(name)) => keep(name),
            (Some(_), None) => false,
        };
        let mut input = Input { bytes: block };
        let mut out = Block::default();
        let (mut list_size, mut fields_seen) = (0usize, false);
        while let Some(&first) = input.bytes.first() {
            let field = if first & 0x80 != 0 {
                // Indexed field (6.1).
                let (name, value) = self.table.get_ref(input.integer(7)?)?;
                if !wanted(name) {
                    fields_seen = true;
                    out.unresolved += usize::from(name.is_none());
                    continue;
                }
                let text = |t: Option<&[u8]>| t.map_or(Text::Unknown, Text::known);
                Field { name: text(name), value: text(value) }
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing (6.2.1): decoded whole, for the table, into
                // buffers reused from block to block; copied out only if wanted.
                let index = input.integer(6)?;
                let Decoder { table, name, value, .. } = self;
                let name_known = if index == 0 {
                    input.string_into(name)?;
                    true
                } else if let (Some(known), _) = table.get_ref(index)? {
                    name.clear();
                    name.extend_from_slice(known);
                    true
                } else {
                    false
                };
                input.string_into(value)?;
                let name = name_known.then_some(&name[..]);
                let kept = wanted(name).then(|| Field {
                    name: name.map_or(Text::Unknown, Text::known),
                    value: Text::known(value),
                });
                match name {
                    Some(name) => table.insert(name, value),
                    None => table.insert_unknown(),
                }
                if kept.is_none() && name.is_none() {
                    out.unresolved += 1;
                }
                let Some(field) = kept else {
                    fields_seen = true;
                    continue;
                };
                field
            } else if first & 0x20 != 0 {
                // Dynamic table size update (6.3): only before the block's first field.
                if fields_seen {
                    return Err(Error::LateTableSizeUpdate);
                }
                let size = input.integer(5)?;
                let limit = self.limit.min(MAX_TABLE_SIZE);
                if size > limit {
                    return Err(Error::TableSize { size, limit });
                }
                self.table.resize(size);
                continue;
            } else {
                // Literal without indexing (6.2.2) or never indexed (6.2.3).
                match self.literal(&mut input, 4, &|name| wanted(name))? {
                    Literal::Decoded(field) => field,
                    Literal::Skipped { name_known } => {
                        fields_seen = true;
                        out.unresolved += usize::from(!name_known);
                        continue;
                    }
                }
            };
            fields_seen = true;
            if field.name == Text::Unknown || field.value == Text::Unknown {
                out.unresolved += 1;
            }
            if !wanted(field.name.as_bytes()) {
                continue;
            }
            list_size += field.name.len() + field.value.len() + table::ENTRY_OVERHEAD;
            if list_size > MAX_LIST_SIZE {
                out.truncated = true;
            } else {
                out.fields.push(field);
            }
        }
        Ok(out)
    }

    /// A literal field whose name index has a `prefix`-bit prefix (0: a literal name
    /// follows). Its value is decoded if `wanted` accepts its name, else passed over.
    fn literal(
        &self,
        input: &mut Input<'_>,
        prefix: u8,
        wanted: &dyn Fn(Option<&[u8]>) -> bool,
    ) -> Result<Literal, Error> {
        let index = input.integer(prefix)?;
        let name = if index == 0 {
            Text::Known(input.string()?)
        } else {
            let (name, _) = self.table.get_ref(index)?;
            if !wanted(name) {
                input.skip_string()?;
                return Ok(Literal::Skipped { name_known: name.is_some() });
            }
            name.map_or(Text::Unknown, Text::known)
        };
        if !wanted(name.as_bytes()) {
            input.skip_string()?;
            return Ok(Literal::Skipped { name_known: true });
        }
        Ok(Literal::Decoded(Field { name, value: Text::Known(input.string()?) }))
    }
}

/// A literal field, decoded or passed over.
enum Literal {
    Decoded(Field),
    Skipped { name_known: bool },
}

/// Which fields a caller wants, by name.
type Keep<'a> = &'a dyn Fn(&[u8]) -> bool;

/// What is left of a header block.
struct Input<'a> {
    bytes: &'a [u8],
}

/// The largest integer we take (indexes, lengths and sizes never come near it).
const MAX_INTEGER: usize = u32::MAX as usize;

impl Input<'_> {
    fn byte(&mut self) -> Result<u8, Error> {
        let (&first, rest) = self.bytes.split_first().ok_or(Error::Truncated)?;
        self.bytes = rest;
        Ok(first)
    }

    /// An integer with an N-bit prefix (5.1), starting in the current byte.
    fn integer(&mut self, prefix: u8) -> Result<usize, Error> {
        let mask = (1u16 << prefix) as u8 - 1;
        let mut value = usize::from(self.byte()? & mask);
        if value < usize::from(mask) {
            return Ok(value);
        }
        let mut shift = 0u32;
        loop {
            let byte = self.byte()?;
            let add = usize::from(byte & 0x7f).checked_shl(shift).ok_or(Error::Integer)?;
            if shift > 28 || add >> shift != usize::from(byte & 0x7f) {
                return Err(Error::Integer);
            }
            value = value.checked_add(add).filter(|v| *v <= MAX_INTEGER).ok_or(Error::Integer)?;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// Passes over a string literal (5.2).
    fn skip_string(&mut self) -> Result<(), Error> {
        let len = self.integer(7)?;
        self.bytes = self.bytes.get(len..).ok_or(Error::Truncated)?;
        Ok(())
    }

    /// A string literal (5.2), Huffman-decoded if so marked.
    fn string(&mut self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.string_into(&mut out)?;
        Ok(out)
    }

    /// A string literal (5.2), Huffman-decoded if so marked, in place of `out`'s bytes.
    fn string_into(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let huffman = self.bytes.first().ok_or(Error::Truncated)? & 0x80 != 0;
        let len = self.integer(7)?;
        if len > self.bytes.len() {
            return Err(Error::Truncated);
        }
        let (raw, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        out.clear();
        if !huffman {
            out.extend_from_slice(raw);
            return Ok(());
        }
        out.reserve(len * 8 / 5);
        huffman::decode(raw, out)
    }
}
