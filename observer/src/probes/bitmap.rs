//! The kernel's bitmaps (`TARGETS`, `PORTS`), mapped into this process and changed with
//! atomic operations.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};

use super::ProbeError;

/// A kernel bitmap (`TARGETS`: one bit per tgid; `PORTS`: one per TCP port), mapped into
/// this process. Bits are set and cleared with atomic operations, as the kernel programs set
/// them, so neither side can lose a bit the other wrote.
pub struct Bitmap {
    words: NonNull<AtomicU64>,
    len: u32,
    /// Keeps the map alive while it is mapped.
    _map: MapData,
}

impl Bitmap {
    pub fn map(ebpf: &mut Ebpf, name: &'static str, len: u32) -> Result<Self, ProbeError> {
        let Some(Map::Array(map)) = ebpf.take_map(name) else {
            return Err(ProbeError::MissingMap(name));
        };
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the array's values (a BPF_F_MMAPABLE array of `len`
        // u64s); unmapped in Drop, before the map's fd closes.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::bytes(len),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(ProbeError::MapBitmap(name, io::Error::last_os_error()));
        }
        let words = NonNull::new(at.cast::<AtomicU64>()).ok_or(ProbeError::MissingMap(name))?;
        Ok(Bitmap { words, len, _map: map })
    }

    fn bytes(len: u32) -> usize {
        len as usize * size_of::<u64>()
    }

    fn word(&self, (word, bit): (u32, u64)) -> Option<(&AtomicU64, u64)> {
        if word >= self.len {
            return None;
        }
        // SAFETY: in bounds (checked above) of the live mapping; u64s are 8-byte aligned.
        Some((unsafe { &*self.words.as_ptr().add(word as usize) }, bit))
    }

    /// Sets a bit; false if it is out of range.
    pub fn set(&self, at: (u32, u64)) -> bool {
        let Some((word, bit)) = self.word(at) else { return false };
        word.fetch_or(bit, Ordering::Relaxed);
        true
    }

    pub fn clear(&self, at: (u32, u64)) {
        if let Some((word, bit)) = self.word(at) {
            word.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// Every index whose bit is set.
    pub fn all(&self) -> Vec<u32> {
        // SAFETY: the whole live mapping, `len` u64s.
        let words = unsafe { std::slice::from_raw_parts(self.words.as_ptr(), self.len as usize) };
        words
            .iter()
            .enumerate()
            .flat_map(|(index, word)| pids_in_word(index as u32, word.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The tgids a bitmap word at `index` holds.
fn pids_in_word(index: u32, mut word: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        if word == 0 {
            return None;
        }
        let bit = word.trailing_zeros();
        word &= word - 1;
        Some(index * 64 + bit)
    })
}

impl Drop for Bitmap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, not used after this.
        unsafe { libc::munmap(self.words.as_ptr().cast(), Self::bytes(self.len)) };
    }
}

#[cfg(test)]
mod tests {
    use observer_common::target_bit;

    use super::*;

    #[test]
    fn a_bitmap_word_gives_back_the_pids_set_in_it() {
        for pid in [1u32, 63, 64, 4_194_303] {
            let (word, bit) = target_bit(pid);
            assert_eq!(pids_in_word(word, bit).collect::<Vec<_>>(), vec![pid]);
        }
        assert_eq!(pids_in_word(2, 0b1010_0001).collect::<Vec<_>>(), vec![128, 133, 135]);
        assert_eq!(pids_in_word(7, 0).count(), 0);
    }
}
