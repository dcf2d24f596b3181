//! Configuration: a TOML file, then `MESHARA_EXPLORER_*` environment overrides, validated as
//! a whole before anything starts (the same rules as the authority server's).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// The explorer's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory: the SQLite database (by default), the node keystore, the node API token.
    pub data_dir: PathBuf,
    /// Web UI and JSON API address.
    #[serde(default = "default_http")]
    pub http_listen: SocketAddr,
    /// Database URL; default `sqlite://<data_dir>/explorer.db`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Days of crawl history, sessions and unseen nodes kept.
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// The crawler.
    #[serde(default)]
    pub crawl: CrawlSection,
    /// The explorer's own node.
    #[serde(default)]
    pub node: NodeSection,
    /// Releases to follow, for adoption charts.
    #[serde(default)]
    pub releases: ReleasesSection,
}

/// `[releases]`: releases an authority published, verified against its root, so the
/// explorer can show how many nodes run each one (nodes publish what they run in their
/// record's `agent`, `<package>/<version>`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasesSection {
    /// The authority's signed root (`root.pb`): the trust anchor. Without it no release is
    /// followed.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// NodeIds of authority nodes to ask.
    #[serde(default)]
    pub authorities: Vec<String>,
    /// `package/channel` pairs to follow.
    #[serde(default)]
    pub track: Vec<String>,
}

impl ReleasesSection {
    /// The tracked `(package, channel)` pairs.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.track
            .iter()
            .filter_map(|t| t.split_once('/'))
            .map(|(p, c)| (p.to_owned(), c.to_owned()))
            .collect()
    }

    /// The pinned authorities (NodeIds, or `file:PATH`; checked by [`Config::validate`]).
    pub fn authority_ids(&self) -> Vec<meshara_core::NodeId> {
        self.authorities
            .iter()
            .filter_map(|a| meshara_core::keyfile::resolve_node_id(a).ok())
            .collect()
    }
}

/// `[crawl]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrawlSection {
    /// Seconds between the start of one crawl and the next.
    pub interval_secs: u64,
    /// Nodes visited at once.
    pub concurrency: usize,
    /// Seconds allowed for a handshake with one address.
    pub connect_timeout_secs: u64,
    /// Seconds allowed for one node's whole visit (probes, status, routing table).
    pub visit_timeout_secs: u64,
    /// Most nodes one crawl considers (a bound on what a Sybil flood can cost).
    pub max_nodes: usize,
    /// Most routing-table requests (FindNode) sent to one node per crawl.
    pub max_requests_per_node: usize,
    /// Most nodes one node may introduce to a crawl (a bound per source on invented ids).
    pub max_new_per_source: usize,
    /// Lookups (`POST /api/v1/lookups`) running at once.
    pub max_lookups: usize,
}

impl Default for CrawlSection {
    fn default() -> Self {
        Self {
            interval_secs: 300,
            concurrency: 32,
            connect_timeout_secs: 5,
            visit_timeout_secs: 30,
            max_nodes: 100_000,
            max_requests_per_node: 32,
            max_new_per_source: 1024,
            max_lookups: 4,
        }
    }
}

impl CrawlSection {
    /// Between crawls.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// QUIC listen address of the explorer's node.
    #[serde(default = "default_quic")]
    pub quic_listen: SocketAddr,
    /// Where crawls start (`quic://host:port` or `nodeid@quic://host:port`). Give several:
    /// a busy bootstrap node may be at its connection cap. The explorer's node keeps no
    /// standing connections of its own.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Mount the node's HTTP API (`meshara_axum::routes`) at `/meshara`, behind a bearer
    /// token written to `<data_dir>/node-api.token`.
    #[serde(default = "yes")]
    pub api: bool,
    /// Host names (`name` or `name:port`) the node API answers to besides `localhost` and IP
    /// literals: the names the explorer is served under. Requests naming any other host (DNS
    /// rebinding) and browser requests from other sites are refused with 403.
    #[serde(default)]
    pub api_hosts: Vec<String>,
    /// Probe loopback, private and link-local addresses found in records: `true` always,
    /// `false` never, unset (the default) only on a network of that kind (the explorer listens
    /// on, or its seeds or a node it reached are, in such a range). Records can name any
    /// address; this keeps a hostile one from pointing the crawler at internal hosts.
    #[serde(default)]
    pub dial_private: Option<bool>,
    /// The node identity as an Ed25519 private key in PEM (a Kubernetes Secret), instead of
    /// the keystore `<data_dir>/node.key` (then no passphrase is needed).
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            quic_listen: default_quic(),
            bootstrap: Vec::new(),
            api: true,
            api_hosts: Vec::new(),
            dial_private: None,
            identity_file: None,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8800))
}
fn default_quic() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7800))
}
fn default_retention_days() -> u64 {
    30
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value.parse().map_err(|_| ConfigError::Invalid {
        key: key.to_owned(),
        reason: "not a number".to_owned(),
    })
}

