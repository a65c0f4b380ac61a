//! Topic scheme: everything lives under `skiff/v1/{cluster}/`, at most 6 levels deep (managed
//! brokers allow 7 slashes).

use alloc::format;
use alloc::string::String;

use crate::codec::Kind;
use crate::name::Name;

/// Protocol root.
pub const ROOT: &str = "skiff/v1";

/// A topic of the scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `skiff/v1/{cluster}/desired`: cluster-wide desired state (retained).
    ClusterDesired { cluster: Name },
    /// `skiff/v1/{cluster}/nodes/{node}/desired`: node desired state (retained).
    NodeDesired { cluster: Name, node: Name },
    /// `.../nodes/{node}/status`: reported state (retained; last will).
    Status { cluster: Name, node: Name },
    /// `.../nodes/{node}/events` (QoS 1).
    Events { cluster: Name, node: Name },
    /// `.../nodes/{node}/metrics` (QoS 1).
    Metrics { cluster: Name, node: Name },
    /// `.../nodes/{node}/cmd`.
    Cmd { cluster: Name, node: Name },
    /// `.../nodes/{node}/reply`.
    Reply { cluster: Name, node: Name },
    /// `skiff/v1/{cluster}/queue`: tasks for any one node of the cluster (not retained; agents
    /// subscribe through [`Topic::shared_queue_filter`]).
    Queue { cluster: Name },
}

impl Topic {
    /// The topic string.
    pub fn to_topic(&self) -> String {
        match self {
            Topic::ClusterDesired { cluster } => format!("{ROOT}/{cluster}/desired"),
            Topic::Queue { cluster } => format!("{ROOT}/{cluster}/queue"),
            Topic::NodeDesired { cluster, node } => node_topic(cluster, node, "desired"),
            Topic::Status { cluster, node } => node_topic(cluster, node, "status"),
            Topic::Events { cluster, node } => node_topic(cluster, node, "events"),
            Topic::Metrics { cluster, node } => node_topic(cluster, node, "metrics"),
            Topic::Cmd { cluster, node } => node_topic(cluster, node, "cmd"),
            Topic::Reply { cluster, node } => node_topic(cluster, node, "reply"),
        }
    }

    /// Parses a topic of the scheme; `None` for anything else.
    pub fn parse(topic: &str) -> Option<Topic> {
        let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let cluster: Name = parts.next()?.parse().ok()?;
        match (parts.next()?, parts.next(), parts.next(), parts.next()) {
            ("desired", None, None, None) => Some(Topic::ClusterDesired { cluster }),
            ("queue", None, None, None) => Some(Topic::Queue { cluster }),
            ("nodes", Some(node), Some(leaf), None) => {
                let node: Name = node.parse().ok()?;
                Some(match leaf {
                    "desired" => Topic::NodeDesired { cluster, node },
                    "status" => Topic::Status { cluster, node },
                    "events" => Topic::Events { cluster, node },
                    "metrics" => Topic::Metrics { cluster, node },
                    "cmd" => Topic::Cmd { cluster, node },
                    "reply" => Topic::Reply { cluster, node },
                    _ => return None,
                })
            }
            _ => None,
        }
    }
}

/// Suffix of a JSON mirror topic: the agent publishes status, events and metrics also as JSON
/// on `{topic}.json` (`.../nodes/pi-1/status.json`) when its config asks for it. Same level
/// count as the binary topic, so per-node ACLs and `nodes/+/...` filters work alike.
pub const JSON_MIRROR_SUFFIX: &str = ".json";

/// QoS of every publish of the scheme.
pub const QOS: u8 = 1;

/// Who publishes on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publisher {
    /// A fleet console (`skiff ctl`, a dashboard, a pipeline); the agent subscribes.
    Console,
    /// The agent of the node in the topic; consoles subscribe.
    Agent,
}

