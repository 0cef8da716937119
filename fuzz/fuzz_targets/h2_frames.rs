//! The HTTP/2 frame reader over arbitrary bytes as the kernel records them (its walk modelled
//! by `KernelModel`): no panic, and the same frames however the bytes are split into calls
//! (the first input byte picks the split points), kept payloads within their bound and never
//! longer than the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use observer::http2::frames::{Frame, KernelModel, MAX_KEPT_PAYLOAD, Reader};

fn read(calls: &[&[u8]], client: bool) -> (Vec<Frame>, bool) {
    let (mut kernel, mut reader) =
        if client { (KernelModel::client(), Reader::client()) } else { (KernelModel::server(), Reader::server()) };
    let mut frames = Vec::new();
    for call in calls {
        let (kept, wire) = kernel.call(call);
        if reader.read(&kept, wire, &mut frames).is_err() {
            return (frames, false);
        }
    }
    (frames, true)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    let chunks: Vec<&[u8]> = bytes.chunks(step).collect();
    for client in [false, true] {
        let whole = read(&[bytes], client);
        assert_eq!(read(&chunks, client), whole, "split every {step} bytes");
        for frame in &whole.0 {
            // Kept whole up to the bound, or not kept at all (DATA and the like).
            assert!(frame.payload.is_empty() || frame.payload.len() == frame.len.min(MAX_KEPT_PAYLOAD));
            assert_eq!(frame.cut, frame.len > MAX_KEPT_PAYLOAD && !frame.payload.is_empty());
        }
    }
});
