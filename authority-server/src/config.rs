//! Configuration: a TOML file, then `MESHARA_AUTHORITY_*` environment overrides, validated
//! as a whole before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key).
        message: String,
    },
    /// A value breaks its rule.
    #[error("invalid {key}: {reason}")]
    Invalid {
        /// The key (TOML path or environment variable).
        key: String,
        /// The rule.
        reason: String,
    },
}

/// Reads a keystore passphrase from `path`: the file's content without a trailing newline.
/// Refused when it is not a regular file, when other users may read or write it (mode
/// `o+rwx`: make it 0600 or 0640), or when it is empty.
pub fn read_passphrase_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use meshara_core::KeystoreError;
    meshara_core::keystore::read_passphrase_file(path).map_err(|e| match e {
        KeystoreError::Io { path, source } => ConfigError::Read { path, source },
        KeystoreError::EmptyPassphrase => ConfigError::Invalid {
            key: "passphrase_file".to_owned(),
            reason: format!("{}: empty", path.display()),
        },
        other => ConfigError::Invalid {
            key: "passphrase_file".to_owned(),
            reason: other.to_string(),
        },
    })
}

/// The server's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory: database (SQLite), packages, node keystore, root, keys.
    pub data_dir: PathBuf,
    /// Admin API and dashboard address.
    #[serde(default = "default_http")]
    pub http_listen: SocketAddr,
    /// Database URL; default `sqlite://<data_dir>/authority.db`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Largest package upload, in bytes.
    #[serde(default = "default_max_package")]
    pub max_package_bytes: u64,
    /// Days a release is valid for unless the draft says otherwise.
    #[serde(default = "default_expiry_days")]
    pub release_expiry_days: u64,
    /// Chunk size of new releases, in bytes.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u32,
    /// Most bytes all stored packages may take together; an upload that would pass it is
    /// refused with 507.
    #[serde(default = "default_storage_quota")]
    pub storage_quota_bytes: u64,
    /// A file holding the keystore passphrase (used when
    /// `MESHARA_AUTHORITY_KEY_PASSPHRASE` is unset); refused when other users may read it.
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    /// A file holding the first admin token (`mat_` and at least 32 more characters), used
    /// instead of a generated one when the server starts with no tokens at all (a Kubernetes
    /// Secret). Refused when other users may read it.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// The HTTP server's limits.
    #[serde(default)]
    pub http: HttpSection,
    /// How much of the public update check is recorded.
    #[serde(default)]
    pub query_log: QueryLogSection,
    /// The authority node.
    #[serde(default)]
    pub node: NodeSection,
}

