//! Test support shared by the crates that run real nodes (feature `test-utils`): waiting
//! for events and exercising every kind of traffic between two nodes, checked byte for byte.
//! Everything here panics on failure, as a test should.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Event, EventStream, Node};

/// How long a helper waits for one step before failing the test.
pub const WAIT: Duration = Duration::from_secs(60);

/// Waits for the first event matching `f`, failing the test after [`WAIT`] (panics: test support).
pub async fn wait_for<T>(events: &mut EventStream, mut f: impl FnMut(Event) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        while let Some(e) = events.next().await {
            if let Some(t) = f(e) {
                return t;
            }
        }
        panic!("event stream ended");
    })
    .await
    .expect("timed out waiting for an event")
}

/// The next private message `events` reports, failing the test after [`WAIT`].
pub async fn next_message(events: &mut EventStream) -> super::ReceivedMessage {
    wait_for(events, |e| match e {
        Event::Message(m) => Some(m),
        _ => None,
    })
    .await
}

/// Exercises messages, a broadcast, a query and a stream between `a` and `b`, both ways.
pub async fn exchange_traffic(a: &Node, b: &Node, stream_bytes: usize) {
    for (x, y) in [(a, b), (b, a)] {
        let mut y_events = y.events();
        let pending = x
            .send_private(
                y.node_id(),
                "text/plain",
                format!("hello from {}", x.node_id()),
            )
            .await
            .unwrap();
        let id = pending.id();
        let got = wait_for(&mut y_events, |e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .await;
        assert_eq!(got.id, id);
        assert_eq!(got.from, x.node_id());
        assert_eq!(got.content_type, "text/plain");
        assert_eq!(
            got.content,
            format!("hello from {}", x.node_id()).as_bytes()
        );
        let delivered = tokio::time::timeout(WAIT, pending.confirmed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(delivered.id, id);
        assert_eq!(delivered.peer, y.node_id());

        let bid = x.broadcast("news", "text/plain", "extra!").unwrap();
        let b = wait_for(&mut y_events, |e| match e {
            Event::Broadcast(b) => Some(b),
            _ => None,
        })
        .await;
        assert_eq!(b.broadcast.id, bid);
        assert_eq!(b.broadcast.author, x.node_id());
        assert_eq!(b.broadcast.topic, "news");
        assert_eq!(&b.broadcast.content[..], b"extra!");

        // Query: answered by an application task on y.
        let responder = tokio::spawn(async move {
            let q = wait_for(&mut y_events, |e| match e {
                Event::Query(q) => Some(q),
                _ => None,
            })
            .await;
            assert_eq!(q.method, "echo");
            let mut body = q.body.to_vec();
            body.reverse();
            q.respond(body).unwrap();
        });
        let answer = x
            .query(y.node_id(), "echo", &b"abc"[..], Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(&answer[..], b"cba");
        responder.await.unwrap();
    }
    stream_both_ways(a, b, stream_bytes).await;
}

/// Streams `len` bytes a→b and b→a at once over one stream and checks every byte.
pub async fn stream_both_ways(a: &Node, b: &Node, len: usize) {
    let mut listener = b.listen_streams("bulk");
    let pattern = |i: usize| (i % 251) as u8;
    let server = tokio::spawn(async move {
        let stream = listener.accept().await.unwrap();
        let (mut send, mut recv) = stream.into_split();
        let writer = tokio::spawn(async move {
            write_pattern(&mut send, len).await;
            send.shutdown().await.unwrap();
        });
        let received = read_and_check(&mut recv, pattern).await;
        writer.await.unwrap();
        received
    });
    let stream = a.open_stream(b.node_id(), "bulk").await.unwrap();
    assert_eq!(stream.peer(), b.node_id());
    let (mut send, mut recv) = stream.into_split();
    let writer = tokio::spawn(async move {
        write_pattern(&mut send, len).await;
        send.shutdown().await.unwrap();
    });
    let received_by_a = read_and_check(&mut recv, pattern).await;
    writer.await.unwrap();
    let received_by_b = server.await.unwrap();
    assert_eq!(received_by_a, len);
    assert_eq!(received_by_b, len);
}

pub async fn write_pattern(w: &mut (impl tokio::io::AsyncWrite + Unpin), len: usize) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = buf.len().min(len - sent);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = ((sent + i) % 251) as u8;
        }
        w.write_all(&buf[..n]).await.unwrap();
        sent += n;
    }
}

pub async fn read_and_check(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    pattern: impl Fn(usize) -> u8,
) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return total;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(total + i), "byte {} corrupted", total + i);
        }
        total += n;
    }
}
