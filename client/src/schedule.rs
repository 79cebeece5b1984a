//! Periodic schedules kept by the broker: the `Client` methods (`add_schedule`,
//! `schedules`, `remove_schedule`, `pause_schedule`, `resume_schedule`) and their
//! types. The broker fires each tick exactly once, even across a crash; see
//! `ScheduleSpec` for what a schedule publishes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use bytes::Bytes;
use squall_proto::v1::{self, request::Op, response};

use crate::admin::checked;
use crate::client::Client;
use crate::conn::unexpected;
use crate::error::{ClientError, Result};
use crate::publish::from_unix_ms;

/// What to do with ticks missed while the broker was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum CatchUp {
    /// Skip them.
    None,
    /// One run for the latest missed tick (the default).
    #[default]
    One,
    /// A run for each missed tick, oldest first.
    All,
}

impl CatchUp {
    /// `none`, `one` or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::One => "one",
            CatchUp::All => "all",
        }
    }

    fn to_wire(self) -> i32 {
        (match self {
            CatchUp::None => v1::CatchUp::None,
            CatchUp::One => v1::CatchUp::One,
            CatchUp::All => v1::CatchUp::All,
        }) as i32
    }

    fn from_wire(raw: i32) -> CatchUp {
        match v1::CatchUp::try_from(raw) {
            Ok(v1::CatchUp::None) => CatchUp::None,
            Ok(v1::CatchUp::All) => CatchUp::All,
            _ => CatchUp::One,
        }
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CatchUp {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        [CatchUp::None, CatchUp::One, CatchUp::All]
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("`{s}` is not a catch-up policy: none, one or all"))
    }
}

/// A schedule to add: every tick of `cron` (read in `tz`) publishes one task to `queue`.
///
/// ```
/// use squall_client::{CatchUp, ScheduleSpec};
///
/// let spec = ScheduleSpec::new("report", "reports", "0 */5 * * * *")
///     .tz("Asia/Shanghai")
///     .payload("weekly")
///     .header("kind", "report")
///     .catch_up(CatchUp::All);
/// # let _ = spec;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ScheduleSpec {
    /// Unique name (the queue-name alphabet).
    pub name: String,
    /// Target queue.
    pub queue: String,
    /// Cron expression: six fields with seconds first, or the usual five.
    pub cron: String,
    /// IANA time zone (empty = UTC).
    pub tz: String,
    /// Payload of each task.
    pub payload: Bytes,
    /// Headers of each task.
    pub headers: BTreeMap<String, Bytes>,
    /// Priority of each task.
    pub priority: i32,
    /// Deliveries allowed per task (0 = the queue's default).
    pub max_attempts: u32,
    /// Missed-ticks policy.
    pub catch_up: CatchUp,
}

impl ScheduleSpec {
    /// A schedule with an empty payload, in UTC, catching up once.
    pub fn new(name: impl Into<String>, queue: impl Into<String>, cron: impl Into<String>) -> Self {
        ScheduleSpec {
            name: name.into(),
            queue: queue.into(),
            cron: cron.into(),
            tz: String::new(),
            payload: Bytes::new(),
            headers: BTreeMap::new(),
            priority: 0,
            max_attempts: 0,
            catch_up: CatchUp::One,
        }
    }

    /// The IANA time zone the expression is read in (DST included).
    pub fn tz(mut self, tz: impl Into<String>) -> Self {
        self.tz = tz.into();
        self
    }

    /// The payload of each task.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Adds a header to each task.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Priority of each task.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Deliveries allowed per task.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Missed-ticks policy.
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    fn into_wire(self) -> v1::ScheduleSpec {
        v1::ScheduleSpec {
            name: self.name,
            queue: self.queue,
            cron: self.cron,
            tz: self.tz,
            payload: self.payload,
            headers: self.headers.into_iter().collect(),
            priority: self.priority,
            max_attempts: self.max_attempts,
            catch_up: self.catch_up.to_wire(),
        }
    }

