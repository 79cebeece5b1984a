//! The `[cluster]` settings (replication, issue 15): the cluster port, the peers, the
//! address handed to clients, and the cluster port's bounds; their parsing and their
//! validation against the rest. Off unless `cluster.listen` is set.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{ConfigError, ServerConfig};

/// One member named in `cluster.peers`: `ID@HOST:PORT` (its cluster port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its `node_id`, a number.
    pub id: u64,
    /// Its cluster address.
    pub addr: String,
}

/// Replication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Address of the cluster port (node-to-node traffic); `None` = a single node.
    pub listen: Option<SocketAddr>,
    /// Every member of a new cluster, this node included. The members form the
    /// cluster by themselves once a majority of them is up.
    pub peers: Vec<Peer>,
    /// The protocol address other members hand to clients; `None` = `listen`.
    pub advertise: Option<String>,
    /// Most connections open at once on the cluster port.
    pub max_connections: usize,
    /// Largest frame on the cluster port.
    pub max_frame_bytes: usize,
    /// Shared secret every node-to-node request carries; empty = none. Required when
    /// client authentication (`auth.tokens`) is configured.
    pub token: String,
    /// The CA (PEM) that signed the members' certificates. With TLS configured
    /// (`tls.cert`, `tls.key`) the cluster port speaks TLS with this node's certificate
    /// and checks the other members' against this CA; it is then required.
    pub tls_ca: Option<PathBuf>,
    /// Entries applied since the last snapshot after which a member snapshots the
    /// queue state (a dump of its store) and purges its Raft log behind it, keeping
    /// this many entries (10,000 at most) behind the snapshot for members slightly
    /// behind.
    pub snapshot_logs: u64,
    /// Bytes of Raft log applied since the last snapshot after which a member
    /// snapshots, whichever of the two comes first: bounds the log on disk under load
    /// (entries carry many jobs), while a quiet cluster snapshots rarely.
    pub snapshot_log_bytes: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: None,
            peers: Vec::new(),
            advertise: None,
            max_connections: 64,
            max_frame_bytes: 64 * 1024 * 1024,
            token: String::new(),
            tls_ca: None,
            snapshot_logs: 100_000,
            snapshot_log_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Parses `1@127.0.0.1:7700,2@127.0.0.1:7701` (also a TOML array of such strings).
pub(super) fn parse_peers(items: &[&str]) -> Result<Vec<Peer>, String> {
    let mut peers = Vec::new();
    for item in items.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| format!("`{item}` is not ID@HOST:PORT"))?;
        let id = id
            .parse::<u64>()
            .map_err(|_| format!("`{item}`: the node id `{id}` is not a number"))?;
        if addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!("`{item}`: `{addr}` is not HOST:PORT"));
        }
        if peers.iter().any(|p: &Peer| p.id == id) {
            return Err(format!("node id {id} is named twice"));
        }
        peers.push(Peer {
            id,
            addr: addr.to_owned(),
        });
    }
    Ok(peers)
}

impl ClusterConfig {
    /// This node's Raft id when clustered: `node_id` as a number, or else the id of the
    /// one `cluster.peers` entry whose host is `node_id` or starts with `node_id.` (so a
    /// StatefulSet pod named `squall-0` is the member `1@squall-0.squall:7700`).
    pub fn node_id(&self, server: &ServerConfig) -> Option<u64> {
        self.listen?;
        self.resolve_id(&server.node_id).ok()
    }

    fn resolve_id(&self, name: &str) -> Result<u64, String> {
        if let Ok(id) = name.parse::<u64>() {
            return Ok(id);
        }
        let named = |p: &&Peer| {
            let host = p.addr.rsplit_once(':').map_or(p.addr.as_str(), |(h, _)| h);
            host == name || host.strip_prefix(name).is_some_and(|r| r.starts_with('.'))
        };
        let mut matching = self.peers.iter().filter(named);
        match (matching.next(), matching.next()) {
            (Some(p), None) => Ok(p.id),
            (None, _) => Err(format!(
                "`{name}` must be a number in a cluster, or the host of one cluster.peers \
                 entry (ID@{name}:PORT or ID@{name}.DOMAIN:PORT)"
            )),
            (Some(a), Some(b)) => Err(format!(
                "`{name}` is the host of two cluster.peers entries ({} and {})",
                a.id, b.id
            )),
        }
    }

