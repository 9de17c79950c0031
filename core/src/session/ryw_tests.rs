//! Read-your-writes routing: where a session's reads go after it wrote,
//! driven through the session with a scripted backend.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{Output, Session};
use crate::gtid::GtidPos;
use crate::protocol::{self, StatusFlags};
use crate::router::Plan;
use crate::testing::{self, client_caps};
use crate::topology::BackendId;

/// Two nodes, each a primary and one replica; `stu` split over both.
fn config(routing: &str, user: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:3307"
[routing]
{routing}
[[users]]
name = "app"
password_native = "{pw}"
{user}
[[nodes]]
name = "node1"
primary = "127.0.0.1:3306"
replicas = ["127.0.0.1:3308"]
user = "root"
[[nodes]]
name = "node2"
primary = "127.0.0.1:3316"
replicas = ["127.0.0.1:3318"]
user = "root"
[[schema.tables]]
name = "stu"
key = "id"
function = "hash"
locations = [4, 4]
"#,
        pw = testing::password_native()
    )
}

const P1: BackendId = BackendId(0);
const R1: BackendId = BackendId(1);
const P2: BackendId = BackendId(2);
const R2: BackendId = BackendId(3);

struct Rig {
    s: Session,
    now: Instant,
    /// An id of `stu` on each node.
    key: [i64; 2],
    /// Per primary: the seqno of its last transaction (domain 0).
    seqno: [u64; 2],
    /// Per primary: a transaction is open.
    in_tx: [bool; 2],
    /// What the primaries report as `last_gtid` instead of a real GTID.
    bad_gtid: Option<&'static str>,
}

impl Rig {
    fn new(routing: &str, user: &str) -> Rig {
        let now = Instant::now();
        let ctx = testing::context_from_config(&config(routing, user));
        let node_of = |id: i64| match ctx
            .router
            .route(&format!("SELECT * FROM stu WHERE id = {id}"))
        {
            Plan::Single { node, .. } => node,
            other => panic!("{other:?}"),
        };
        let k1 = (1..).find(|i| node_of(*i) == 0).unwrap();
        let k2 = (1..).find(|i| node_of(*i) == 1).unwrap();
        let s = testing::logged_in_with(ctx, now, client_caps());
        Rig {
            s,
            now,
            key: [k1, k2],
            seqno: [100, 500],
            in_tx: [false; 2],
            bad_gtid: None,
        }
    }

    fn set_position(&self, b: BackendId, pos: &str) {
        self.s
            .ctx
            .router
            .topology
            .set_position(b, Some(GtidPos::parse(pos).unwrap()));
    }

    /// The GTID a primary gives its next transaction.
    fn commit(&mut self, b: BackendId) -> String {
        let i = usize::from(b == P2);
        self.seqno[i] += 1;
        format!("0-{}-{}", i + 1, self.seqno[i])
    }

    /// The last GTID of a node's primary.
    fn last(&self, node: usize) -> String {
        format!("0-{}-{}", node + 1, self.seqno[node])
    }