impl Topic {
    /// The last topic level (`desired`, `status`...).
    pub fn leaf(&self) -> &'static str {
        match self {
            Topic::ClusterDesired { .. } | Topic::NodeDesired { .. } => "desired",
            Topic::Status { .. } => "status",
            Topic::Events { .. } => "events",
            Topic::Metrics { .. } => "metrics",
            Topic::Cmd { .. } => "cmd",
            Topic::Reply { .. } => "reply",
            Topic::Queue { .. } => "queue",
        }
    }

    /// The message kind the topic carries; any other kind on it is rejected.
    pub fn kind(&self) -> Kind {
        match self {
            Topic::ClusterDesired { .. } | Topic::NodeDesired { .. } => Kind::DesiredState,
            Topic::Status { .. } => Kind::Status,
            Topic::Events { .. } => Kind::Event,
            Topic::Metrics { .. } => Kind::Metrics,
            Topic::Cmd { .. } => Kind::Command,
            Topic::Reply { .. } => Kind::Reply,
            Topic::Queue { .. } => Kind::RunRequest,
        }
    }

    /// Whether messages are published retained: desired state (a node that connects later
    /// gets it) and status (a console that connects later sees every node).
    pub fn retained(&self) -> bool {
        matches!(
            self,
            Topic::ClusterDesired { .. } | Topic::NodeDesired { .. } | Topic::Status { .. }
        )
    }

    /// Who publishes on it.
    pub fn publisher(&self) -> Publisher {
        match self {
            Topic::ClusterDesired { .. }
            | Topic::NodeDesired { .. }
            | Topic::Cmd { .. }
            | Topic::Queue { .. } => Publisher::Console,
            Topic::Status { .. }
            | Topic::Events { .. }
            | Topic::Metrics { .. }
            | Topic::Reply { .. } => Publisher::Agent,
        }
    }

    /// The JSON mirror of this topic (status, events, metrics), `None` for the others.
    pub fn json_mirror(&self) -> Option<String> {
        matches!(
            self,
            Topic::Status { .. } | Topic::Events { .. } | Topic::Metrics { .. }
        )
        .then(|| format!("{}{JSON_MIRROR_SUFFIX}", self.to_topic()))
    }
}

/// Shared-subscription group of the agents of a cluster on its queue topic.
pub const QUEUE_SHARE_GROUP: &str = "skiff";

impl Topic {
    /// What an agent subscribes to for its cluster's queue: `$share/skiff/skiff/v1/{cluster}/queue`
    /// (MQTT 5 shared subscriptions, which mosquitto, EMQX, HiveMQ and AWS IoT Core also
    /// accept from 3.1.1 clients): the broker gives each message to one subscriber of the
    /// group.
    pub fn shared_queue_filter(cluster: &Name) -> String {
        format!(
            "$share/{QUEUE_SHARE_GROUP}/{}",
            Topic::Queue {
                cluster: cluster.clone()
            }
            .to_topic()
        )
    }
}

fn node_topic(cluster: &Name, node: &Name, leaf: &str) -> String {
    format!("{ROOT}/{cluster}/nodes/{node}/{leaf}")
}

/// Filter for one leaf of every node of a cluster, e.g. `skiff/v1/demo/nodes/+/status`.
pub fn all_nodes(cluster: &Name, leaf: &str) -> String {
    format!("{ROOT}/{cluster}/nodes/+/{leaf}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn round_trips_every_topic() {
        let (c, nd) = (n("demo"), n("pi-1"));
        let all = [
            Topic::ClusterDesired { cluster: c.clone() },
            Topic::NodeDesired {
                cluster: c.clone(),
                node: nd.clone(),
            },
            Topic::Status {
                cluster: c.clone(),
                node: nd.clone(),
            },
            Topic::Events {
                cluster: c.clone(),
                node: nd.clone(),
            },
            Topic::Metrics {
                cluster: c.clone(),
                node: nd.clone(),
            },
            Topic::Cmd {
                cluster: c.clone(),
                node: nd.clone(),
            },
            Topic::Reply {
                cluster: c.clone(),
                node: nd,
            },
            Topic::Queue { cluster: c },
        ];
        for t in all {
            let s = t.to_topic();
            assert!(s.ends_with(t.leaf()), "{s}");
            if let Some(m) = t.json_mirror() {
                assert_eq!(m, format!("{s}.json"));
                assert_eq!(t.publisher(), Publisher::Agent);
                assert!(m.matches('/').count() <= 7, "{m}");
            }
            assert!(s.matches('/').count() <= 7, "{s}");
            assert_eq!(Topic::parse(&s), Some(t));
        }
        assert_eq!(Topic::parse("skiff/v1/demo/nodes/pi-1/status/x"), None);
        assert_eq!(Topic::parse("skiff/v1/demo/nodes/pi-1/status.json"), None);
        assert_eq!(Topic::parse("skiff/v2/demo/desired"), None);
        assert_eq!(Topic::parse("skiff/v1/de+mo/desired"), None);
    }
}
