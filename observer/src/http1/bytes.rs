//! The rest of one call's bytes, as far as they were captured: a cursor that the head
//! parser and the body decoder consume from.

use super::Moved;

/// A captured prefix (`seen`), bytes known only by count (`unseen`), then the captured tail.
/// Once the prefix and the gap are consumed, the tail becomes `seen`.
pub struct Bytes<'a> {
    pub seen: &'a [u8],
    pub unseen: u64,
    tail: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(moved: Moved<'a>) -> Self {
        let limit =
            |data: &'a [u8], max: u64| &data[..data.len().min(usize::try_from(max).unwrap_or(usize::MAX))];
        let seen = limit(moved.head, moved.len);
        let tail = limit(moved.tail, moved.len - seen.len() as u64);
        let unseen = moved.len - seen.len() as u64 - tail.len() as u64;
        let mut bytes = Bytes { seen, unseen, tail };
        bytes.promote_tail();
        bytes
    }

    pub fn len(&self) -> u64 {
        (self.seen.len() + self.tail.len()) as u64 + self.unseen
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn promote_tail(&mut self) {
        if self.seen.is_empty() && self.unseen == 0 {
            self.seen = std::mem::take(&mut self.tail);
        }
    }

    /// Drops up to `n` bytes from the front; returns how many were dropped.
    pub fn skip(&mut self, n: u64) -> u64 {
        let mut dropped = 0;
        while dropped < n && !self.is_empty() {
            let want = n - dropped;
            let from_seen = want.min(self.seen.len() as u64);
            self.seen = &self.seen[from_seen as usize..];
            let from_unseen = if self.seen.is_empty() { (want - from_seen).min(self.unseen) } else { 0 };
            self.unseen -= from_unseen;
            dropped += from_seen + from_unseen;
            self.promote_tail();
        }
        dropped
    }
}

/// Runs `step` and adds the bytes it consumed from `rest` to `counter`.
pub fn counted<R>(counter: &mut u64, rest: &mut Bytes<'_>, step: impl FnOnce(&mut Bytes<'_>) -> R) -> R {
    let before = rest.len();
    let result = step(rest);
    *counter += before - rest.len();
    result
}
