"""values.schema.json of charts/meshara, written as Python so that its repeated parts (images,
probes, persistence, the binaries' configuration sections) are defined once.

    python3 tests/chart/schema.py            # rewrites charts/meshara/values.schema.json
    python3 tests/chart/check.py             # fails when the file and this script disagree

Every object refuses unknown keys (additionalProperties: false), except those that are
Kubernetes objects passed through as they are (affinity, tolerations, nodeSelector, topology
spread constraints, NetworkPolicy peers and rules, extra environment variables' valueFrom) and
arti's own configuration (bridge.config.tor.arti), which Kubernetes and arti validate.
The numeric rules of the binaries' configuration keys mirror their Rust validation
(meshara-core/src/net/config.rs, authority-server/src/config.rs, explorer/src/config.rs,
bridges/bridge/src/config.rs); the binaries' `--check` remains the authority on them.
"""

import json
import pathlib
import sys

SCHEMA_PATH = pathlib.Path(__file__).resolve().parents[2] / "charts/meshara/values.schema.json"


def obj(properties, required=(), description=None, extra=None):
    o = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        o["required"] = list(required)
    if description:
        o["description"] = description
    if extra:
        o.update(extra)
    return o


def string(description=None, **kw):
    s = {"type": "string", **kw}
    if description:
        s["description"] = description
    return s


def integer(minimum=None, maximum=None, description=None):
    s = {"type": "integer"}
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    if description:
        s["description"] = description
    return s


def number(exclusive_minimum=None, minimum=None, description=None):
    s = {"type": "number"}
    if exclusive_minimum is not None:
        s["exclusiveMinimum"] = exclusive_minimum
    if minimum is not None:
        s["minimum"] = minimum
    if description:
        s["description"] = description
    return s


