//! Routing state machines, sans-IO: the Kademlia DHT ([`kad`]) and topic broadcast
//! ([`gossip`]).
//!
//! Nothing here touches a socket or a clock: inputs arrive through `handle_*` methods with the
//! current time, outputs leave as values the caller executes. The node runtime drives them over
//! QUIC; the simulator (`sim`, feature `test-utils`) drives thousands of them in virtual time
//! with the same code. Both are generic over the peer type, so the simulator uses small
//! integer ids and the node uses [`NodeId`](crate::NodeId)s.
//!
//! Why HyParView + Plumtree rather than a GossipSub mesh, and what each parameter buys, is in
//! `docs/architecture/routing.md`.

pub mod gossip;
pub mod kad;
#[cfg(feature = "test-utils")]
pub mod sim;
