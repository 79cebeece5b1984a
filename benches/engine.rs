//! Engine benchmarks: index 1M published tasks, then dispatch and ack all of them through
//! the ready heap and the lease table (no I/O: the pure state machine's cost per task).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use squall::broker::{Committed, Effect, Engine, EngineConfig};

const TASKS: u64 = 1_000_000;

fn published() -> Engine {
    let mut e = Engine::new(EngineConfig::default(), 1);
    let queue: Arc<str> = Arc::from("bench");
    let tasks: Vec<Committed> = (1..=TASKS)
        .map(|id| Committed {
            queue: queue.clone(),
            id,
            priority: (id % 4) as i32,
            not_before_ms: 0,
            max_attempts: 0,
            lease_ms: 0,
            expires_ms: 0,
        })
        .collect();
    e.publish_committed(&tasks, 1);
    e
}

fn engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_1M_tasks");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(TASKS));
    group.bench_function("publish_committed", |b| b.iter(published));
    group.bench_function("dispatch_and_ack", |b| {
        b.iter_batched(
            || {
                let mut e = published();
                for conn in 0..4 {
                    e.subscribe(conn, 1, "bench", 256).unwrap();
                }
                e
            },
            |mut e| {
                let mut out = Vec::with_capacity(1024);
                let mut acked = 0;
                while acked < TASKS {
                    e.dispatch(2, &mut out);
                    for effect in out.drain(..) {
                        if let Effect::Deliver(d) = effect {
                            e.ack(d.conn, d.task, d.token, bytes::Bytes::new(), 2)
                                .unwrap();
                            acked += 1;
                        }
                    }
                }
                e
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
