//! A `meshara.status` answer as the explorer reads it (explorer/src/crawl.rs `decode_status`):
//! protobuf decode, the wire limits of `NodeStatus`, then the record inside. Never panics; what
//! passes the limits re-encodes and decodes to the same status.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshara_core::{NodeRecord, proto, wire};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if data.len() > 64 * 1024 {
        return;
    }
    let Ok(status) = proto::NodeStatus::decode(data) else {
        return;
    };
    if wire::validate_status(&status).is_err() {
        return;
    }
    assert!(status.topics.len() <= wire::MAX_STATUS_TOPICS);
    if let Some(r) = &status.record {
        let _ = NodeRecord::verify(r, 1_800_000_000);
    }
    let again = proto::NodeStatus::decode(status.encode_to_vec().as_slice()).expect("re-encodes");
    assert_eq!(again, status);
});