/// `[http]`: timeouts and limits of the HTTP server (admin API, dashboard, update checks).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Seconds a client has to send a complete request head; the connection is closed
    /// after that.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may sit with no request running and no bytes moving before it is
    /// closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Open connections at most; more are answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections from one IP address at most; more are answered 503 and closed.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Largest request body of every route but the upload, in bytes (413 above).
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// Seconds to receive a whole request body of every route but the upload (408 after).
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
    /// Seconds an upload may take in all (408 after).
    #[serde(default = "default_upload_timeout")]
    pub upload_timeout_secs: u64,
    /// Seconds an upload may go without receiving a byte (408 after).
    #[serde(default = "default_upload_stall")]
    pub upload_stall_secs: u64,
    /// Uploads running at once at most; more are answered 429.
    #[serde(default = "default_max_uploads")]
    pub max_concurrent_uploads: usize,
    /// Reverse proxies whose `X-Forwarded-For` (its last address) names the client of an
    /// update check, for the query log's per-client budget. Empty: the TCP peer is the client,
    /// and the header is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: default_header_read_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            body_limit_bytes: default_body_limit(),
            body_timeout_secs: default_body_timeout(),
            upload_timeout_secs: default_upload_timeout(),
            upload_stall_secs: default_upload_stall(),
            max_concurrent_uploads: default_max_uploads(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[query_log]`: bounds on what the public update check writes to the database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryLogSection {
    /// Update checks recorded per client (IP address over HTTP, node id over Meshara) per
    /// window; more are answered but only counted in the metrics.
    #[serde(default = "default_per_client")]
    pub per_client: u32,
    /// The window, in seconds.
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// Clients tracked at once at most (the oldest windows are dropped first).
    #[serde(default = "default_tracked")]
    pub max_clients: usize,
}

impl Default for QueryLogSection {
    fn default() -> Self {
        Self {
            per_client: default_per_client(),
            window_secs: default_window(),
            max_clients: default_tracked(),
        }
    }
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// QUIC listen address of the authority node.
    #[serde(default = "default_quic")]
    pub quic_listen: SocketAddr,
    /// Peers to join (`quic://host:port`, `nodeid@quic://host:port`, or
    /// `file:PATH@quic://host:port` with the peer's certificate or public key in PATH).
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// The node identity as an Ed25519 private key in PEM (a Kubernetes Secret), instead of
    /// the keystore `<data_dir>/node.key`.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            quic_listen: default_quic(),
            bootstrap: Vec::new(),
            identity_file: None,
        }
    }
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8600))
}
fn default_quic() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7700))
}
fn default_max_package() -> u64 {
    1 << 30
}
fn default_expiry_days() -> u64 {
    90
}
fn default_chunk_size() -> u32 {
    256 * 1024
}
fn default_storage_quota() -> u64 {
    16 << 30
}
fn default_header_read_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_ip() -> usize {
    64
}
fn default_body_limit() -> usize {
    1 << 20
}
fn default_body_timeout() -> u64 {
    30
}
fn default_upload_timeout() -> u64 {
    3600
}
fn default_upload_stall() -> u64 {
    60
}
fn default_max_uploads() -> usize {
    4
}
fn default_per_client() -> u32 {
    30
}
fn default_window() -> u64 {
    60
}
fn default_tracked() -> usize {
    10_000
}

