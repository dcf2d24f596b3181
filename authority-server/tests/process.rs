//! The real `meshara-authority` binary: killed with SIGKILL in the middle of an upload, it
//! restarts with no partial package and every earlier package intact.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{PASSPHRASE, call, content, hash_file};
use hyper::StatusCode;
use tokio::io::AsyncWriteExt;

fn spawn(data: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshara-authority"))
        .arg("serve")
        .env("MESHARA_AUTHORITY_DATA_DIR", data)
        .env("MESHARA_AUTHORITY_HTTP_LISTEN", "127.0.0.1:0")
        .env("MESHARA_AUTHORITY_QUIC_LISTEN", "127.0.0.1:0")
        .env(
            "MESHARA_AUTHORITY_KEY_PASSPHRASE",
            std::str::from_utf8(PASSPHRASE).unwrap(),
        )
        .env("MESHARA_AUTHORITY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server printed its address")
            .unwrap();
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.trim_end_matches('/').parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_upload_restarts_with_no_partial_package() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    meshara_authority::keys::init(&data, 3, 2, PASSPHRASE, 365).unwrap();
    let (mut child, addr) = spawn(&data);
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();

    // Two complete packages first.
    let mut earlier = Vec::new();
    for seed in 0..2 {
        let req = hyper::Request::put(format!("/api/v1/packages?name=p{seed}"))
            .header(hyper::header::AUTHORIZATION, format!("Bearer {admin}"))
            .body(axum::body::Body::from(content(200_000, seed)))
            .unwrap();
        let (status, v) = common::send(addr, req).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        earlier.push(v["hash"].as_str().unwrap().to_owned());
    }

    // Then an upload that announces 8 MiB and sends 3 MiB, and a kill while it streams.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let total = 8 << 20;
    tcp.write_all(
        format!(
            "PUT /api/v1/packages?name=torn HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {admin}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tcp.write_all(&content(3 << 20, 9)).await.unwrap();
    tcp.flush().await.unwrap();
    let incoming = data.join("incoming");
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let written: u64 = std::fs::read_dir(&incoming)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            if written >= 1 << 20 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the upload reached the disk");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(tcp);
    assert!(
        std::fs::read_dir(&incoming).unwrap().count() > 0,
        "a torn upload was on disk"
    );

    // Restart: the torn upload is gone, the earlier packages are listed and intact.
    let (mut child, addr) = spawn(&data);
    assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), 0);
    let (status, list) = call(addr, "GET", "/api/v1/packages", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let mut listed: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["hash"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut expected = earlier.clone();
    expected.sort();
    assert_eq!(listed, expected);
    let mut files: Vec<String> = std::fs::read_dir(data.join("packages"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, expected);
    for h in &earlier {
        assert_eq!(&hash_file(&data.join("packages").join(h)), h);
    }
    // And it still works: SIGTERM stops it gracefully.
    assert_eq!(
        call(addr, "GET", "/readyz", None, None).await.0,
        StatusCode::OK
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "graceful shutdown exits 0: {status}");
}
