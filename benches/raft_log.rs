//! The Raft log's cost (issue 15): appends of N entries confirmed by one `fdatasync`
//! (openraft hands every entry pending at once to one `append`), for N from 1 to 256,
//! on the journal-format log of `src/cluster/log.rs` in a temp directory.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use squall::cluster::log::LogStore;
use squall::cluster::types::Entry;

fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("raft_log_append_fsync");
    group.measurement_time(Duration::from_secs(5));
    for n in [1u64, 16, 256] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        let mut next = 0u64;
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                let entries: Vec<Entry> = (next..next + n)
                    .map(|index| Entry {
                        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                        payload: EntryPayload::Blank,
                    })
                    .collect();
                next += n;
                rt.block_on(log.blocking_append(entries)).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