BOOL = {"type": "boolean"}
PORT = integer(1, 65535)
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
K8S_OBJECT = {"type": "object", "description": "a Kubernetes object, passed through"}
K8S_LIST = {"type": "array", "items": {"type": "object"}, "description": "Kubernetes objects, passed through"}
STRINGS = {"type": "array", "items": {"type": "string"}}
QUANTITY = {
    "anyOf": [
        {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"},
        {"type": "integer", "minimum": 0},
        {"type": "number", "minimum": 0},
    ],
    "description": "a resource quantity (no sign)",
}
SIZE = string(pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$", description="a storage size, e.g. 1Gi")
PACKAGE_CHANNEL = string(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}/[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A peer: [<nodeid>|file:/path@]<scheme>://host:port.
PEER = string(pattern=r"^([^@\s]+@)?(quic|tcp|tor|i2p)://\S+:[0-9]{1,5}$")
# A NodeId (text) or file:/path standing for one.
NODE_REF = string(pattern=r"^(file:/\S+|[A-Za-z0-9]+)$")
ADVERTISED = string(pattern=r"^(quic|tcp)://(\[[0-9A-Fa-f:.]+\]|[0-9.]+):[0-9]{1,5}$",
                    description="an address with an IP literal (quic:// or tcp://)")

RESOURCE_LIST = obj({"cpu": QUANTITY, "memory": QUANTITY, "ephemeral-storage": QUANTITY})
RESOURCES = obj({"requests": RESOURCE_LIST, "limits": RESOURCE_LIST})


def image(repository):
    return obj({
        "repository": string(minLength=1),
        "tag": string(),
        "digest": string(pattern=r"^(sha256:[0-9a-f]{64})?$"),
        "pullPolicy": string(enum=["Always", "IfNotPresent", "Never"]),
    })


def probe(success_max=1):
    return obj({
        "enabled": BOOL,
        "initialDelaySeconds": integer(0),
        "periodSeconds": integer(1),
        "timeoutSeconds": integer(1),
        "failureThreshold": integer(1),
        "successThreshold": integer(1, success_max),
    })


def persistence():
    return obj({
        "enabled": BOOL,
        "storageClass": string(),
        "accessModes": {"type": "array", "minItems": 1, "items": string(
            enum=["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"])},
        "size": SIZE,
        "annotations": STRING_MAP,
    })


def pdb():
    return obj({
        "create": BOOL,
        "minAvailable": {"anyOf": [integer(0), string(pattern=r"^([0-9]+%?)?$")]},
        "maxUnavailable": {"anyOf": [integer(0), string(pattern=r"^[0-9]+%?$")]},
    })


EXTRA_ENV = {"type": "array", "items": obj({
    "name": string(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
    "value": string(),
    "valueFrom": K8S_OBJECT,
}, required=["name"])}


def pod_extras():
    return {
        "podAnnotations": STRING_MAP,
        "podLabels": STRING_MAP,
        "nodeSelector": STRING_MAP,
        "tolerations": K8S_LIST,
        "affinity": K8S_OBJECT,
        "topologySpreadConstraints": K8S_LIST,
        "priorityClassName": string(),
        "terminationGracePeriodSeconds": integer(0),
        "extraEnv": EXTRA_ENV,
    }


def probes():
    return {"livenessProbe": probe(), "readinessProbe": probe(None), "startupProbe": probe()}


def external_service():
    return obj({
        "enabled": BOOL,
        "type": string(enum=["LoadBalancer", "NodePort"]),
        "annotations": STRING_MAP,
        "externalTrafficPolicy": string(enum=["Local", "Cluster"]),
        "loadBalancerClass": string(),
        "loadBalancerSourceRanges": {"type": "array", "items": string(pattern=r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$")},
    })


def ingress():
    return obj({
        "enabled": BOOL,
        "className": string(),
        "annotations": STRING_MAP,
        "hosts": {"type": "array", "items": obj({
            "host": string(pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
            "paths": {"type": "array", "minItems": 1, "items": obj({
                "path": string(pattern=r"^/"),
                "pathType": string(enum=["Prefix", "Exact", "ImplementationSpecific"]),
            }, required=["path", "pathType"])},
        }, required=["host", "paths"])},
        "tls": {"type": "array", "items": obj({
            "secretName": string(),
            "hosts": STRINGS,
        })},
    })


def database(component):
    return obj({
        "type": string(enum=["sqlite", "postgresql"]),
        "url": string(pattern=r"^(postgres(ql)?://.*)?$",
                      description=f"PostgreSQL URL for the {component}"),
        "existingSecret": string(),
        "existingSecretKey": string(minLength=1),
    })


def secret_ref(default_key):
    return obj({"existingSecret": string(), "existingSecretKey": string(minLength=1)})


# meshara-core/src/net/config.rs: Limits, Timeouts, Onion, Bridge.
LIMITS = obj({
    **{k: integer(1) for k in [
        "max_connections", "max_connections_per_ip", "max_connections_per_peer",
        "max_pending_handshakes", "max_pending_stream_handshakes", "max_pending_handshakes_per_ip",
        "peer_verifications_per_sec", "peer_verification_burst", "max_pending_ack_senders",
        "peer_messages_per_sec", "peer_bytes_per_sec", "peer_violations_before_disconnect",
        "max_message_len", "connection_queue_bytes", "max_outbox", "max_pending_queries",
        "max_inbound_queries", "event_buffer", "max_records", "max_streams_per_connection",
        "max_topics", "mailbox_messages", "mailbox_per_recipient", "mailbox_bytes"]},
    "handshakes_before_retry": integer(0),
    "max_frame_len": integer(16384, 16 << 20),
})
TIMEOUTS = obj({
    **{k: number(exclusive_minimum=0) for k in [
        "connect", "inbound_handshake", "keepalive", "idle", "ack", "delivery", "query",
        "reconnect_min", "reconnect_max", "peer_exchange", "mailbox"]},
    "max_attempts": integer(1),
}, description="seconds (integer or fractional)")
ONION = obj({
    "relay": BOOL,
    "hops": integer(3, 4),
    "circuit_lifetime": number(minimum=0),
    "circuit_packets": integer(1),
    "cover_interval": number(minimum=0),
    "replay_cache": integer(1),
    "max_forwards": integer(1),
})
BRIDGE_POLICY_KEYS = {
    "allow": {"type": "array", "items": NODE_REF},
    "max_circuits": integer(1),
    "max_circuits_per_peer": integer(1),
    "circuits_per_minute": integer(1),
    "max_circuits_per_ip": integer(1),
    "circuits_per_minute_per_ip": integer(1),
    "bytes_per_sec": integer(1),
}
NODE_COMMON = {
    "target_peers": integer(0),
    "agent": string(maxLength=255),
    "unlisted": BOOL,
    "limits": LIMITS,
    "timeouts": TIMEOUTS,
    "onion": ONION,
}
SEED_NODE = obj({**NODE_COMMON, "bridge": obj({"enabled": BOOL, **BRIDGE_POLICY_KEYS})},
                description="[node] keys of meshara run (NodeConfig); the chart sets listeners, "
                            "advertise, bootstrap, mdns, data_dir, dial_private")
BRIDGE_NODE = obj({**NODE_COMMON, "bridge": obj(BRIDGE_POLICY_KEYS)},
                  description="[node] keys of meshara-bridge (NodeConfig; bridge.enabled is implied)")

SECONDS = integer(1, 86400)
MILLION = integer(1, 1_000_000)
AUTHORITY_CONFIG = obj({
    "max_package_bytes": integer(1, 8589934592),
    "release_expiry_days": integer(1, 3650),
    "chunk_size": integer(1, 524288),
    "storage_quota_bytes": integer(1),
    "http": obj({
        "header_read_timeout_secs": SECONDS,
        "idle_timeout_secs": SECONDS,
        "max_connections": MILLION,
        "max_connections_per_ip": MILLION,
        "body_limit_bytes": integer(1024, 67108864),
        "body_timeout_secs": SECONDS,
        "upload_timeout_secs": SECONDS,
        "upload_stall_secs": SECONDS,
        "max_concurrent_uploads": MILLION,
        "trusted_proxies": {"type": "array", "items": string(pattern=r"^[0-9A-Fa-f:.]+$")},
    }),
    "query_log": obj({"per_client": MILLION, "window_secs": SECONDS, "max_clients": MILLION}),
}, description="authority-server/src/config.rs; the chart sets data_dir, http_listen, passphrase_file, "
               "admin_token_file, database_url and [node]")
EXPLORER_CONFIG = obj({
    "retention_days": integer(1, 3650),
    "crawl": obj({
        "interval_secs": integer(1, 7 * 86400),
        "concurrency": integer(1, 1024),
        "connect_timeout_secs": integer(1, 120),
        "visit_timeout_secs": integer(1, 600),
        "max_nodes": integer(1, 10_000_000),
        "max_requests_per_node": integer(1, 256),
        "max_new_per_source": integer(1, 1_000_000),
        "max_lookups": integer(1, 256),
    }),
    "node": obj({"api": BOOL, "api_hosts": {"type": "array", "items": string(pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")}}),
}, description="explorer/src/config.rs; the chart sets data_dir, http_listen, database_url, [releases] and "
               "the node's listener, bootstrap, identity and dial policy")
BRIDGE_CONFIG = obj({
    "node": BRIDGE_NODE,
    "i2p": obj({
        "session_options": {"type": "array", "items": string(pattern=r"^[A-Za-z0-9.]+=\S*$")},
        "port": PORT,
    }),
    "tor": obj({
        "port": PORT,
        "arti": {"type": "object", "description": "arti's own configuration, in arti's format"},
    }),
}, description="bridges/bridge/src/config.rs; the chart sets data_dir, http_listen, listeners, bootstrap, "
               "advertise, SAM and the enabled flags")
SEED_CONFIG = obj({"padding": string(enum=["buckets", "none"]), "node": SEED_NODE},
                  description="meshara-core/src/bin/meshara/run.rs")

# i2pd.conf: option names are letters, digits, dots and underscores; values are scalars or lists.
INI_SCALAR = {"type": ["string", "number", "integer", "boolean"]}
INI_VALUE = {"anyOf": [INI_SCALAR, {"type": "array", "items": INI_SCALAR}]}
I2PD_CONFIG = {
    "type": "object",
    "propertyNames": {"pattern": r"^[a-z0-9][a-z0-9._]*$"},
    "additionalProperties": {"anyOf": [
        INI_VALUE,
        {"type": "object", "propertyNames": {"pattern": r"^[a-z0-9][a-z0-9._]*$"}, "additionalProperties": INI_VALUE},
    ]},
    "description": "i2pd.conf: scalars are main-section options, maps are sections",
}


def node_component(name, repository, ports, extra):
    return obj({
        "enabled": BOOL,
        "image": image(repository),
        "ports": obj({k: PORT for k in ports}, required=list(ports)),
        "log": string(minLength=1),
        "resources": RESOURCES,
        "persistence": persistence(),
        "pdb": pdb(),
        **probes(),
        **pod_extras(),
        **extra,
    }, description=name)


ADVERTISE_BY_ORDINAL = {"type": "array", "items": {"type": "array", "items": ADVERTISED}}

SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "meshara chart values",
    **obj({
        "nameOverride": string(pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", maxLength=40),
        "fullnameOverride": string(pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", maxLength=40),
        "clusterDomain": string(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        "ipFamily": string(enum=["IPv4", "IPv6"]),
        "commonLabels": STRING_MAP,
        "commonAnnotations": STRING_MAP,
        "imagePullSecrets": {"type": "array", "items": obj({"name": string(minLength=1)}, required=["name"])},
        "extraBootstrap": {"type": "array", "items": PEER},
        "podSecurityContext": obj({
            "runAsNonRoot": BOOL,
            "runAsUser": integer(0),
            "runAsGroup": integer(0),
            "fsGroup": integer(0),
            "fsGroupChangePolicy": string(enum=["OnRootMismatch", "Always"]),
            "supplementalGroups": {"type": "array", "items": integer(0)},
            "seccompProfile": obj({"type": string(enum=["RuntimeDefault", "Localhost"]),
                                   "localhostProfile": string()}, required=["type"]),
        }),
        "containerSecurityContext": obj({
            "runAsNonRoot": BOOL,
            "runAsUser": integer(0),
            "runAsGroup": integer(0),
            "readOnlyRootFilesystem": BOOL,
            "allowPrivilegeEscalation": BOOL,
            "privileged": BOOL,
            "capabilities": obj({"drop": STRINGS, "add": STRINGS}),
            "seccompProfile": obj({"type": string(enum=["RuntimeDefault", "Localhost"]),
                                   "localhostProfile": string()}, required=["type"]),
        }),
        "serviceAccount": obj({
            "create": BOOL,
            "name": string(),
            "annotations": STRING_MAP,
            "automountServiceAccountToken": BOOL,
        }),
        "updates": obj({
            "root": obj({"existingConfigMap": string()}),
            "authorities": {"type": "array", "items": NODE_REF},
            "follow": {"type": "array", "items": PACKAGE_CHANNEL},
            "policy": string(enum=["notify", "download", "install"]),
            "installPath": string(pattern=r"^(/.*)?$"),
            "checkIntervalSecs": integer(1),
        }),
        "metrics": obj({"serviceMonitor": obj({
            "enabled": BOOL,
            "namespace": string(),
            "interval": string(pattern=r"^([0-9]+(ms|s|m|h))*$"),
            "scrapeTimeout": string(pattern=r"^([0-9]+(ms|s|m|h))*$"),
            "labels": STRING_MAP,
            "annotations": STRING_MAP,
            "honorLabels": BOOL,
        })}),
        "networkPolicy": obj({
            "enabled": BOOL,
            "mesh": obj({"from": K8S_LIST}),
            "metrics": obj({"namespaceSelector": K8S_OBJECT, "podSelector": K8S_OBJECT}),
            "authority": obj({"allowSameNamespace": BOOL, "from": K8S_LIST}),
            "explorer": obj({"from": K8S_LIST}),
            "egress": obj({"allowAll": BOOL, "extra": K8S_LIST}),
        }),
        "seed": node_component("seed nodes", "ghcr.io/meshara/meshara", ["quic", "tcp", "http"], {
            "replicaCount": integer(1, 64),
            "identity": obj({"existingSecret": string(), "certificates": STRING_MAP}),
            "tcpFallback": BOOL,
            "advertise": ADVERTISE_BY_ORDINAL,
            "config": SEED_CONFIG,
            "service": obj({"annotations": STRING_MAP}),
            "externalService": external_service(),
            "podManagementPolicy": string(enum=["Parallel", "OrderedReady"]),
        }),
        "authority": node_component("authority server", "ghcr.io/meshara/meshara-authority", ["http", "quic"], {
            "identity": obj({"existingSecret": string(), "certificate": string()}),
            "passphrase": secret_ref("passphrase"),
            "adminToken": secret_ref("admin-token"),
            "init": obj({
                "enabled": BOOL,
                "keys": integer(1, 32),
                "threshold": integer(1, 32),
                "validDays": integer(1, 3650),
            }),
            "database": database("authority"),
            "config": AUTHORITY_CONFIG,
            "service": obj({"type": string(enum=["ClusterIP", "NodePort", "LoadBalancer"]), "annotations": STRING_MAP}),
            "ingress": ingress(),
            "initResources": RESOURCES,
        }),
        "bridge": node_component("bridge", "ghcr.io/meshara/meshara-bridge", ["quic", "http"], {
            "replicaCount": integer(1, 16),
            "identity": obj({"existingSecret": string(), "certificates": STRING_MAP}),
            "i2p": obj({"enabled": BOOL}),
            "tor": obj({"enabled": BOOL}),
            "advertise": ADVERTISE_BY_ORDINAL,
            "config": BRIDGE_CONFIG,
            "externalService": external_service(),
            "i2pd": obj({
                "image": image("purplei2p/i2pd"),
                "certsDir": string(pattern=r"^/"),
                "config": I2PD_CONFIG,
                "persistence": persistence(),
                "resources": RESOURCES,
            }),
        }),
        "explorer": node_component("explorer", "ghcr.io/meshara/meshara-explorer", ["http", "quic"], {
            "identity": obj({"existingSecret": string(), "certificate": string()}),
            "database": database("explorer"),
            "releases": obj({"track": {"type": "array", "items": PACKAGE_CHANNEL}}),
            "config": EXPLORER_CONFIG,
            "service": obj({"type": string(enum=["ClusterIP", "NodePort", "LoadBalancer"]), "annotations": STRING_MAP}),
            "ingress": ingress(),
        }),
    }),
}


def render() -> str:
    return json.dumps(SCHEMA, indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render())
    print(f"wrote {SCHEMA_PATH}", file=sys.stderr)
