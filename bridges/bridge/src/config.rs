//! Configuration: a TOML file, then `MESHARA_BRIDGE_*` environment overrides, validated as a
//! whole before anything starts.
//!
//! ```toml
//! data_dir = "/var/lib/meshara-bridge"   # identity.key, i2p-destination.key, tor/
//! http_listen = "127.0.0.1:8700"         # /healthz, /readyz, /metrics
//!
//! [node]                                  # every NodeConfig key (meshara run's format)
//! listen_quic = "0.0.0.0:7340"            # the default, also when [node] omits it
//! advertise = ["quic://203.0.113.9:7340"] # public addresses (the I2P one is added)
//! bootstrap = ["quic://203.0.113.7:7340"]
//!
//! [node.bridge]                           # relay policy (enabled is implied)
//! allow = []                              # NodeIds allowed to open circuits; empty = anyone
//! max_circuits = 256
//! max_circuits_per_peer = 8
//! circuits_per_minute = 30
//! max_circuits_per_ip = 32                # per IPv4 address / IPv6 /64, any identities
//! circuits_per_minute_per_ip = 120
//! bytes_per_sec = 8388608
//!
//! [i2p]
//! enabled = true
//! sam = "127.0.0.1:7656"
//! session_options = ["inbound.length=3", "outbound.length=3"]
//!
//! [tor]                                   # embedded arti: no Tor daemon needed
//! enabled = true
//! port = 7340                             # the onion service's virtual port
//! [tor.arti]                              # optional: arti's own options (bridges, …)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meshara_core::{NodeConfig, NodeId, PeerAddr};
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

/// The bridge's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory: the node keystore and the I2P destination keys. Back it up: it holds
    /// the bridge's identity and its `.b32.i2p` address.
    pub data_dir: PathBuf,
    /// Health, readiness and metrics address.
    #[serde(default = "default_http")]
    pub http_listen: SocketAddr,
    /// The node: listeners, bootstrap peers, limits and `[node.bridge]` relay policy.
    #[serde(default = "default_node")]
    pub node: NodeConfig,
    /// The I2P side.
    #[serde(default)]
    pub i2p: I2pSection,
    /// The Tor side.
    #[serde(default)]
    pub tor: TorSection,
}

/// `[tor]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TorSection {
    /// Serve Tor peers: join Tor with the embedded client and host the bridge as an onion
    /// service (keys in `data_dir/tor/state`).
    pub enabled: bool,
    /// The onion service's virtual port, published with the `.onion` address.
    pub port: u16,
    /// arti's configuration, in arti's own format (`[tor.arti.bridges]`, `[tor.arti.
    /// tor_network]`, …); empty for the public Tor network. Its storage directories are
    /// always under `data_dir`.
    pub arti: meshara_tor::arti_config::TorClientConfigBuilder,
}

impl Default for TorSection {
    fn default() -> Self {
        Self {
            enabled: false,
            port: meshara_tor::DEFAULT_PORT,
            arti: Default::default(),
        }
    }
}

/// `[i2p]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct I2pSection {
    /// Serve I2P peers (needs a router with SAM enabled).
    pub enabled: bool,
    /// The router's SAM bridge.
    pub sam: SocketAddr,
    /// I2CP session options, `key=value`; empty for the router's defaults.
    pub session_options: Vec<String>,
    /// Port published with the `.b32.i2p` address.
    pub port: u16,
}

impl Default for I2pSection {
    fn default() -> Self {
        Self {
            enabled: false,
            sam: SocketAddr::from(([127, 0, 0, 1], 7656)),
            session_options: Vec::new(),
            port: meshara_i2p::DEFAULT_PORT,
        }
    }
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8700))
}

/// The bridge's QUIC port unless configured.
const DEFAULT_QUIC: &str = "0.0.0.0:7340";

fn default_node() -> NodeConfig {
    NodeConfig {
        listen_quic: DEFAULT_QUIC.parse().ok(),
        ..NodeConfig::default()
    }
}

