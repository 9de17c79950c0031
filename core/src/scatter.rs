//! Bookkeeping of a fan-out in progress: one lane per backend, each running
//! its steps in order (restore the session state, BEGIN, the parts, COMMIT
//! or ROLLBACK), and the answers collected per part for the merge, or fed
//! to a streaming merge as they arrive.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::merge::{Collector, ShardResult, StreamMerge};
use crate::router::ScatterPlan;
use crate::topology::BackendId;

/// One command a lane sends.
#[derive(Debug, Clone)]
pub enum LaneStep {
    /// Brings the connection to the session's state.
    Restore(Bytes),
    /// The client's own deferred BEGIN: the transaction binds to this lane.
    ClientBegin(Bytes),
    /// BEGIN of an atomic fan-out.
    Begin,
    /// Part `i` of the plan.
    Part(usize),
    /// COMMIT (true) or ROLLBACK of an atomic fan-out.
    End(bool),
}

impl LaneStep {
    pub fn is_part(&self) -> bool {
        matches!(self, LaneStep::Part(_))
    }
}

#[derive(Debug)]
pub enum LaneState {
    /// Waiting for the driver to attach a connection.
    Acquiring,
    /// A step was sent; its answer is being read.
    Running {
        step: LaneStep,
        collector: Box<Collector>,
    },
    /// Nothing to send now.
    Idle,
    /// The connection failed; nothing more is sent.
    Dead,
}

#[derive(Debug)]
pub struct Lane {
    pub queue: VecDeque<LaneStep>,
    pub state: LaneState,
    /// An atomic BEGIN went out on this lane (so it needs COMMIT/ROLLBACK).
    pub began: bool,
}

impl Lane {
    pub fn new(queue: VecDeque<LaneStep>) -> Self {
        Self {
            queue,
            state: LaneState::Acquiring,
            began: false,
        }
    }
}

/// A fan-out in progress.
#[derive(Debug)]
pub struct ScatterRun {
    pub plan: ScatterPlan,
    pub results: Vec<Option<ShardResult>>,
    pub lanes: BTreeMap<BackendId, Lane>,
    /// Wrap each lane's parts in BEGIN … COMMIT, rolling back all on failure.
    pub atomic: bool,
    /// The first error, answered to the client.
    pub failed: Option<(u16, String)>,
    /// COMMIT or ROLLBACK has been queued on the lanes.
    pub ending: bool,
    /// The merge, when it runs while rows arrive (ORDER BY/LIMIT shapes);
    /// otherwise the parts' results are merged once all are in.
    pub stream: Option<StreamMerge>,
    /// Lanes whose reading waits until the merge has sent some of their rows.
    pub paused: BTreeSet<BackendId>,
}

impl ScatterRun {
    /// Backends with a command in flight (for timeouts).
    pub fn busy_lanes(&self) -> Vec<BackendId> {
        self.lanes
            .iter()
            .filter(|(_, l)| matches!(l.state, LaneState::Running { .. } | LaneState::Acquiring))
            .map(|(b, _)| *b)
            .collect()
    }

    /// Every lane has nothing left to do.
    pub fn all_settled(&self) -> bool {
        self.lanes
            .values()
            .all(|l| matches!(l.state, LaneState::Idle | LaneState::Dead) && l.queue.is_empty())
    }

    /// Records a failure (the first one wins), stops sending further parts
    /// and makes the running ones drop their rows.
    pub fn fail(&mut self, code: u16, message: String) {
        if self.failed.is_none() {
            self.failed = Some((code, message));
        }
        for lane in self.lanes.values_mut() {
            lane.queue.retain(|s| !s.is_part());
            if let LaneState::Running { collector, .. } = &mut lane.state {
                collector.keep_at_most(0);
                collector.take_rows();
            }
        }
    }

    /// The part a lane is reading, if it is reading one.
    pub fn running_part(&self, backend: BackendId) -> Option<usize> {
        match &self.lanes.get(&backend)?.state {
            LaneState::Running {
                step: LaneStep::Part(i),
                ..
            } => Some(*i),
            _ => None,
        }
    }

    /// Whether the lane's current part is its last: nothing behind it can be
    /// what the streaming merge waits for, so its reading may pause.
    pub fn may_pause(&self, backend: BackendId) -> bool {
        let Some(part) = self.running_part(backend) else {
            return false;
        };
        let last = self
            .lanes
            .get(&backend)
            .is_some_and(|l| !l.queue.iter().any(LaneStep::is_part));
        last && self.failed.is_none() && self.stream.as_ref().is_some_and(|m| m.wants_pause(part))
    }

    /// The streaming merge needs nothing more: parts not sent yet are
    /// dropped, running ones read on without keeping rows.
    pub fn stop_parts(&mut self) {
        for lane in self.lanes.values_mut() {
            let mut dropped = Vec::new();
            lane.queue.retain(|s| match s {
                LaneStep::Part(i) => {
                    dropped.push(*i);
                    false
                }
                _ => true,
            });
            if let Some(m) = self.stream.as_mut() {
                for i in dropped {
                    // A part that never ran has no answer that could fail.
                    let _ = m.part_done(i, None);
                }
            }
            if let LaneState::Running {
                step: LaneStep::Part(_),
                collector,
            } = &mut lane.state
            {
                collector.keep_at_most(0);
                collector.take_rows();
            }
        }
    }

    /// Paused lanes that may read on now (all of them once the run failed
    /// or the merge is satisfied); they are no longer paused.
    pub fn resumable(&mut self) -> Vec<BackendId> {
        let ready: Vec<BackendId> = self
            .paused
            .iter()
            .copied()
            .filter(|b| {
                self.failed.is_some()
                    || match (self.running_part(*b), &self.stream) {
                        (Some(i), Some(m)) => m.may_resume(i),
                        _ => true,
                    }
            })
            .collect();
        for b in &ready {
            self.paused.remove(b);
        }
        ready
    }
}
