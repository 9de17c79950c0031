//! The session's side of prepared statements over sharded tables.
//!
//! The client prepares the statement once; Tessera prepares it on the
//! sub-table a NULL key would reach, to answer the client (parameter count,
//! columns), and routes every execute by its parameter values. Each
//! sub-table text an execute needs becomes a *variant*: a session-internal
//! statement (an id the client never sees) that the ordinary machinery
//! prepares on first use, re-prepares after a reconnect and closes with its
//! parent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{cmd, code, frame, Output, Prepared, Session};
use crate::protocol::Packet;
use crate::router::{self, Access, BoundStatement, Plan};
use crate::topology::BackendId;

/// What a client statement over sharded tables carries besides [`Prepared`].
#[derive(Debug, Clone)]
pub(super) struct ShardedStmt {
    bound: Arc<BoundStatement>,
    /// Internal statement ids by (backend, sub-table text).
    variants: BTreeMap<(BackendId, String), u32>,
    /// The variant the last execute ran: fetches and resets go there.
    last_variant: Option<u32>,
    /// COM_STMT_SEND_LONG_DATA was sent since the last execute or reset.
    long_data: bool,
}

impl ShardedStmt {
    pub(super) fn new(bound: Arc<BoundStatement>) -> Box<Self> {
        Box::new(Self {
            bound,
            variants: BTreeMap::new(),
            last_variant: None,
            long_data: false,
        })
    }
}

impl Session {
    /// COM_STMT_PREPARE of a statement routed at each execute: prepared on
    /// the sub-table a representative plan reaches.
    pub(super) fn prepare_bound(&mut self, now: Instant, pkt: Packet, bound: Arc<BoundStatement>) {
        let plan = self.ctx.router.route_representative(&bound);
        let Target { node, sql, .. } = match one_target(plan, |_| {
            "A prepared statement over a sharded table must pin one sub-table with its shard key (for example `id = ?`); this one reaches several. Send it as text instead".into()
        }) {
            Ok(t) => t,
            Err((code, message)) => return self.refuse(code, &message),
        };
        let backend = match self.pick(node, Access::Write, now) {
            Ok(b) => b,
            Err(msg) => return self.refuse(router::ER_ROUTING, &msg),
        };
        let mut payload = Vec::with_capacity(sql.len() + 1);
        payload.push(cmd::STMT_PREPARE);
        payload.extend_from_slice(sql.as_bytes());
        self.active = backend;
        self.prepare_route = Some(bound);
        self.forward_or_acquire(
            now,
            Packet {
                payload: Bytes::from(payload),
                ..pkt
            },
        );
    }

    /// Handles a statement command for a client statement over sharded
    /// tables; `false` when `id` is an ordinary statement.
    pub(super) fn sharded_statement_command(
        &mut self,
        now: Instant,
        pkt: &Packet,
        command: u8,
        id: u32,
    ) -> bool {
        let Some(sharded) = self.stmts.get(&id).and_then(|s| s.sharded.as_ref()) else {
            return false;
        };
        match command {
            cmd::STMT_EXECUTE => self.execute_bound(now, pkt, id),
            cmd::STMT_CLOSE => {
                let variants: Vec<u32> = sharded.variants.values().copied().collect();
                for v in variants.into_iter().chain([id]) {
                    self.close_statement(v);
                }
            }
            cmd::STMT_SEND_LONG_DATA => {
                if let Some(s) = self.sharded_mut(id) {
                    s.long_data = true;
                }
            }
            // Reset and fetch belong to the variant the last execute used.
            _ => {
                let target = sharded.last_variant.unwrap_or(id);
                if command == cmd::STMT_RESET {
                    if let Some(s) = self.sharded_mut(id) {
                        s.long_data = false;
                    }
                }
                let mut p = pkt.payload.to_vec();
                p[1..5].copy_from_slice(&target.to_le_bytes());
                self.active = self.stmts.get(&target).map_or(self.active, |s| s.backend);
                self.forward_or_acquire(
                    now,
                    Packet {
                        payload: Bytes::from(p),
                        ..pkt.clone()
                    },
                );
            }
        }
        true
    }

    fn sharded_mut(&mut self, id: u32) -> Option<&mut ShardedStmt> {
        self.stmts.get_mut(&id)?.sharded.as_deref_mut()
    }

    /// Forgets a statement and closes it on its backend if it was prepared there.
    pub(super) fn close_statement(&mut self, id: u32) {
        let Some(st) = self.stmts.remove(&id) else {
            return;
        };
        if let (Some(bid), true) = (st.backend_id, self.slots.contains_key(&st.backend)) {
            let mut p = vec![cmd::STMT_CLOSE];
            p.extend_from_slice(&bid.to_le_bytes());
            self.out
                .push_back(Output::ToBackend(st.backend, frame(0, &p)));
        }
    }