impl Config {
    /// A configuration with defaults for `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            http_listen: default_http(),
            node: default_node(),
            i2p: I2pSection::default(),
            tor: TorSection::default(),
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
                let parse = |message: String| ConfigError::Parse {
                    path: path.to_owned(),
                    message,
                };
                let mut table =
                    toml::from_str::<toml::Table>(&text).map_err(|e| parse(e.to_string()))?;
                // A `[node]` table replaces the whole NodeConfig default, whose QUIC port is
                // random; a bridge listens on its well-known port unless told otherwise.
                if let Some(toml::Value::Table(node)) = table.get_mut("node") {
                    if !node.contains_key("listen_quic") && !node.contains_key("listen_tcp") {
                        node.insert("listen_quic".into(), DEFAULT_QUIC.into());
                    }
                }
                table
                    .try_into::<Config>()
                    .map_err(|e| parse(e.to_string()))?
            }
            None => Config::with_data_dir(""),
        };
        for (key, value) in env {
            let Some(name) = key.strip_prefix("MESHARA_BRIDGE_") else {
                continue;
            };
            let bad = |reason: &str| ConfigError::Invalid {
                key: key.clone(),
                reason: reason.to_owned(),
            };
            let list = |v: &str| -> Vec<String> {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            };
            let number = |v: &str| v.parse::<u64>().map_err(|_| bad("not a number"));
            let policy = &mut config.node.bridge;
            match name {
                "DATA_DIR" => config.data_dir = value.into(),
                "HTTP_LISTEN" => {
                    config.http_listen = value.parse().map_err(|_| bad("not an address"))?
                }
                "QUIC_LISTEN" => {
                    config.node.listen_quic =
                        Some(value.parse().map_err(|_| bad("not an address"))?)
                }
                "BOOTSTRAP" => {
                    config.node.bootstrap = list(&value)
                        .iter()
                        .map(|s| PeerAddr::from_config(s).map_err(|e| bad(&e.to_string())))
                        .collect::<Result<_, _>>()?
                }
                "IDENTITY_FILE" => {
                    config.node.identity_file = (!value.is_empty()).then(|| value.clone().into())
                }
                "ADVERTISE" => {
                    config.node.advertise = list(&value)
                        .iter()
                        .map(|s| {
                            s.parse::<PeerAddr>()
                                .map_err(|e| bad(&e.to_string()))
                                .and_then(|p| match p.node {
                                    None => Ok(p.address),
                                    Some(_) => Err(bad("an address, without a NodeId")),
                                })
                        })
                        .collect::<Result<_, _>>()?
                }
                "ALLOW" => {
                    policy.allow = list(&value)
                        .iter()
                        .map(|s| s.parse::<NodeId>().map_err(|_| bad("not a NodeId")))
                        .collect::<Result<_, _>>()?
                }
                "MAX_CIRCUITS" => policy.max_circuits = number(&value)? as usize,
                "MAX_CIRCUITS_PER_PEER" => policy.max_circuits_per_peer = number(&value)? as usize,
                "CIRCUITS_PER_MINUTE" => {
                    policy.circuits_per_minute =
                        u32::try_from(number(&value)?).map_err(|_| bad("too large"))?
                }
                "MAX_CIRCUITS_PER_IP" => policy.max_circuits_per_ip = number(&value)? as usize,
                "CIRCUITS_PER_MINUTE_PER_IP" => {
                    policy.circuits_per_minute_per_ip =
                        u32::try_from(number(&value)?).map_err(|_| bad("too large"))?
                }
                "BYTES_PER_SEC" => policy.bytes_per_sec = number(&value)?,
                "I2P_ENABLED" => {
                    config.i2p.enabled = value.parse().map_err(|_| bad("true or false"))?
                }
                "I2P_SAM" => config.i2p.sam = value.parse().map_err(|_| bad("not an address"))?,
                "TOR_ENABLED" => {
                    config.tor.enabled = value.parse().map_err(|_| bad("true or false"))?
                }
                "TOR_PORT" => config.tor.port = value.parse().map_err(|_| bad("not a port"))?,
                // Secrets and log settings are read where they are used.
                "PASSPHRASE" | "LOG" => {}
                _ => return Err(bad("unknown setting")),
            }
        }
        config.node.bridge.enabled = true;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_owned(),
            reason,
        };
        if self.data_dir.as_os_str().is_empty() {
            return Err(bad(
                "data_dir",
                "required (or MESHARA_BRIDGE_DATA_DIR)".into(),
            ));
        }
        if self.node.listen_quic.is_none() && self.node.listen_tcp.is_none() {
            return Err(bad(
                "node.listen_quic",
                "a bridge serves clearnet peers: set listen_quic or listen_tcp".into(),
            ));
        }
        if self.node.route_all_via.is_some() {
            return Err(bad(
                "node.route_all_via",
                "a bridge is the clearnet side; it cannot route everything through Tor or I2P"
                    .into(),
            ));
        }
        if !self.node.bridge.enabled {
            return Err(bad(
                "node.bridge.enabled",
                "a bridge relays circuits".into(),
            ));
        }
        if !self.i2p.enabled && !self.tor.enabled {
            return Err(bad(
                "i2p.enabled",
                "no overlay network is enabled; a bridge needs at least one (tor.enabled, \
                 i2p.enabled)"
                    .into(),
            ));
        }
        if self.i2p.port == 0 {
            return Err(bad("i2p.port", "must be 1..=65535".into()));
        }
        if self.tor.port == 0 {
            return Err(bad("tor.port", "must be 1..=65535".into()));
        }
        self.node.validate().map_err(|reason| bad("node", reason))?;
        Ok(())
    }

    /// The keystore holding the bridge's identity.
    pub fn keystore_path(&self) -> PathBuf {
        self.data_dir.join("identity.key")
    }
}