    /// Sends `sql` and plays every backend until the client has its answer:
    /// attaches what the session asks for, answers each command with OK,
    /// and on a primary an autocommitted INSERT or a COMMIT with the
    /// `last_gtid` of a new transaction. Returns the backends the client's
    /// own statements went to (restore commands, BEGIN, COMMIT left out).
    fn run(&mut self, sql: &str) -> Vec<BackendId> {
        let mut pkt = vec![protocol::cmd::QUERY];
        pkt.extend_from_slice(sql.as_bytes());
        let mut buf = BytesMut::new();
        protocol::write_packet(&mut buf, 0, &pkt);
        self.s.handle_client_data(self.now, &mut buf);
        let mut went = Vec::new();
        let mut answered_client = false;
        for _ in 0..64 {
            let mut attach = Vec::new();
            let mut replies = Vec::new();
            while let Some(o) = self.s.poll_output() {
                match o {
                    Output::AcquireBackend(b) => attach.push(b),
                    Output::ToBackend(b, bytes) => {
                        let text = String::from_utf8_lossy(&bytes[5..]).to_string();
                        let command = bytes[4];
                        let restore = command != protocol::cmd::QUERY || text.starts_with("SET ");
                        if !restore && text != "BEGIN" && text != "COMMIT" {
                            went.push(b);
                        }
                        let primary = b == P1 || b == P2;
                        let i = usize::from(b == P2);
                        let commits = primary
                            && (text == "COMMIT" || (text.starts_with("INSERT") && !self.in_tx[i]));
                        if primary && text == "BEGIN" {
                            self.in_tx[i] = true;
                        }
                        if primary && text == "COMMIT" {
                            self.in_tx[i] = false;
                        }
                        let reply = if commits {
                            let g = self.commit(b);
                            testing::ok_with_last_gtid(self.bad_gtid.unwrap_or(&g))
                        } else if primary && self.in_tx[i] {
                            let mut out = BytesMut::new();
                            let status = StatusFlags::SERVER_STATUS_AUTOCOMMIT
                                | StatusFlags::SERVER_STATUS_IN_TRANS;
                            protocol::write_packet(
                                &mut out,
                                1,
                                &protocol::ok_payload(0, 1, 0, status, 0),
                            );
                            out.to_vec()
                        } else {
                            testing::ok_reply()
                        };
                        replies.push((b, reply));
                    }
                    Output::ToClient(_) => answered_client = true,
                    _ => {}
                }
            }
            if attach.is_empty() && replies.is_empty() {
                break;
            }
            for b in attach {
                self.s
                    .handle_backend_attached(self.now, b, testing::backend_meta(client_caps()));
            }
            for (b, r) in replies {
                self.s
                    .handle_backend_data(self.now, b, &mut BytesMut::from(&r[..]));
            }
        }
        assert!(answered_client, "`{sql}` got no answer");
        assert!(self.s.is_idle());
        went
    }
}

fn read(rig: &mut Rig, node: usize) -> BackendId {
    let went = rig.run(&format!("SELECT * FROM stu WHERE id = {}", rig.key[node]));
    assert_eq!(went.len(), 1, "{went:?}");
    went[0]
}

fn write(rig: &mut Rig, node: usize) {
    let went = rig.run(&format!("INSERT INTO stu (id) VALUES ({})", rig.key[node]));
    assert_eq!(went, vec![[P1, P2][node]]);
}

#[test]
fn off_reads_go_to_replicas_even_right_after_a_write() {
    let mut rig = Rig::new("", "");
    assert_eq!(read(&mut rig, 0), R1);
    write(&mut rig, 0);
    assert_eq!(read(&mut rig, 0), R1, "no read-your-writes: the replica");
}

#[test]
fn gtid_reads_wait_for_a_replica_that_applied_the_write() {
    let mut rig = Rig::new("read_your_writes = \"gtid\"", "");
    assert_eq!(read(&mut rig, 0), R1, "nothing written yet: the replica");
    write(&mut rig, 0);
    let gtid = rig.last(0);
    // The replica's position is unknown: the primary.
    assert_eq!(read(&mut rig, 0), P1);
    // Behind by one transaction: still the primary.
    rig.set_position(R1, &format!("0-1-{}", rig.seqno[0] - 1));
    assert_eq!(read(&mut rig, 0), P1);
    // Another domain does not count.
    rig.set_position(R1, &format!("1-1-{}", rig.seqno[0]));
    assert_eq!(read(&mut rig, 0), P1);
    // Caught up: the replica again.
    rig.set_position(R1, &gtid);
    assert_eq!(read(&mut rig, 0), R1);
    // The other node was never written: its replica all along.
    assert_eq!(read(&mut rig, 1), R2);
    // A second write raises the bar again.
    write(&mut rig, 0);
    assert_eq!(read(&mut rig, 0), P1);
    rig.set_position(R1, &format!("0-1-{},1-1-1", rig.seqno[0] + 3));
    assert_eq!(read(&mut rig, 0), R1, "ahead is fine");
}

