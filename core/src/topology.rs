//! Nodes and their backends: which backend is a node's primary, which
//! replicas take reads and with what weight, and which are up.
//!
//! The topology is an immutable snapshot shared by all sessions; only the
//! health flags and the read round-robin counters change, through atomics,
//! so the hot path never takes a lock. Replica GTID positions (for
//! read-your-writes) sit behind a read-write lock that only reads of
//! sessions waiting for their own writes look at.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::gtid::GtidPos;

/// Index of a backend in [`Topology::backends`]; the driver keeps one pool
/// per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(pub u16);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// One backend server.
#[derive(Debug, Clone)]
pub struct Backend {
    /// `host:port` or a Unix socket path.
    pub addr: String,
    pub node: usize,
    pub role: Role,
    /// Read weight (0: takes no reads).
    pub weight: u32,
    pub user: String,
    pub password: String,
}

/// A node: one primary and its replicas.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub primary: BackendId,
    pub replicas: Vec<BackendId>,
    /// Read targets interleaved by weight (smooth weighted round robin),
    /// computed once; a read takes the next entry.
    read_order: Vec<BackendId>,
}

/// The nodes, their backends, and live health.
#[derive(Debug)]
pub struct Topology {
    pub nodes: Vec<Node>,
    pub backends: Vec<Backend>,
    pub default_node: usize,
    up: Vec<AtomicBool>,
    next_read: Vec<AtomicUsize>,
    /// Per backend: the GTID position it was last seen to have applied
    /// (`None`: unknown). The driver polls replicas and stores it here.
    positions: Vec<RwLock<Option<GtidPos>>>,
}

impl Topology {
    pub fn new(nodes: Vec<(String, Backend, Vec<Backend>, bool)>, default_node: usize) -> Self {
        let mut out_nodes = Vec::new();
        let mut backends = Vec::new();
        for (i, (name, mut primary, replicas, primary_reads)) in nodes.into_iter().enumerate() {
            let pid = BackendId(backends.len() as u16);
            primary.node = i;
            primary.role = Role::Primary;
            primary.weight = u32::from(primary_reads || replicas.is_empty());
            backends.push(primary);
            let mut rids = Vec::new();
            for mut r in replicas {
                r.node = i;
                r.role = Role::Replica;
                rids.push(BackendId(backends.len() as u16));
                backends.push(r);
            }
            let weighted: Vec<(BackendId, u32)> = std::iter::once(pid)
                .chain(rids.iter().copied())
                .map(|id| (id, backends[id.0 as usize].weight))
                .filter(|(_, w)| *w > 0)
                .collect();
            out_nodes.push(Node {
                name,
                primary: pid,
                replicas: rids,
                read_order: smooth_weighted_order(&weighted),
            });
        }
        let up = backends.iter().map(|_| AtomicBool::new(true)).collect();
        let next_read = out_nodes.iter().map(|_| AtomicUsize::new(0)).collect();
        let positions = backends.iter().map(|_| RwLock::new(None)).collect();
        Self {
            nodes: out_nodes,
            backends,
            default_node,
            up,
            next_read,
            positions,
        }
    }

    pub fn backend(&self, id: BackendId) -> &Backend {
        &self.backends[id.0 as usize]
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.name.eq_ignore_ascii_case(name))
    }

    pub fn primary(&self, node: usize) -> BackendId {
        self.nodes[node].primary
    }

    /// The backend for the next read on `node`: the next up entry of its
    /// weighted order, or the primary when no read target is up.
    pub fn read_target(&self, node: usize) -> BackendId {
        let n = &self.nodes[node];
        let len = n.read_order.len();
        if len > 0 {
            let start = self.next_read[node].fetch_add(1, Ordering::Relaxed);
            for k in 0..len {
                let id = n.read_order[(start + k) % len];
                if self.is_up(id) {
                    return id;
                }
            }
        }
        n.primary
    }

    /// The backend for a read on `node` that must see the transactions in
    /// `required`: the next up entry of the weighted order whose known
    /// position covers them (the primary always does), else the primary.
    /// A replica of unknown position is never taken, so the read is never
    /// stale; positions only grow, so one polled a moment ago can only
    /// understate what the replica has applied.
    pub fn read_target_covering(&self, node: usize, required: &GtidPos) -> BackendId {
        if required.is_empty() {
            return self.read_target(node);
        }
        let n = &self.nodes[node];
        let len = n.read_order.len();
        if len > 0 {
            let start = self.next_read[node].fetch_add(1, Ordering::Relaxed);
            for k in 0..len {
                let id = n.read_order[(start + k) % len];
                if !self.is_up(id) {
                    continue;
                }
                if id == n.primary || self.position_covers(id, required) {
                    return id;
                }
            }
        }
        n.primary
    }

    fn position_covers(&self, id: BackendId, required: &GtidPos) -> bool {
        self.positions
            .get(id.0 as usize)
            .and_then(|p| p.read().ok())
            .is_some_and(|p| p.as_ref().is_some_and(|p| p.covers(required)))
    }

    /// Records the GTID position a backend has applied (`None`: unknown,
    /// e.g. the poll failed).
    pub fn set_position(&self, id: BackendId, pos: Option<GtidPos>) {
        if let Some(slot) = self.positions.get(id.0 as usize) {
            if let Ok(mut p) = slot.write() {
                *p = pos;
            }
        }
    }

    /// The last known position of a backend.
    pub fn position(&self, id: BackendId) -> Option<GtidPos> {
        self.positions
            .get(id.0 as usize)
            .and_then(|p| p.read().ok())
            .and_then(|p| p.clone())
    }

    pub fn is_up(&self, id: BackendId) -> bool {
        self.up
            .get(id.0 as usize)
            .is_some_and(|u| u.load(Ordering::Relaxed))
    }

    /// Marks a backend up or down (health checks); reads skip down replicas.
    pub fn set_up(&self, id: BackendId, up: bool) {
        if let Some(u) = self.up.get(id.0 as usize) {
            u.store(up, Ordering::Relaxed);
        }
    }

    /// The order reads take on `node` (for tests and EXPLAIN).
    pub fn read_order(&self, node: usize) -> &[BackendId] {
        &self.nodes[node].read_order
    }
}