#[cfg(test)]
mod tests {
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
        let path = dir.path().join("bridge.toml");
        std::fs::write(
            &path,
            r#"
data_dir = "/var/lib/b"
[node]
listen_quic = "127.0.0.1:7400"
[node.bridge]
max_circuits = 10
[i2p]
enabled = true
sam = "127.0.0.1:7656"
"#,
        )
        .unwrap();
        let id = meshara_core::Identity::generate().node_id();
        let c = Config::load(
            Some(&path),
            env(&[
                ("MESHARA_BRIDGE_MAX_CIRCUITS_PER_PEER", "3"),
                ("MESHARA_BRIDGE_ALLOW", &format!("{id}, ")),
                ("MESHARA_BRIDGE_HTTP_LISTEN", "127.0.0.1:9999"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.node.bridge.max_circuits, 10);
        assert_eq!(c.node.bridge.max_circuits_per_peer, 3);
        assert_eq!(c.node.bridge.allow, vec![id]);
        assert!(c.node.bridge.enabled);
        assert_eq!(c.http_listen.port(), 9999);
        assert_eq!(c.keystore_path(), PathBuf::from("/var/lib/b/identity.key"));
        // A [node] table without listeners keeps the bridge's port.
        std::fs::write(
            &path,
            "data_dir = \"/d\"\n[node.bridge]\nmax_circuits = 2\n[i2p]\nenabled = true\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[("MESHARA_BRIDGE_ADVERTISE", "quic://203.0.113.9:7340")]),
        )
        .unwrap();
        assert_eq!(c.node.listen_quic, "0.0.0.0:7340".parse().ok());
        assert_eq!(c.node.bridge.max_circuits, 2);
        assert_eq!(c.node.advertise.len(), 1);
        // Tor alone is enough, and arti's own options pass through.
        std::fs::write(
            &path,
            "data_dir = \"/d\"\n[tor]\nenabled = true\nport = 7400\n\
             [tor.arti.address_filter]\nallow_local_addrs = true\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), env(&[])).unwrap();
        assert!(c.tor.enabled && !c.i2p.enabled);
        assert_eq!(c.tor.port, 7400);
        let c = Config::load(
            None,
            env(&[
                ("MESHARA_BRIDGE_DATA_DIR", "/d"),
                ("MESHARA_BRIDGE_TOR_ENABLED", "true"),
                ("MESHARA_BRIDGE_TOR_PORT", "7500"),
            ]),
        )
        .unwrap();
        assert_eq!(c.tor.port, 7500);
    }

    #[test]
    fn bad_values_name_the_key() {
        let base = [
            ("MESHARA_BRIDGE_DATA_DIR", "/d"),
            ("MESHARA_BRIDGE_I2P_ENABLED", "true"),
        ];
        for (k, v, needle) in [
            ("MESHARA_BRIDGE_MAX_CIRCUITS", "0", "max_circuits"),
            ("MESHARA_BRIDGE_BYTES_PER_SEC", "lots", "BYTES_PER_SEC"),
            ("MESHARA_BRIDGE_ALLOW", "nobody", "ALLOW"),
            ("MESHARA_BRIDGE_BOOTSTRAP", "nowhere", "BOOTSTRAP"),
            ("MESHARA_BRIDGE_COLOUR", "red", "COLOUR"),
            ("MESHARA_BRIDGE_I2P_ENABLED", "false", "i2p.enabled"),
            ("MESHARA_BRIDGE_TOR_PORT", "0", "tor.port"),
        ] {
            let mut vars = env(&base);
            vars.extend(env(&[(k, v)]));
            let e = Config::load(None, vars).unwrap_err().to_string();
            assert!(e.contains(needle), "{k}={v}: {e}");
        }
        let e = Config::load(None, env(&[])).unwrap_err().to_string();
        assert!(e.contains("data_dir"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(
            &path,
            "data_dir = \"/d\"\n[i2p]\nenabled = true\nsamm = 1\n",
        )
        .unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(e.contains("samm"), "{e}");
    }
}
