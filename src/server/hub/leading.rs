//! Cluster mode: the hub's part in a leadership change (`server/lead.rs` decides when).
//! A new leader swaps in the engine rebuilt from its store; a node that stops leading
//! stops dispatching and firing schedules. A single node never gets these commands.

use super::state::Hub;
use crate::broker::Engine;
use crate::model::Mutation;
use crate::store::Muts;

impl Hub {
    /// Serves with `engine` (rebuilt from the store, every entry before this term
    /// applied) and submits the fixes its recovery asked for.
    pub(super) fn lead(&mut self, engine: Engine, fixes: Vec<Mutation>) {
        self.engine = engine;
        self.bounded.refresh(&self.engine, self.default_max_length);
        self.leading = true;
        for m in fixes {
            self.writer.submit(Muts::One(m), None);
        }
    }

    /// Stops dispatching and firing schedules; the engine is rebuilt before this node
    /// serves again.
    pub(super) fn follow(&mut self) {
        self.leading = false;
    }
}
