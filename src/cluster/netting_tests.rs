//! A member's held-back entries applied as received (`Command::Received`, netted
//! before the store sees them: `netting.rs`) leave its store exactly as the same
//! entries decoded whole do: the two stores' dumps are equal byte for byte, over
//! random streams of publishes (numbered or not, repeated, with idempotency keys),
//! acks, patches and successes. Negative controls run: a netted publish whose
//! numbering is not checked, one that does not raise the watermark, a publish taken
//! out although not all its tasks are netted, and a task with an idempotency key
//! netted, each make the dumps differ.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};

use super::codec;
use super::tests::{close, open_machine, Machine, Tell, NODE};
use super::types::{Command, Entry, Job, LogId, Origin};
use crate::model::{Mutation, StatePatch};
use crate::store::{Store, Writer};

/// A small deterministic generator (no dependency for it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn task(id: u64, key: Option<String>, created_ms: u64) -> Mutation {
    let Mutation::Insert(mut task) = super::tests::insert(id, if id % 3 == 0 { "b" } else { "a" })
    else {
        unreachable!("an insert")
    };
    task.state.created_ms = created_ms;
    task.state.updated_ms = created_ms;
    task.body.created_ms = created_ms;
    task.body.payload = bytes::Bytes::from(format!("payload {id}"));
    task.body.idempotency_key = key;
    Mutation::Insert(task)
}

/// `entries` entries of another leader, each of 1–4 jobs: publishes (1–3 tasks, some
/// with an idempotency key, most numbered, some a repeat of an earlier number), acks
/// of live and unknown tasks, patches and successes of live tasks.
fn stream(seed: u64, entries: u64) -> Vec<Entry> {
    let mut rng = Rng(seed);
    let (mut next_id, mut now) = (1_000u64, 1_700_000_000_000u64);
    let mut live: Vec<u64> = Vec::new();
    let producers: [Arc<str>; 2] = [Arc::from("p1"), Arc::from("p2")];
    let mut sequences = [0u64; 2];
    let mut published: Vec<(usize, u64, usize)> = Vec::new();
    let mut out = Vec::new();
    for index in 1..=entries {
        let mut jobs = Vec::new();
        for _ in 0..1 + rng.below(4) {
            now += 1 + rng.below(5);
            let mut muts = Vec::new();
            match rng.below(10) {
                0..=4 => {
                    let tasks = 1 + rng.below(3) as usize;
                    let repeat = rng.below(10) == 0 && !published.is_empty();
                    for _ in 0..tasks {
                        let key = (rng.below(5) == 0).then(|| format!("k{}", rng.below(8)));
                        muts.push(task(next_id, key, now));
                        live.push(next_id);
                        next_id += 1;
                    }
                    if rng.below(4) != 0 {
                        let (p, sequence) = if repeat {
                            let (p, s, _) = published[rng.below(published.len() as u64) as usize];
                            (p, s)
                        } else {
                            let p = rng.below(2) as usize;
                            sequences[p] += 1 + u64::from(rng.below(8) == 0);
                            published.push((p, sequences[p], tasks));
                            (p, sequences[p])
                        };
                        muts.push(Mutation::Numbered {
                            producer: producers[p].clone(),
                            sequence,
                        });
                    }
                }
                5..=7 => {
                    for _ in 0..1 + rng.below(3) {
                        let id = if live.is_empty() || rng.below(10) == 0 {
                            next_id + 50
                        } else {
                            live.swap_remove(rng.below(live.len() as u64) as usize)
                        };
                        muts.push(Mutation::Remove { id });
                    }
                }
                8 if !live.is_empty() => {
                    let id = live[rng.below(live.len() as u64) as usize];
                    muts.push(Mutation::Patch {
                        id,
                        patch: StatePatch {
                            attempts: Some(1),
                            updated_ms: now,
                            ..StatePatch::default()
                        },
                    });
                    if rng.below(2) == 0 {
                        muts.push(Mutation::Remove { id: next_id + 60 });
                    }
                }
                _ if !live.is_empty() => {
                    let id = live[rng.below(live.len() as u64) as usize];
                    muts.push(Mutation::Succeed {
                        id,
                        result: bytes::Bytes::from_static(b"done"),
                        updated_ms: now,
                    });
                }
                _ => continue,
            }
            let origin = Origin {
                node: NODE + 1,
                run: 1,
                seq: index * 10 + jobs.len() as u64,
            };
            jobs.push(Job::new(origin, muts.into()));
        }
        if jobs.is_empty() {
            continue;
        }
        out.push(Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, NODE + 1), index),
            payload: EntryPayload::Normal(Command::Jobs(jobs.into())),
        });
    }
    // Last, a publish of the highest ids, acked at once: only its netting raises the
    // watermark to them.
    let origin = Origin {
        node: NODE + 1,
        run: 1,
        seq: 1,
    };
    let last = [
        vec![
            task(next_id + 100, None, now),
            task(next_id + 101, None, now),
        ],
        vec![
            Mutation::Remove { id: next_id + 100 },
            Mutation::Remove { id: next_id + 101 },
        ],
    ];
    for (i, muts) in last.into_iter().enumerate() {
        out.push(Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, NODE + 1), entries + 1 + i as u64),
            payload: EntryPayload::Normal(Command::Jobs(
                vec![Job::new(origin, muts.into())].into(),
            )),
        });
    }
    out
}

