//! Wire encode/decode costs beside raw prost (results: docs/benchmarks.md).
//!
//! Run: `cargo bench -p meshara-core --bench codec`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use meshara_core::proto::{self, envelope::Body};
use meshara_core::wire::{self, FrameDecoder};
use prost::Message;

fn envelope(size: usize) -> proto::Envelope {
    proto::Envelope {
        version: wire::PROTOCOL_VERSION,
        body: Some(Body::Private(proto::PrivateEnvelope {
            recipient: Bytes::from(vec![7u8; 32]),
            hop_limit: 8,
            body: Some(proto::private_envelope::Body::Session(
                proto::SessionMessage {
                    session_index: 0x0102_0304_0506_0708,
                    counter: 42,
                    ciphertext: Bytes::from(vec![1u8; size + 17]),
                },
            )),
        })),
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for size in [1024usize, 10 * 1024] {
        let e = envelope(size);
        let encoded = Bytes::from(e.encode_to_vec());
        g.throughput(Throughput::Bytes(encoded.len() as u64));
        g.bench_with_input(BenchmarkId::new("raw prost encode", size), &e, |b, e| {
            b.iter(|| black_box(e).encode_to_vec())
        });
        g.bench_with_input(
            BenchmarkId::new("meshara encode_envelope (validated)", size),
            &e,
            |b, e| b.iter(|| wire::encode_envelope(black_box(e)).unwrap()),
        );
        g.bench_with_input(
            BenchmarkId::new("raw prost decode", size),
            &encoded,
            |b, bytes| b.iter(|| proto::Envelope::decode(black_box(bytes.clone())).unwrap()),
        );
        g.bench_with_input(
            BenchmarkId::new("meshara decode_envelope (validated)", size),
            &encoded,
            |b, bytes| {
                b.iter(|| {
                    wire::decode_envelope(black_box(bytes.clone()), wire::DEFAULT_MAX_FRAME_LEN)
                        .unwrap()
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("meshara frame+envelope encode then decode", size),
            &e,
            |b, e| {
                let mut decoder = FrameDecoder::default();
                let mut buf = BytesMut::with_capacity(16 * 1024);
                b.iter(|| {
                    wire::encode_envelope_frame(
                        black_box(e),
                        wire::DEFAULT_MAX_FRAME_LEN,
                        &mut buf,
                    )
                    .unwrap();
                    let frame = decoder.decode(&mut buf).unwrap().unwrap();
                    wire::decode_envelope(frame, wire::DEFAULT_MAX_FRAME_LEN).unwrap()
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = codec
}
criterion_main!(benches);