impl Config {
    /// A configuration with defaults for `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            http_listen: default_http(),
            database_url: None,
            max_package_bytes: default_max_package(),
            release_expiry_days: default_expiry_days(),
            chunk_size: default_chunk_size(),
            storage_quota_bytes: default_storage_quota(),
            passphrase_file: None,
            admin_token_file: None,
            http: HttpSection::default(),
            query_log: QueryLogSection::default(),
            node: NodeSection::default(),
        }
    }

    /// Reads `path` (if given), applies overrides from `env` (pairs of name and value, as
    /// from `std::env::vars()`), and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<Config>(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => Config::with_data_dir(""),
        };
        for (key, value) in env {
            let Some(name) = key.strip_prefix("MESHARA_AUTHORITY_") else {
                continue;
            };
            let bad = |reason: &str| ConfigError::Invalid {
                key: key.clone(),
                reason: reason.to_owned(),
            };
            match name {
                "DATA_DIR" => config.data_dir = value.into(),
                "HTTP_LISTEN" => {
                    config.http_listen = value.parse().map_err(|_| bad("not an address"))?
                }
                "DATABASE_URL" => config.database_url = Some(value),
                "MAX_PACKAGE_BYTES" => {
                    config.max_package_bytes = value.parse().map_err(|_| bad("not a number"))?
                }
                "RELEASE_EXPIRY_DAYS" => {
                    config.release_expiry_days = value.parse().map_err(|_| bad("not a number"))?
                }
                "CHUNK_SIZE" => {
                    config.chunk_size = value.parse().map_err(|_| bad("not a number"))?
                }
                "STORAGE_QUOTA_BYTES" => {
                    config.storage_quota_bytes = value.parse().map_err(|_| bad("not a number"))?
                }
                "KEY_PASSPHRASE_FILE" => config.passphrase_file = Some(value.into()),
                "ADMIN_TOKEN_FILE" => config.admin_token_file = Some(value.into()),
                "IDENTITY_FILE" => config.node.identity_file = Some(value.into()),
                "MAX_CONNECTIONS" => {
                    config.http.max_connections = value.parse().map_err(|_| bad("not a number"))?
                }
                "MAX_CONNECTIONS_PER_IP" => {
                    config.http.max_connections_per_ip =
                        value.parse().map_err(|_| bad("not a number"))?
                }
                "QUIC_LISTEN" => {
                    config.node.quic_listen = value.parse().map_err(|_| bad("not an address"))?
                }
                "BOOTSTRAP" => {
                    config.node.bootstrap = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                }
                // Secrets and log settings are read where they are used.
                "KEY_PASSPHRASE" | "LOG" => {}
                _ => return Err(bad("unknown setting")),
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        if self.data_dir.as_os_str().is_empty() {
            return Err(bad("data_dir", "required (or MESHARA_AUTHORITY_DATA_DIR)"));
        }
        if self.max_package_bytes == 0 {
            return Err(bad("max_package_bytes", "must be at least 1"));
        }
        let most = meshara_core::update::MAX_CHUNKS as u64
            * u64::from(meshara_core::update::MAX_CHUNK_SIZE);
        if self.max_package_bytes > most {
            return Err(bad(
                "max_package_bytes",
                &format!("at most {most} (the largest release)"),
            ));
        }
        if self.chunk_size == 0 || self.chunk_size > meshara_core::update::MAX_CHUNK_SIZE {
            return Err(bad(
                "chunk_size",
                &format!("must be 1..={}", meshara_core::update::MAX_CHUNK_SIZE),
            ));
        }
        let largest = meshara_core::update::MAX_CHUNKS as u64 * u64::from(self.chunk_size);
        if self.max_package_bytes > largest {
            return Err(bad(
                "max_package_bytes",
                &format!(
                    "at most {largest}: a release has at most {} chunks of chunk_size bytes",
                    meshara_core::update::MAX_CHUNKS
                ),
            ));
        }
        if self.release_expiry_days == 0 || self.release_expiry_days > 3650 {
            return Err(bad("release_expiry_days", "must be 1..=3650"));
        }
        if let Some(url) = &self.database_url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres:")
                || url.starts_with("postgresql:"))
            {
                return Err(bad("database_url", "must start with sqlite: or postgres:"));
            }
        }
        if self.storage_quota_bytes < self.max_package_bytes {
            return Err(bad(
                "storage_quota_bytes",
                "must be at least max_package_bytes",
            ));
        }
        let h = &self.http;
        for (key, secs) in [
            ("http.header_read_timeout_secs", h.header_read_timeout_secs),
            ("http.idle_timeout_secs", h.idle_timeout_secs),
            ("http.body_timeout_secs", h.body_timeout_secs),
            ("http.upload_timeout_secs", h.upload_timeout_secs),
            ("http.upload_stall_secs", h.upload_stall_secs),
            ("query_log.window_secs", self.query_log.window_secs),
        ] {
            if secs == 0 || secs > 86_400 {
                return Err(bad(key, "must be 1..=86400 seconds"));
            }
        }
        for (key, n) in [
            ("http.max_connections", h.max_connections),
            ("http.max_connections_per_ip", h.max_connections_per_ip),
            ("http.max_concurrent_uploads", h.max_concurrent_uploads),
            ("query_log.max_clients", self.query_log.max_clients),
        ] {
            if n == 0 || n > 1_000_000 {
                return Err(bad(key, "must be 1..=1000000"));
            }
        }
        if h.max_connections_per_ip > h.max_connections {
            return Err(bad(
                "http.max_connections_per_ip",
                "must be at most http.max_connections",
            ));
        }
        if h.body_limit_bytes < 1024 || h.body_limit_bytes > 64 << 20 {
            return Err(bad("http.body_limit_bytes", "must be 1024..=67108864"));
        }
        for b in &self.node.bootstrap {
            meshara_core::PeerAddr::from_config(b)
                .map_err(|e| bad("node.bootstrap", &format!("{b:?}: {e}")))?;
        }
        Ok(())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("authority.db").display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/a\"\nchunk_size = 65536\n[node]\nquic_listen = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("MESHARA_AUTHORITY_HTTP_LISTEN", "127.0.0.1:9100"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.chunk_size, 65536);
        assert_eq!(c.http_listen.port(), 9100);
        assert_eq!(c.node.quic_listen.port(), 9000);
        assert!(c.database_url().starts_with("sqlite:///srv/a/authority.db"));
    }

    #[test]
    fn limits_sections_parse_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv\"\nstorage_quota_bytes = 2147483648\npassphrase_file = \"/etc/p\"\n\
             [http]\nheader_read_timeout_secs = 5\nmax_connections = 100\n\
             trusted_proxies = [\"127.0.0.1\", \"::1\"]\n[query_log]\nper_client = 3\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), env(&[])).unwrap();
        assert_eq!(c.http.header_read_timeout_secs, 5);
        assert_eq!(c.http.idle_timeout_secs, 60, "defaults fill the rest");
        assert_eq!(c.http.trusted_proxies.len(), 2);
        assert_eq!(
            (c.query_log.per_client, c.storage_quota_bytes),
            (3, 2 << 30)
        );
        assert_eq!(c.passphrase_file.as_deref(), Some(Path::new("/etc/p")));
        for (toml, needle) in [
            (
                "[http]\nheader_read_timeout_secs = 0\n",
                "http.header_read_timeout_secs",
            ),
            (
                "[http]\nmax_connections = 10\nmax_connections_per_ip = 11\n",
                "per_ip",
            ),
            ("[http]\nbody_limit_bytes = 10\n", "http.body_limit_bytes"),
            ("storage_quota_bytes = 1\n", "storage_quota_bytes"),
            ("[query_log]\nwindow_secs = 0\n", "query_log.window_secs"),
        ] {
            std::fs::write(&path, format!("data_dir = \"/srv\"\n{toml}")).unwrap();
            let e = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
            assert!(e.contains(needle), "{toml}: {e}");
        }
    }

    #[test]
    fn passphrase_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        std::fs::write(&path, "secret words\r\n").unwrap();
        for (mode, ok) in [(0o600, true), (0o640, true), (0o604, false), (0o666, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match read_passphrase_file(&path) {
                Ok(p) => assert!(ok && p == b"secret words", "{mode:o}"),
                Err(e) => assert!(!ok && !e.to_string().contains("secret"), "{mode:o}: {e}"),
            }
        }
        std::fs::write(&path, "\n").unwrap();
        assert!(read_passphrase_file(&path).is_err(), "empty");
        assert!(read_passphrase_file(dir.path()).is_err(), "a directory");
    }

    #[test]
    fn bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "data_dir = \"/srv\"\nchunk_sise = 1\n").unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(e.contains("chunk_sise"), "{e}");
        for (k, v, needle) in [
            ("MESHARA_AUTHORITY_CHUNK_SIZE", "0", "chunk_size"),
            ("MESHARA_AUTHORITY_HTTP_LISTEN", "nowhere", "HTTP_LISTEN"),
            (
                "MESHARA_AUTHORITY_DATABASE_URL",
                "mysql://x",
                "database_url",
            ),
            ("MESHARA_AUTHORITY_BOOTSTRAP", "not an address", "bootstrap"),
            ("MESHARA_AUTHORITY_COLOUR", "red", "COLOUR"),
        ] {
            let e = Config::load(None, env(&[("MESHARA_AUTHORITY_DATA_DIR", "/d"), (k, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{k}: {e}");
        }
        assert!(
            Config::load(None, env(&[]))
                .unwrap_err()
                .to_string()
                .contains("data_dir")
        );
    }
}