#[test]
fn gtid_is_tracked_per_node_for_writes_over_several_nodes() {
    let mut rig = Rig::new("read_your_writes = \"gtid\"", "");
    // One INSERT for both nodes: an atomic scatter, one transaction per node.
    let went = rig.run(&format!(
        "INSERT INTO stu (id) VALUES ({}), ({})",
        rig.key[0], rig.key[1]
    ));
    assert_eq!(went, vec![P1, P2]);
    assert_eq!(read(&mut rig, 0), P1);
    assert_eq!(read(&mut rig, 1), P2);
    // Each replica is checked against its own node's GTID: node2's replica
    // holding node1's seqno (a lower one) is not enough.
    rig.set_position(R2, &rig.last(0));
    assert_eq!(read(&mut rig, 1), P2);
    rig.set_position(R1, &rig.last(0));
    assert_eq!(read(&mut rig, 0), R1);
    assert_eq!(read(&mut rig, 1), P2);
    rig.set_position(R2, &rig.last(1));
    assert_eq!(read(&mut rig, 1), R2);
    // Reads that scatter pick per node too.
    write(&mut rig, 1);
    let went = rig.run("SELECT * FROM stu");
    assert!(went.contains(&R1) && went.contains(&P2), "{went:?}");
}

#[test]
fn an_unreadable_gtid_keeps_reads_on_the_primary() {
    let mut rig = Rig::new("read_your_writes = \"gtid\"", "");
    rig.set_position(R1, "0-1-999999");
    assert_eq!(read(&mut rig, 0), R1);
    // The primary reports something that is not a GTID.
    rig.bad_gtid = Some("banana");
    write(&mut rig, 0);
    assert_eq!(read(&mut rig, 0), P1);
    // Even a later, readable GTID does not vouch for the unreadable one.
    rig.bad_gtid = None;
    write(&mut rig, 0);
    rig.set_position(R1, "0-1-999999");
    assert_eq!(read(&mut rig, 0), P1);
}

#[test]
fn window_reads_stay_on_the_primary_for_the_window() {
    let mut rig = Rig::new(
        "read_your_writes = \"window\"\nread_your_writes_window_ms = 500",
        "",
    );
    assert_eq!(read(&mut rig, 0), R1);
    write(&mut rig, 0);
    let t0 = rig.now;
    rig.now = t0 + Duration::from_millis(100);
    assert_eq!(read(&mut rig, 0), P1);
    assert_eq!(read(&mut rig, 1), R2, "the other node was not written");
    // Reads on the primary do not extend the window.
    rig.now = t0 + Duration::from_millis(499);
    assert_eq!(read(&mut rig, 0), P1);
    rig.now = t0 + Duration::from_millis(500);
    assert_eq!(read(&mut rig, 0), R1);
    // A transaction's COMMIT counts as a write.
    assert!(rig.run("BEGIN").is_empty());
    write(&mut rig, 0);
    rig.now += Duration::from_millis(600);
    assert_eq!(rig.run("COMMIT"), Vec::<BackendId>::new());
    assert_eq!(read(&mut rig, 0), P1, "committed just now");
}

#[test]
fn a_user_can_override_the_global_mode() {
    let mut rig = Rig::new("read_your_writes = \"gtid\"", "read_your_writes = \"off\"");
    write(&mut rig, 0);
    assert_eq!(read(&mut rig, 0), R1);
    let mut rig = Rig::new("", "read_your_writes = \"window\"");
    write(&mut rig, 0);
    assert_eq!(read(&mut rig, 0), P1);
    rig.now += Duration::from_millis(1000);
    assert_eq!(read(&mut rig, 0), R1, "the default window is one second");
}