/// `entry` as a member receives it: sketched from its bytes.
fn received(entry: &Entry) -> Entry {
    let bytes = codec::entry_bytes(entry);
    let received = codec::sketch(&bytes).expect("an entry of the hot path's kinds");
    assert!(matches!(
        received.payload,
        EntryPayload::Normal(Command::Received(_))
    ));
    received
}

/// Applies `entries` on a member (as received or decoded), in batches, submitting
/// what is held now and then (a snapshot build's flush); returns the store's dump and
/// how many tasks it netted.
async fn applied(entries: &[Entry], as_received: bool, flush_every: usize) -> (Vec<u8>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer, mut sm) = following(dir.path());
    for (i, batch) in entries.chunks(3).enumerate() {
        let batch: Vec<Entry> = batch
            .iter()
            .map(|e| if as_received { received(e) } else { e.clone() })
            .collect();
        sm.apply(batch).await.expect("applied");
        if (i + 1) % flush_every == 0 {
            drop(sm.get_snapshot_builder().await);
        }
    }
    drop(sm.get_snapshot_builder().await);
    let dump = dump(&writer, dir.path()).await;
    let netted = writer
        .stats()
        .netted
        .load(std::sync::atomic::Ordering::Relaxed);
    close(store, writer, sm);
    (dump, netted)
}

fn following(dir: &std::path::Path) -> (Store, Writer<Tell>, Machine) {
    let (store, writer, sm) = open_machine(dir, super::replicate::Pending::default());
    store.set_replicated();
    store.set_caching_bodies(false);
    (store, writer, sm)
}

async fn dump(writer: &Writer<Tell>, dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("dump");
    let file = std::fs::File::create(&path).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    writer.handle().export_snapshot(file, move |r| {
        let _ = tx.send(r.map(|_| ()));
    });
    rx.await.unwrap().expect("exported");
    std::fs::read(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_entries_leave_the_store_as_decoded_ones_do() {
    let mut netted_somewhere = false;
    for seed in 0..24u64 {
        let entries = stream(seed, 40);
        let flush_every = 1 + (seed % 5) as usize;
        let (decoded, _) = applied(&entries, false, flush_every).await;
        let (received, netted) = applied(&entries, true, flush_every).await;
        assert!(
            decoded == received,
            "seed {seed}: the stores differ ({} and {} bytes of dump)",
            decoded.len(),
            received.len()
        );
        netted_somewhere |= netted > 0;
    }
    assert!(netted_somewhere, "the streams net tasks");
}

/// A received job that does not decode when its entries are submitted (it was checked
/// when it arrived, so only a bug gets here) fails the apply that submits it, and
/// nothing of those entries nor after them reaches the store, not even the record
/// that they were applied: the Raft node stops and a restart applies them again from
/// the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_job_that_does_not_decode_fails_the_apply_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer, mut sm) = following(dir.path());
    let entries = stream(7, 4);
    let mut bad = received(&entries[0]);
    let EntryPayload::Normal(Command::Received(r)) = &mut bad.payload else {
        unreachable!("received")
    };
    let mut damaged = super::types::Received {
        bytes: r.bytes.clone(),
        jobs: r.jobs.clone(),
        events: r.events.clone(),
        payload_bytes: r.payload_bytes,
        mutations: r.mutations,
    };
    // Its first job points at bytes that are not one, and is not netted (so decoded).
    damaged.jobs[0].at = 0..damaged.bytes.len().min(3);
    damaged.jobs[0].publish = false;
    *r = Arc::new(damaged);
    sm.apply([bad]).await.expect("held back");
    // An entry of this node's own: what is held is submitted first, and fails.
    let mine = Origin {
        node: NODE,
        run: super::tests::RUN,
        seq: 1,
    };
    let refused = sm
        .apply([super::tests::command(mine, vec![task(5, None, 1)], 2, 2)])
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        store.raft_applied().unwrap(),
        None,
        "nothing recorded applied"
    );
    assert!(
        store.get_state(5).unwrap().is_none(),
        "the entry after it is not applied"
    );
    close(store, writer, sm);
}
