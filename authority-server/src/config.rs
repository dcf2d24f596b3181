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
    /// The authority node.
    #[serde(default)]
    pub node: NodeSection,
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// QUIC listen address of the authority node.
    #[serde(default = "default_quic")]
    pub quic_listen: SocketAddr,
    /// Peers to join (`quic://host:port` or `nodeid@quic://host:port`).
    #[serde(default)]
    pub bootstrap: Vec<String>,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            quic_listen: default_quic(),
            bootstrap: Vec::new(),
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
        for b in &self.node.bootstrap {
            b.parse::<meshara_core::PeerAddr>()
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