    /// The address clients are told to use for this node.
    pub fn client_addr(&self, server: &ServerConfig) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| server.listen.to_string())
    }

    /// Checks the settings against each other and the server's.
    pub fn validate(&self, server: &ServerConfig) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| {
            Err(ConfigError {
                key: key.to_owned(),
                reason,
            })
        };
        if self.max_connections == 0 {
            return bad("cluster.max_connections", "must be at least 1".into());
        }
        if self.max_frame_bytes < 64 * 1024 || self.max_frame_bytes > u32::MAX as usize {
            return bad(
                "cluster.max_frame_bytes",
                format!("{} is outside 64 KiB..4 GiB", self.max_frame_bytes),
            );
        }
        if self.snapshot_logs == 0 {
            return bad("cluster.snapshot_logs", "must be at least 1".into());
        }
        if self.snapshot_log_bytes == 0 {
            return bad("cluster.snapshot_log_bytes", "must be at least 1".into());
        }
        let Some(listen) = self.listen else {
            if !self.peers.is_empty() || self.advertise.is_some() {
                return bad(
                    "cluster.listen",
                    "is required when cluster.peers or cluster.advertise is set".into(),
                );
            }
            return Ok(());
        };
        if self.token.is_empty() && !server.auth.tokens.is_empty() {
            return bad(
                "cluster.token",
                "is required when auth.tokens is set (the cluster port would be open)".into(),
            );
        }
        let tls = server.tls.cert.is_some() && server.tls.key.is_some();
        if tls && self.tls_ca.is_none() {
            return bad(
                "cluster.tls_ca",
                "is required when TLS is configured (tls.cert, tls.key): the cluster port \
                 speaks TLS and checks the other members' certificates against it"
                    .into(),
            );
        }
        if !tls && self.tls_ca.is_some() {
            return bad(
                "cluster.tls_ca",
                "needs tls.cert and tls.key (this node's certificate on the cluster port)".into(),
            );
        }
        if listen == server.listen && listen.port() != 0 {
            return bad(
                "cluster.listen",
                format!("{listen} is also the protocol address (listen)"),
            );
        }
        let id = match self.resolve_id(&server.node_id) {
            Ok(id) => id,
            Err(reason) => return bad("node_id", reason),
        };
        if !self.peers.iter().any(|p| p.id == id) {
            return bad(
                "cluster.peers",
                format!("must name this node ({id}@<its cluster address>)"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn peers_parse_and_bad_ones_are_named() {
        let peers = parse_peers(&["1@127.0.0.1:7700, 2@node-b:7701", "3@[::1]:7702"]).unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(
            peers[1],
            Peer {
                id: 2,
                addr: "node-b:7701".into()
            }
        );
        assert!(parse_peers(&["127.0.0.1:7700"])
            .unwrap_err()
            .contains("ID@HOST:PORT"));
        assert!(parse_peers(&["x@a:1"])
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_peers(&["1@a"]).unwrap_err().contains("HOST:PORT"));
        assert!(parse_peers(&["1@a:1,1@b:2"]).unwrap_err().contains("twice"));
    }

    #[test]
    fn a_node_named_by_host_is_the_peer_with_that_host() {
        let mut server = ServerConfig {
            node_id: "squall-1".into(),
            ..ServerConfig::default()
        };
        let mut c = ClusterConfig {
            listen: Some("0.0.0.0:7700".parse().unwrap()),
            peers: parse_peers(&[
                "1@squall-0.squall:7700,2@squall-1.squall:7700,3@squall-10.squall:7700",
            ])
            .unwrap(),
            ..ClusterConfig::default()
        };
        assert_eq!(c.validate(&server), Ok(()));
        assert_eq!(c.node_id(&server), Some(2), "squall-1 is not squall-10");
        server.node_id = "squall-10".into();
        assert_eq!(c.node_id(&server), Some(3));
        server.node_id = "squall-3".into();
        let e = c.validate(&server).unwrap_err();
        assert_eq!(e.key, "node_id");
        assert!(
            e.reason.contains("host of one cluster.peers entry"),
            "{}",
            e.reason
        );
        assert_eq!(c.node_id(&server), None);
        c.peers = parse_peers(&["1@a:7700,2@a:7701"]).unwrap();
        server.node_id = "a".into();
        assert!(c.validate(&server).unwrap_err().reason.contains("two"));
        server.node_id = "2".into();
        assert_eq!(c.node_id(&server), Some(2), "a number is the id itself");
    }

    #[test]
    fn with_tls_the_cluster_port_needs_the_members_ca_and_the_ca_needs_tls() {
        let mut server = ServerConfig {
            node_id: "1".into(),
            ..ServerConfig::default()
        };
        let mut c = ClusterConfig {
            listen: Some("127.0.0.1:7700".parse().unwrap()),
            peers: parse_peers(&["1@127.0.0.1:7700"]).unwrap(),
            ..ClusterConfig::default()
        };
        c.tls_ca = Some(PathBuf::from("ca.pem"));
        assert_eq!(c.validate(&server).unwrap_err().key, "cluster.tls_ca");
        server.tls.cert = Some(PathBuf::from("cert.pem"));
        server.tls.key = Some(PathBuf::from("key.pem"));
        assert_eq!(c.validate(&server), Ok(()));
        c.tls_ca = None;
        assert_eq!(c.validate(&server).unwrap_err().key, "cluster.tls_ca");
    }

    #[test]
    fn a_cluster_needs_a_numeric_node_id_named_in_its_peers() {
        let mut server = ServerConfig::default();
        let mut c = ClusterConfig::default();
        assert_eq!(c.validate(&server), Ok(()), "off by default");
        c.peers = parse_peers(&["1@127.0.0.1:7700,2@127.0.0.1:7701"]).unwrap();
        assert_eq!(c.validate(&server).unwrap_err().key, "cluster.listen");
        c.listen = Some("127.0.0.1:7700".parse().unwrap());
        assert_eq!(c.validate(&server).unwrap_err().key, "node_id");
        server.node_id = "3".into();
        assert_eq!(c.validate(&server).unwrap_err().key, "cluster.peers");
        server.node_id = "2".into();
        assert_eq!(c.validate(&server), Ok(()));
        let entry = "sha256$00$0000000000000000000000000000000000000000000000000000000000000000";
        let mut file = Settings::default();
        let tokens =
            format!("[[auth.tokens]]\nname = \"w\"\nrole = \"admin\"\nhash = \"{entry}\"\n");
        file.apply_toml(&tokens).unwrap();
        server.auth = file.server.auth;
        assert_eq!(
            c.validate(&server).unwrap_err().key,
            "cluster.token",
            "client auth without a cluster token would leave the cluster port open"
        );
        c.token = "s3cret".into();
        assert_eq!(c.validate(&server), Ok(()));
        assert_eq!(c.node_id(&server), Some(2));
        assert_eq!(c.client_addr(&server), server.listen.to_string());
    }
}
