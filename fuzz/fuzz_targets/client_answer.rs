//! The client's answer decoding: whatever a server (or a proxy in between) answers, the
//! client reports an error and never panics.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Answer {
    status: u16,
    cursor: Option<String>,
    retry_after: Option<String>,
    body: String,
}

fuzz_target!(|answer: Answer| {
    distributed_events_client::fuzzing::decode_answer(
        answer.status,
        answer.cursor,
        answer.retry_after,
        answer.body,
    );
});
