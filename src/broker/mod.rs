//! The broker's domain: queues, ready and delay indexes, leases, dispatch and retry
//! policy, as a synchronous state machine driven by the server's hub task.
//! Architecture invariant: nothing here touches a socket, the store or a clock; time is
//! an argument and persistence is returned as `Mutation`s.

mod admin;
#[cfg(test)]
mod admin_tests;
pub mod backoff;
mod engine;
#[cfg(test)]
mod model_test;
mod results;
#[cfg(test)]
mod tests;

pub use admin::*;
pub use engine::*;
