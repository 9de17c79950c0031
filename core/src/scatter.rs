//! Bookkeeping of a fan-out in progress: one lane per backend, each running
//! its steps in order (restore the session state, BEGIN, the parts, COMMIT
//! or ROLLBACK), and the answers collected per part for the merge.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::merge::{Collector, ShardResult};
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

    /// Records a failure (the first one wins) and stops sending further parts.
    pub fn fail(&mut self, code: u16, message: String) {
        if self.failed.is_none() {
            self.failed = Some((code, message));
        }
        for lane in self.lanes.values_mut() {
            lane.queue.retain(|s| !s.is_part());
        }
    }
}
