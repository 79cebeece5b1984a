//! What a run prints: the text report, the `--json` object, and the progress bar shown
//! while it runs. No measuring happens here.

use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::{LoadArgs, Outcome};

/// Percentiles of one latency distribution, in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    samples: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            samples: h.len(),
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            us(self.p50_us),
            us(self.p90_us),
            us(self.p99_us),
            us(self.p999_us),
            us(self.max_us)
        )
    }
}

fn us(v: u64) -> String {
    if v >= 1_000_000 {
        format!("{:.2} s", v as f64 / 1e6)
    } else if v >= 1_000 {
        format!("{:.2} ms", v as f64 / 1e3)
    } else {
        format!("{v} µs")
    }
}

/// The whole result of a run.
#[derive(Debug, Serialize)]
pub struct Report {
    target: String,
    server: String,
    producers: usize,
    consumers: usize,
    size_bytes: usize,
    window: usize,
    batch: usize,
    prefetch: u32,
    queues: usize,
    rate: Option<u64>,
    elapsed_s: f64,
    confirmed: u64,
    delivered: u64,
    duplicates: u64,
    lost: u64,
    msgs_per_s: f64,
    mib_per_s: f64,
    publish_confirm: Latency,
    end_to_end: Latency,
    broker_cpu_s: Option<f64>,
    broker_cpu_us_per_msg: Option<f64>,
}

impl Report {
    /// `target` names the broker (squall, redis, ...); `server` says where it ran;
    /// `broker_cpu` is the CPU time its process used during the run, where known.
    pub fn new(
        args: &LoadArgs,
        target: &str,
        server: &str,
        o: &Outcome,
        broker_cpu: Option<Duration>,
    ) -> Report {
        let secs = o.elapsed.as_secs_f64().max(1e-9);
        // A publish-only run (no consumers) is measured by what was confirmed.
        let done = if args.consumers == 0 {
            o.confirmed
        } else {
            o.delivered
        };
        let rate = done as f64 / secs;
        Report {
            target: target.to_owned(),
            server: server.to_owned(),
            producers: args.producers,
            consumers: args.consumers,
            size_bytes: args.size,
            window: args.window,
            batch: args.batch,
            prefetch: args.prefetch,
            queues: args.queues,
            rate: args.rate,
            elapsed_s: secs,
            confirmed: o.confirmed,
            delivered: o.delivered,
            duplicates: o.duplicates,
            lost: o.lost,
            msgs_per_s: rate,
            mib_per_s: rate * args.size as f64 / (1024.0 * 1024.0),
            publish_confirm: Latency::of(&o.publish),
            end_to_end: Latency::of(&o.end_to_end),
            broker_cpu_s: broker_cpu.map(|d| d.as_secs_f64()),
            broker_cpu_us_per_msg: broker_cpu
                .filter(|_| done > 0)
                .map(|d| d.as_secs_f64() * 1e6 / done as f64),
        }
    }

    /// Prints the report on standard output: one JSON object, or the text.
    pub fn print(&self, json: bool) -> Result<(), serde_json::Error> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else {
            print!("{}", self.text());
        }
        Ok(())
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{} bench against {}: {} producers, {} consumers, {} B payloads, window {}, batch {}, prefetch {}, {} queue(s){}\n",
            self.target,
            self.server,
            self.producers,
            self.consumers,
            self.size_bytes,
            self.window,
            self.batch,
            self.prefetch,
            self.queues,
            self.rate.map(|r| format!(", fixed rate {r} msgs/s")).unwrap_or_default(),
        ));
        s.push_str(&format!(
            "  throughput       {:.0} msgs/s  {:.2} MiB/s  ({} {} in {:.2} s)\n",
            self.msgs_per_s,
            self.mib_per_s,
            if self.consumers == 0 {
                self.confirmed
            } else {
                self.delivered
            },
            if self.consumers == 0 {
                "published"
            } else {
                "delivered"
            },
            self.elapsed_s
        ));
        s.push_str(&format!(
            "  publish confirm  {}\n",
            self.publish_confirm.line()
        ));
        s.push_str(&format!("  end to end       {}\n", self.end_to_end.line()));
        s.push_str(&format!(
            "  verified         {} confirmed, {} delivered, {} duplicates, {} lost\n",
            self.confirmed, self.delivered, self.duplicates, self.lost
        ));
        if let Some(cpu) = self.broker_cpu_s {
            s.push_str(&format!(
                "  broker cpu       {:.2} s ({:.0}% of one core{})\n",
                cpu,
                100.0 * cpu / self.elapsed_s,
                self.broker_cpu_us_per_msg
                    .map(|us| format!(", {us:.1} µs per message"))
                    .unwrap_or_default()
            ));
        }
        s
    }
}

/// A bar of delivered messages on standard error; hidden for --json or without a terminal.
pub(crate) fn progress_bar(args: &LoadArgs, total: u64) -> ProgressBar {
    if args.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} delivered ({per_sec})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
