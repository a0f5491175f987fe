//! The client's event-stream reading: whatever bytes a server (or a proxy) streams, in
//! whatever chunks they arrive, the client never panics, and the chunking changes
//! nothing: the same frames come out as from the bytes in one piece.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Stream {
    bytes: Vec<u8>,
    /// Where the bytes are cut into chunks (taken modulo their length).
    cuts: Vec<u16>,
}

fuzz_target!(|stream: Stream| {
    let whole = distributed_events_client::fuzzing::decode_stream(&[&stream.bytes]);
    let mut cuts: Vec<usize> = stream
        .cuts
        .iter()
        .map(|cut| usize::from(*cut) % (stream.bytes.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts {
        chunks.push(&stream.bytes[start..cut]);
        start = cut;
    }
    chunks.push(&stream.bytes[start..]);
    let chunked = distributed_events_client::fuzzing::decode_stream(&chunks);
    assert_eq!(whole, chunked, "the chunks {chunks:?} changed the frames");
});