    fn from_wire(s: v1::ScheduleSpec) -> ScheduleSpec {
        ScheduleSpec {
            name: s.name,
            queue: s.queue,
            cron: s.cron,
            tz: s.tz,
            payload: s.payload,
            headers: s.headers.into_iter().collect(),
            priority: s.priority,
            max_attempts: s.max_attempts,
            catch_up: CatchUp::from_wire(s.catch_up),
        }
    }
}

/// A schedule as the broker keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// What it publishes and when.
    pub spec: ScheduleSpec,
    /// Paused schedules do not fire.
    pub paused: bool,
    /// The next tick (none while paused).
    pub next_run: Option<SystemTime>,
    /// The last tick that published.
    pub last_run: Option<SystemTime>,
    /// The task the last tick published.
    pub last_task: Option<u64>,
    /// When it was added.
    pub created_at: SystemTime,
}

fn schedule_info(s: v1::ScheduleInfo) -> Result<ScheduleInfo> {
    let spec = s
        .spec
        .ok_or_else(|| ClientError::Protocol("a schedule came without its spec".into()))?;
    Ok(ScheduleInfo {
        spec: ScheduleSpec::from_wire(spec),
        paused: s.paused,
        next_run: s.next_run_ms.map(from_unix_ms),
        last_run: (s.last_run_ms > 0).then(|| from_unix_ms(s.last_run_ms)),
        last_task: (s.last_task_id > 0).then_some(s.last_task_id),
        created_at: from_unix_ms(s.created_ms),
    })
}

impl Client {
    /// Adds a schedule; durable when this returns. Refused with
    /// `ErrorCode::ScheduleExists` when the name is taken and
    /// `ErrorCode::InvalidSchedule` when the expression or the zone is not valid.
    pub async fn add_schedule(&self, spec: ScheduleSpec) -> Result<ScheduleInfo> {
        checked(spec.name.clone())?;
        checked(spec.queue.clone())?;
        let op = Op::AddSchedule(Box::new(v1::AddSchedule {
            schedule: Some(spec.into_wire()),
        }));
        self.schedule_answer(op, "add schedule").await
    }

    /// Every schedule, in name order (asking page after page).
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let op = Op::ListSchedules(v1::ListSchedules {
                after: after.clone(),
                limit: 0,
            });
            let page = match self.call(op, "list schedules").await? {
                response::Result::Schedules(page) => page,
                other => return Err(unexpected("list schedules", other)),
            };
            let more = page.more;
            for s in page.schedules {
                all.push(schedule_info(s)?);
            }
            match all.last() {
                Some(last) if more && last.spec.name != after => after = last.spec.name.clone(),
                _ => return Ok(all),
            }
        }
    }

    /// Removes a schedule (`ErrorCode::NotFound` if there is none of that name). Tasks
    /// it published stay.
    pub async fn remove_schedule(&self, name: impl Into<String>) -> Result<()> {
        let name = checked(name)?;
        match self
            .call(
                Op::RemoveSchedule(v1::RemoveSchedule { name }),
                "remove schedule",
            )
            .await?
        {
            response::Result::Ok(_) => Ok(()),
            other => Err(unexpected("remove schedule", other)),
        }
    }

    /// Pauses a schedule: it does not fire, and the ticks that pass meanwhile are
    /// skipped.
    pub async fn pause_schedule(&self, name: impl Into<String>) -> Result<ScheduleInfo> {
        self.set_schedule_paused(name, true).await
    }

    /// Resumes a paused schedule from the next tick.
    pub async fn resume_schedule(&self, name: impl Into<String>) -> Result<ScheduleInfo> {
        self.set_schedule_paused(name, false).await
    }

    async fn set_schedule_paused(
        &self,
        name: impl Into<String>,
        paused: bool,
    ) -> Result<ScheduleInfo> {
        let name = checked(name)?;
        let op = Op::SetSchedulePaused(v1::SetSchedulePaused { name, paused });
        self.schedule_answer(op, "pause or resume schedule").await
    }

    async fn schedule_answer(&self, op: Op, what: &'static str) -> Result<ScheduleInfo> {
        match self.call(op, what).await? {
            response::Result::Schedule(s) => schedule_info(*s),
            other => Err(unexpected(what, other)),
        }
    }
}
