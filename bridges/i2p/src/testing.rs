//! A real i2pd router on loopback for tests (feature `test-utils`): its own data directory,
//! free ports, no reseeding, no other routers (see `../shared/RECIPES.md`). Sessions on it
//! reach each other when created with [`LOCAL_SESSION_OPTIONS`].
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::client::{SamConnection, SamTimeouts};

/// Session options that make two sessions on one offline router reach each other: zero-hop
/// tunnels and the original LeaseSet (i2pd 2.45 fails local lookups of LeaseSet2).
pub const LOCAL_SESSION_OPTIONS: [&str; 4] = [
    "inbound.length=0",
    "outbound.length=0",
    "i2cp.leaseSetType=1",
    "i2cp.leaseSetEncType=0",
];

fn spawn(binary: &std::path::Path, dir: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(binary)
        .arg(format!("--datadir={}", dir.display()))
        .arg(format!("--conf={}", dir.join("i2pd.conf").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A running i2pd; killed on drop.
#[derive(Debug)]
pub struct I2pd {
    child: tokio::process::Child,
    /// The SAM bridge.
    pub sam: SocketAddr,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where i2pd is, if installed.
pub fn i2pd_binary() -> Option<PathBuf> {
    ["/usr/sbin/i2pd", "/usr/bin/i2pd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Whether tests that need i2pd must run (`MESHARA_REQUIRE_I2PD=1`, set by CI) rather than
/// skip on a machine without it.
pub fn required() -> bool {
    std::env::var("MESHARA_REQUIRE_I2PD").is_ok_and(|v| v == "1")
}

impl I2pd {
    /// Starts i2pd and waits (at most 60 s) until its SAM bridge answers `HELLO`. `None` when
    /// i2pd is not installed and not [`required`].
    pub async fn start() -> Option<Self> {
        let Some(binary) = i2pd_binary() else {
            assert!(
                !required(),
                "MESHARA_REQUIRE_I2PD=1 but i2pd is not installed"
            );
            eprintln!("SKIPPED: i2pd is not installed (apt-get install i2pd)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let sam_port = free_port();
        let ntcp_port = free_port();
        let conf = format!(
            "log = file\nlogfile = {log}\nloglevel = warn\ndaemon = false\nipv4 = true\n\
             ipv6 = false\nhost = 127.0.0.1\naddress4 = 127.0.0.1\nport = {ntcp_port}\nnat = false\n\
             netid = 77\nreservedrange = false\nfloodfill = true\n\
             [ntcp2]\nenabled = true\npublished = true\nport = {ntcp_port}\n\
             [ssu2]\nenabled = false\n[http]\nenabled = false\n[httpproxy]\nenabled = false\n\
             [socksproxy]\nenabled = false\n\
             [sam]\nenabled = true\nsinglethread = false\naddress = 127.0.0.1\nport = {sam_port}\n\
             [bob]\nenabled = false\n[i2cp]\nenabled = false\n[i2pcontrol]\nenabled = false\n\
             [upnp]\nenabled = false\n\
             [addressbook]\nenabled = true\ndefaulturl =\nsubscriptions =\n\
             [nettime]\nenabled = false\n\
             [reseed]\nverify = false\nthreshold = 0\nurls = https://127.0.0.1:9/\nyggurls =\n\
             [meshnets]\nyggdrasil = false\n\
             [exploratory]\ninbound.length = 0\noutbound.length = 0\n",
            log = dir.path().join("i2pd.log").display(),
        );
        std::fs::write(dir.path().join("i2pd.conf"), conf).unwrap();
        let sam: SocketAddr = format!("127.0.0.1:{sam_port}").parse().unwrap();
        let child = spawn(&binary, dir.path());
        let router = Self { child, sam, dir };
        router.wait_ready().await;
        Some(router)
    }

    async fn wait_ready(&self) {
        let sam = self.sam;
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if SamConnection::connect(sam, SamTimeouts::default())
                    .await
                    .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            ready.is_ok(),
            "i2pd's SAM bridge did not come up: {}",
            self.log()
        );
    }

    /// Kills the router and starts it again on the same data directory and ports (its
    /// sessions are gone; destinations come back only as their owners re-create them).
    pub async fn restart(&mut self) {
        let _ = self.child.kill().await;
        let binary = i2pd_binary().expect("i2pd was found before");
        self.child = spawn(&binary, self.dir.path());
        self.wait_ready().await;
    }

    /// The router's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("i2pd.log")).unwrap_or_default()
    }

    /// A transport configuration for this router with keys in `data_dir`.
    pub fn config(&self, data_dir: &std::path::Path) -> crate::I2pConfig {
        let mut c = crate::I2pConfig::new(self.sam, data_dir);
        c.session_options = LOCAL_SESSION_OPTIONS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        c
    }

    /// Stops the router.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
