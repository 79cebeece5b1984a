//! The broker's domain: queues, ready and delay indexes, leases, dispatch with flow
//! control, retry policy, task expiry and periodic schedules, as a synchronous state
//! machine driven by the server's hub task.
//! Architecture invariant: nothing here touches a socket, the store or a clock; time is
//! an argument and persistence is returned as `Mutation`s.

mod admin;
#[cfg(test)]
mod admin_tests;
pub mod backoff;
mod dispatch;
mod engine;
mod expiry;
#[cfg(test)]
mod expiry_tests;
#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod model_tests;
mod queue;
mod results;
mod schedule;
#[cfg(test)]
mod schedule_tests;
mod settle;
#[cfg(test)]
mod tests;

pub use admin::*;
pub use engine::*;
pub use schedule::*;