    /// Routes one execute by its parameter values and runs it as the
    /// variant for the sub-table it reaches.
    fn execute_bound(&mut self, now: Instant, pkt: &Packet, id: u32) {
        let Some(st) = self.stmts.get(&id) else {
            return;
        };
        let Some(sharded) = st.sharded.as_ref() else {
            return;
        };
        if sharded.long_data {
            return self.refuse(
                router::ER_NOT_SUPPORTED,
                "COM_STMT_SEND_LONG_DATA is not supported for prepared statements over sharded tables; bind the value in the execute",
            );
        }
        let bound = sharded.bound.clone();
        let parsed = crate::prepared::execute_params(
            &pkt.payload,
            st.params as usize,
            st.param_types.as_deref(),
        );
        let (values, sent_types) = match parsed {
            Ok(v) => v,
            Err(msg) => return self.refuse(code::ER_MALFORMED_PACKET, &msg),
        };
        let sent_types = sent_types.map(Bytes::copy_from_slice);
        let plan = self.ctx.router.route_bound(&bound, &values);
        let Target {
            node,
            sql,
            table_names,
        } = match one_target(plan, |n| {
            format!("This execute reaches {n} sub-tables; a prepared statement over a sharded table must reach one. Send it as text to fan out")
        }) {
            Ok(t) => t,
            Err((code, message)) => return self.refuse(code, &message),
        };
        let backend = match self.pick(node, Access::Write, now) {
            Ok(b) => b,
            Err(msg) => return self.refuse(router::ER_ROUTING, &msg),
        };
        self.fwd_write = self.stmts.get(&id).is_some_and(|s| s.write);
        let target = self.variant(id, backend, sql, sent_types);
        let mut p = pkt.payload.to_vec();
        p[1..5].copy_from_slice(&target.to_le_bytes());
        self.active = backend;
        // Result columns name the logical table, as they would unsharded.
        self.pending_tables = table_names;
        self.forward_or_acquire(
            now,
            Packet {
                payload: Bytes::from(p),
                ..pkt.clone()
            },
        );
    }

    /// The statement id that runs `sql` on `backend` for client statement
    /// `id`: the client's own when it was prepared there, else a variant,
    /// created (unprepared) on first use.
    fn variant(&mut self, id: u32, backend: BackendId, sql: String, types: Option<Bytes>) -> u32 {
        let next = self.next_stmt_id;
        let Some(parent) = self.stmts.get_mut(&id) else {
            return id;
        };
        if types.is_some() {
            parent.param_types = types;
        }
        let param_types = parent.param_types.clone();
        let params = parent.params;
        let write = parent.write;
        let own = parent.backend == backend && parent.sql.as_ref() == sql.as_bytes();
        let Some(sharded) = parent.sharded.as_deref_mut() else {
            return id;
        };
        if own {
            sharded.last_variant = Some(id);
            return id;
        }
        let key = (backend, sql);
        if let Some(&v) = sharded.variants.get(&key) {
            sharded.last_variant = Some(v);
            if let Some(var) = self.stmts.get_mut(&v) {
                if var.param_types.is_none() {
                    var.param_types = param_types;
                }
            }
            return v;
        }
        let v = next;
        self.next_stmt_id = next.wrapping_add(1).max(1);
        let sql = Bytes::from(key.1.clone().into_bytes());
        sharded.variants.insert(key, v);
        sharded.last_variant = Some(v);
        self.stmts.insert(
            v,
            Prepared {
                sql,
                params,
                backend,
                backend_id: None,
                param_types,
                types_sent: false,
                sharded: None,
                write,
            },
        );
        v
    }
}

/// The one sub-table a prepared statement's plan reaches.
struct Target {
    node: usize,
    sql: String,
    /// (sub-table, logical table) renames, for result metadata.
    table_names: Vec<(String, String)>,
}

/// The target of a prepared statement's plan, or the error that answers the
/// client. `fan_out` words the refusal of a plan that reaches several
/// sub-tables (given how many).
fn one_target(plan: Plan, fan_out: impl FnOnce(usize) -> String) -> Result<Target, (u16, String)> {
    match plan {
        Plan::Single {
            node,
            sql: Some(sql),
            table_names,
            ..
        } => Ok(Target {
            node,
            sql,
            table_names,
        }),
        Plan::Refuse { code, message } => Err((code, message)),
        Plan::Scatter(s) => Err((router::ER_NOT_SUPPORTED, fan_out(s.parts.len()))),
        Plan::Sequence(_) => Err((
            router::ER_NOT_SUPPORTED,
            "A prepared INSERT that needs ids from a Tessera sequence is not supported; give the id or send the INSERT as text".into(),
        )),
        _ => Err((
            router::ER_NOT_SUPPORTED,
            "This prepared statement over a sharded table cannot be routed; send it as text".into(),
        )),
    }
}