/// Nginx's smooth weighted round robin, unrolled into one cycle: each entry
/// appears `weight / gcd` times, spread out rather than in runs.
fn smooth_weighted_order(weighted: &[(BackendId, u32)]) -> Vec<BackendId> {
    if weighted.is_empty() {
        return Vec::new();
    }
    let g = weighted.iter().fold(0, |g, (_, w)| gcd(g, *w));
    let weights: Vec<i64> = weighted.iter().map(|(_, w)| i64::from(w / g)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..current.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        current[best] -= total;
        order.push(weighted[best].0);
    }
    order
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

/// Shared handle, as sessions hold it.
pub type SharedTopology = Arc<Topology>;

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(addr: &str, weight: u32) -> Backend {
        Backend {
            addr: addr.into(),
            node: 0,
            role: Role::Replica,
            weight,
            user: "u".into(),
            password: String::new(),
        }
    }

    #[test]
    fn reads_follow_weights_and_skip_down_replicas() {
        let t = Topology::new(
            vec![(
                "n1".into(),
                backend("p", 0),
                vec![backend("r1", 2), backend("r2", 3)],
                false,
            )],
            0,
        );
        let order = t.read_order(0);
        assert_eq!(order.len(), 5);
        assert_eq!(order.iter().filter(|b| b.0 == 1).count(), 2);
        assert_eq!(order.iter().filter(|b| b.0 == 2).count(), 3);
        // No runs longer than the weights force.
        assert!(order.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])));
        let mut counts = [0usize; 3];
        for _ in 0..500 {
            counts[t.read_target(0).0 as usize] += 1;
        }
        assert_eq!(counts, [0, 200, 300]);
        t.set_up(BackendId(2), false);
        assert!((0..10).all(|_| t.read_target(0) == BackendId(1)));
        t.set_up(BackendId(1), false);
        assert_eq!(t.read_target(0), BackendId(0), "no replica up: the primary");
    }

    #[test]
    fn reads_needing_a_gtid_take_only_replicas_that_have_it() {
        let t = Topology::new(
            vec![(
                "n1".into(),
                backend("p", 0),
                vec![backend("r1", 1), backend("r2", 1)],
                false,
            )],
            0,
        );
        let (p, r1, r2) = (BackendId(0), BackendId(1), BackendId(2));
        let need = GtidPos::parse("0-1-10").unwrap();
        // Positions unknown: the primary, never a replica.
        assert!((0..6).all(|_| t.read_target_covering(0, &need) == p));
        // Nothing required: plain weighted reads.
        let none = GtidPos::default();
        assert!((0..6).all(|_| t.read_target_covering(0, &none) != p));
        t.set_position(r1, Some(GtidPos::parse("0-1-9").unwrap()));
        t.set_position(r2, Some(GtidPos::parse("0-1-10,1-1-3").unwrap()));
        assert!((0..6).all(|_| t.read_target_covering(0, &need) == r2));
        // Another domain r2 lacks.
        let both = GtidPos::parse("0-1-10,2-1-1").unwrap();
        assert_eq!(t.read_target_covering(0, &both), p);
        t.set_position(r1, Some(GtidPos::parse("0-1-12").unwrap()));
        let mut seen = [0usize; 3];
        for _ in 0..10 {
            seen[t.read_target_covering(0, &need).0 as usize] += 1;
        }
        assert_eq!(seen, [0, 5, 5], "both caught up: weights again");
        // A down replica is skipped even if it has the GTID.
        t.set_up(r2, false);
        assert!((0..6).all(|_| t.read_target_covering(0, &need) == r1));
        t.set_position(r1, None);
        assert_eq!(t.read_target_covering(0, &need), p, "position lost");
        assert_eq!(
            t.position(r2),
            Some(GtidPos::parse("0-1-10,1-1-3").unwrap())
        );
    }

    #[test]
    fn a_primary_taking_reads_is_always_fresh_enough() {
        let t = Topology::new(
            vec![("n1".into(), backend("p", 0), vec![backend("r1", 1)], true)],
            0,
        );
        let need = GtidPos::parse("0-1-10").unwrap();
        assert!((0..4).all(|_| t.read_target_covering(0, &need) == BackendId(0)));
    }

    #[test]
    fn a_node_without_replicas_reads_from_its_primary() {
        let t = Topology::new(vec![("n1".into(), backend("p", 0), vec![], false)], 0);
        assert_eq!(t.read_target(0), BackendId(0));
    }
}
