//! Generated protobuf types for the `meshara.v1` wire schema (`proto/meshara/v1/*.proto`).
//!
//! These are the raw wire structs. Decode untrusted bytes with [`crate::wire::decode_envelope`],
//! which enforces size limits and field validation, rather than with `prost::Message::decode`.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/meshara.v1.rs"));