impl Config {
    /// A configuration with defaults for `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            http_listen: default_http(),
            database_url: None,
            retention_days: default_retention_days(),
            crawl: CrawlSection::default(),
            node: NodeSection::default(),
            releases: ReleasesSection::default(),
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
            let Some(name) = key.strip_prefix("MESHARA_EXPLORER_") else {
                continue;
            };
            let bad = |reason: &str| ConfigError::Invalid {
                key: key.clone(),
                reason: reason.to_owned(),
            };
            let c = &mut config.crawl;
            match name {
                "DATA_DIR" => config.data_dir = value.into(),
                "IDENTITY_FILE" => config.node.identity_file = Some(value.into()),
                "HTTP_LISTEN" => {
                    config.http_listen = value.parse().map_err(|_| bad("not an address"))?
                }
                "DATABASE_URL" => config.database_url = Some(value),
                "RETENTION_DAYS" => config.retention_days = parse_number(&key, &value)?,
                "CRAWL_INTERVAL_SECS" => c.interval_secs = parse_number(&key, &value)?,
                "CRAWL_CONCURRENCY" => c.concurrency = parse_number(&key, &value)?,
                "CONNECT_TIMEOUT_SECS" => c.connect_timeout_secs = parse_number(&key, &value)?,
                "VISIT_TIMEOUT_SECS" => c.visit_timeout_secs = parse_number(&key, &value)?,
                "MAX_NODES" => c.max_nodes = parse_number(&key, &value)?,
                "MAX_LOOKUPS" => c.max_lookups = parse_number(&key, &value)?,
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
                "RELEASES_ROOT" => config.releases.root = Some(value.into()),
                "RELEASES_AUTHORITIES" => {
                    config.releases.authorities = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                }
                "RELEASES_TRACK" => {
                    config.releases.track = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                }
                "NODE_API_HOSTS" => {
                    config.node.api_hosts = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                }
                "NODE_API" => {
                    config.node.api = match value.as_str() {
                        "1" | "true" | "yes" => true,
                        "0" | "false" | "no" => false,
                        _ => return Err(bad("must be true or false")),
                    }
                }
                // Secrets and log settings are read where they are used.
                "PASSPHRASE" | "PASSPHRASE_FILE" | "LOG" => {}
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
            return Err(bad("data_dir", "required (or MESHARA_EXPLORER_DATA_DIR)"));
        }
        if let Some(url) = &self.database_url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres:")
                || url.starts_with("postgresql:"))
            {
                return Err(bad("database_url", "must start with sqlite: or postgres:"));
            }
        }
        if !(1..=3650).contains(&self.retention_days) {
            return Err(bad("retention_days", "must be 1..=3650"));
        }
        let c = &self.crawl;
        for (key, value, min, max) in [
            ("crawl.interval_secs", c.interval_secs, 1, 7 * 86_400),
            ("crawl.concurrency", c.concurrency as u64, 1, 1024),
            ("crawl.connect_timeout_secs", c.connect_timeout_secs, 1, 120),
            ("crawl.visit_timeout_secs", c.visit_timeout_secs, 1, 600),
            ("crawl.max_nodes", c.max_nodes as u64, 1, 10_000_000),
            (
                "crawl.max_requests_per_node",
                c.max_requests_per_node as u64,
                1,
                256,
            ),
            (
                "crawl.max_new_per_source",
                c.max_new_per_source as u64,
                1,
                1_000_000,
            ),
            ("crawl.max_lookups", c.max_lookups as u64, 1, 256),
        ] {
            if !(min..=max).contains(&value) {
                return Err(bad(key, &format!("must be {min}..={max}")));
            }
        }
        for b in &self.node.bootstrap {
            meshara_core::PeerAddr::from_config(b)
                .map_err(|e| bad("node.bootstrap", &format!("{b:?}: {e}")))?;
        }
        for a in &self.releases.authorities {
            meshara_core::keyfile::resolve_node_id(a)
                .map_err(|e| bad("releases.authorities", &format!("{a:?}: {e}")))?;
        }
        for t in &self.releases.track {
            let ok = t.split_once('/').is_some_and(|(p, c)| {
                !p.is_empty() && !c.is_empty() && p.len() <= 64 && c.len() <= 64
            });
            if !ok {
                return Err(bad(
                    "releases.track",
                    &format!("{t:?} is not package/channel"),
                ));
            }
        }
        if !self.releases.track.is_empty()
            && self.releases.root.is_none()
            && self.releases.authorities.is_empty()
        {
            return Err(bad(
                "releases.root",
                "required to follow releases (the authority's root.pb), unless \
                 releases.authorities pins an authority to take it from",
            ));
        }
        Ok(())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("explorer.db").display()
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
        let path = dir.path().join("e.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/e\"\n[crawl]\ninterval_secs = 60\n[node]\nquic_listen = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("MESHARA_EXPLORER_HTTP_LISTEN", "127.0.0.1:9100"),
                ("MESHARA_EXPLORER_CRAWL_CONCURRENCY", "8"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.crawl.interval_secs, 60);
        assert_eq!(c.crawl.concurrency, 8);
        assert_eq!(c.http_listen.port(), 9100);
        assert_eq!(c.node.quic_listen.port(), 9000);
        assert!(c.node.api);
        assert!(c.database_url().starts_with("sqlite:///srv/e/explorer.db"));
    }

    #[test]
    fn bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.toml");
        std::fs::write(&path, "data_dir = \"/srv\"\n[crawl]\nintervall_secs = 1\n").unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(e.contains("intervall_secs"), "{e}");
        for (k, v, needle) in [
            (
                "MESHARA_EXPLORER_CRAWL_CONCURRENCY",
                "0",
                "crawl.concurrency",
            ),
            ("MESHARA_EXPLORER_HTTP_LISTEN", "nowhere", "HTTP_LISTEN"),
            ("MESHARA_EXPLORER_DATABASE_URL", "mysql://x", "database_url"),
            ("MESHARA_EXPLORER_BOOTSTRAP", "not an address", "bootstrap"),
            ("MESHARA_EXPLORER_NODE_API", "maybe", "NODE_API"),
            ("MESHARA_EXPLORER_COLOUR", "red", "COLOUR"),
        ] {
            let e = Config::load(None, env(&[("MESHARA_EXPLORER_DATA_DIR", "/d"), (k, v)]))
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
