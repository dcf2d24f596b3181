//! Test harness: an authority in a temporary directory, on SQLite or on a real PostgreSQL,
//! and a small HTTP client.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::body::Body;
use http_body_util::BodyExt;
use hyper::{Request, StatusCode, header};
use meshara_authority::Authority;
use meshara_authority::config::Config;
use meshara_core::Identity;
use serde_json::Value;

pub const PASSPHRASE: &[u8] = b"test passphrase";

/// Which database a test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh PostgreSQL database URL, or `None` (with a note) when no server is configured.
/// `MESHARA_TEST_POSTGRES_URL` names a server URL whose user may create databases; with
/// `MESHARA_REQUIRE_POSTGRES=1` (the test command sets it) a missing server fails the test.
pub async fn postgres_url() -> Option<String> {
    let Ok(base) = std::env::var("MESHARA_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("MESHARA_REQUIRE_POSTGRES").is_err(),
            "MESHARA_REQUIRE_POSTGRES is set but MESHARA_TEST_POSTGRES_URL is not"
        );
        eprintln!("note: MESHARA_TEST_POSTGRES_URL unset; skipping the PostgreSQL run");
        return None;
    };
    sqlx::any::install_default_drivers();
    let mut nonce = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let name = format!("meshara_test_{}", data_encoding::HEXLOWER.encode(&nonce));
    let admin = sqlx::AnyPool::connect(&format!("{base}/postgres"))
        .await
        .expect("connecting to the test PostgreSQL");
    // `name` is hex digits we generated.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    Some(format!("{base}/{name}"))
}

/// An authority with three keys (2-of-3): k1 and k2 held by the server, k3 moved offline.
pub struct Harness {
    pub authority: Option<Authority>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub admin: String,
    pub offline: Identity,
    pub config: Config,
    /// The root set up at init (what nodes shipped before any rotation).
    pub first_root: meshara_core::proto::SignedMetadata,
}

impl Harness {
    pub async fn start(backend: Backend) -> Option<Harness> {
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(postgres_url().await?),
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let first_root = meshara_authority::keys::init(&data, 3, 2, PASSPHRASE, 365).unwrap();
        let offline_path = dir.path().join("k3.key");
        std::fs::rename(data.join("keys/k3.key"), &offline_path).unwrap();
        let offline = meshara_core::Keystore::new(&offline_path)
            .load(PASSPHRASE)
            .unwrap()
            .identity;
        let mut config = Config::with_data_dir(&data);
        config.http_listen = "127.0.0.1:0".parse().unwrap();
        config.node.quic_listen = "127.0.0.1:0".parse().unwrap();
        config.database_url = database_url;
        config.chunk_size = 64 * 1024;
        let authority = Authority::start(config.clone(), PASSPHRASE).await.unwrap();
        let addr = authority.http_addr();
        let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
        Some(Harness {
            authority: Some(authority),
            addr,
            dir,
            admin,
            offline,
            config,
            first_root,
        })
    }

    pub fn authority(&self) -> &Authority {
        self.authority.as_ref().unwrap()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        call(self.addr, method, path, token, body).await
    }

    /// Creates a token with `role` through the API.
    pub async fn token(&self, role: &str) -> String {
        let (status, v) = self
            .call(
                "POST",
                "/api/v1/tokens",
                Some(&self.admin),
                Some(serde_json::json!({"name": format!("a {role}"), "role": role})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    pub async fn upload(&self, token: &str, name: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let req = Request::put(format!("/api/v1/packages?name={name}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(body))
            .unwrap();
        send(self.addr, req).await
    }

    /// Stops the server, changes its configuration and starts it again on the same data.
    pub async fn restart_with(&mut self, change: impl FnOnce(&mut Config)) {
        self.stop().await;
        change(&mut self.config);
        let a = Authority::start(self.config.clone(), PASSPHRASE)
            .await
            .unwrap();
        self.addr = a.http_addr();
        self.authority = Some(a);
    }

    pub async fn stop(&mut self) {
        if let Some(a) = self.authority.take() {
            a.stop().await;
        }
    }
}

pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    send(addr, req).await
}

pub async fn send(addr: SocketAddr, mut req: Request<Body>) -> (StatusCode, Value) {
    let (status, bytes) = send_raw(addr, &mut req).await;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

pub async fn send_raw(addr: SocketAddr, req: &mut Request<Body>) -> (StatusCode, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    req.headers_mut()
        .insert(header::HOST, "authority.test".parse().unwrap());
    let req = std::mem::replace(req, Request::new(Body::empty()));
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, bytes)
}

pub fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x2545_f491_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

pub fn hash_file(path: &Path) -> String {
    data_encoding::HEXLOWER.encode(blake3::hash(&std::fs::read(path).unwrap()).as_bytes())
}
