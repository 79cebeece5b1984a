//! Sizing the store to the volume that holds it: how large journal segments may be,
//! how much free space a checkpoint needs, and the reserve below which publishes are
//! refused so that settlements and purges (which free space) still work. Decided once
//! at open from the volume's size; the free space is read by the writer
//! ([`SpaceGuard`]). Nothing here writes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal;

/// The smallest journal segment the store shrinks to.
pub const MIN_SEGMENT_BYTES: u64 = 1024 * 1024;
/// A segment is at most this fraction of the volume (1/32): the journal needs the
/// current segment, a sealed one waiting for its checkpoint, and the checkpoint's
/// reserve at once.
const SEGMENT_FRACTION: u64 = 32;
/// Room for sled's own files at their smallest (its metadata, heap slabs).
pub const MIN_INDEX_BYTES: u64 = 4 * 1024 * 1024;
/// Free space a checkpoint (a sled flush) needs beyond four segments.
const MIN_CHECKPOINT_RESERVE: u64 = 8 * 1024 * 1024;
/// Segments of journal that settlements and purges may write, below the publish
/// reserve, before a checkpoint gives them back: a purge of 30,000 tasks writes about
/// one 2 MiB segment (measured on a 64 MiB volume, where one segment was not enough).
const SETTLEMENT_SEGMENTS: u64 = 4;
/// How often the writer reads the free space while it stages publishes.
const CHECK_EVERY: Duration = Duration::from_millis(10);

/// How the store uses its volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Bytes of the volume holding the data directory.
    pub volume_bytes: u64,
    /// Journal segment size in use (the configured one, or smaller to fit).
    pub segment_bytes: u64,
    /// Free bytes below which no checkpoint is attempted: four segments and 8 MiB. A
    /// sled flush writes every leaf changed since the last one whole, into new slots
    /// (sized up to 1.5 times the leaf) before it frees the old ones: measured on a
    /// 64 MiB volume with 1 KiB tasks, a flush after a purge of 29,000 tasks failed
    /// with 10 MiB free (three 2 MiB segments and 4 MiB).
    pub checkpoint_reserve: u64,
    /// Free bytes below which publishes are refused with STORAGE: four segments plus
    /// the checkpoint reserve, kept for settlements, purges and the checkpoints that
    /// give space back.
    pub publish_reserve: u64,
    /// The smallest volume this sizing works on.
    pub min_volume_bytes: u64,
}

/// The volume cannot hold what the store needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the volume holding the data directory has {volume_bytes} bytes; the store needs at \
     least {needed_bytes} ({MIN_INDEX_BYTES} for the index, two journal segments of \
     {segment_bytes} and a reserve of {reserve_bytes} for checkpoints, settlements and purges)"
)]
pub struct VolumeTooSmall {
    /// Size of the volume.
    pub volume_bytes: u64,
    /// What the smallest sizing needs.
    pub needed_bytes: u64,
    /// Segment size of the smallest sizing.
    pub segment_bytes: u64,
    /// Its publish reserve.
    pub reserve_bytes: u64,
}

impl Sizing {
    /// The sizing for a volume of `volume_bytes` and a configured segment size: the
    /// segment shrinks (to [`MIN_SEGMENT_BYTES`] at least) to a 32nd of the volume.
    pub fn for_volume(
        volume_bytes: u64,
        configured_segment: u64,
    ) -> Result<Sizing, VolumeTooSmall> {
        let segment_bytes = configured_segment
            .min((volume_bytes / SEGMENT_FRACTION).max(MIN_SEGMENT_BYTES))
            .max(1);
        let checkpoint_reserve = segment_bytes
            .saturating_mul(4)
            .saturating_add(MIN_CHECKPOINT_RESERVE);
        let publish_reserve = segment_bytes
            .saturating_mul(SETTLEMENT_SEGMENTS)
            .saturating_add(checkpoint_reserve);
        let min_volume_bytes = MIN_INDEX_BYTES
            .saturating_add(segment_bytes.saturating_mul(2))
            .saturating_add(publish_reserve);
        if volume_bytes < min_volume_bytes {
            return Err(VolumeTooSmall {
                volume_bytes,
                needed_bytes: min_volume_bytes,
                segment_bytes,
                reserve_bytes: publish_reserve,
            });
        }
        debug_assert!(publish_reserve > checkpoint_reserve);
        Ok(Sizing {
            volume_bytes,
            segment_bytes,
            checkpoint_reserve,
            publish_reserve,
            min_volume_bytes,
        })
    }

    /// The sizing for the volume holding `dir` (which exists).
    pub fn for_dir(
        dir: &Path,
        configured_segment: u64,
    ) -> std::io::Result<Result<Sizing, VolumeTooSmall>> {
        let volume = journal::volume_bytes(dir)?;
        Ok(Sizing::for_volume(volume, configured_segment))
    }
}

/// The writer's view of the free space: whether publishes must be refused.
/// Why publishes are refused while `free` bytes are below the `reserve`.
pub(crate) fn low_space_reason(free: u64, reserve: u64) -> Arc<str> {
    Arc::from(format!(
        "free disk space ({free} bytes) is below the reserve of {reserve} bytes kept for \
         settlements and purges; publishes are refused until space returns"
    ))
}

#[derive(Debug)]
pub(crate) struct SpaceGuard {
    dir: std::path::PathBuf,
    reserve: u64,
    checked: Option<Instant>,
    /// Free bytes when last read, if below the reserve.
    low: Option<u64>,
}

impl SpaceGuard {
    pub(crate) fn new(dir: std::path::PathBuf, reserve: u64) -> SpaceGuard {
        SpaceGuard {
            dir,
            reserve,
            checked: None,
            low: None,
        }
    }

    /// Free bytes if they are below the reserve (read at most every 10 ms).
    pub(crate) fn short(&mut self) -> Option<u64> {
        if self.checked.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return self.low;
        }
        self.checked = Some(Instant::now());
        let low = match journal::free_bytes(&self.dir) {
            Ok(free) => (free < self.reserve).then_some(free),
            // Unknown: let the journal find out.
            Err(_) => None,
        };
        match (self.low, low) {
            (None, Some(free)) => tracing::warn!(
                free,
                reserve = self.reserve,
                "disk space below the reserve: publishes are refused with STORAGE; \
                 settlements, purges and checkpoints go on and give space back"
            ),
            (Some(_), None) => {
                tracing::info!("disk space above the reserve again: publishes resume")
            }
            _ => {}
        }
        self.low = low;
        low
    }

    /// Whether the free space was below the reserve when last read.
    pub(crate) fn is_low(&self) -> bool {
        self.low.is_some()
    }

    /// The reserve.
    pub(crate) fn reserve(&self) -> u64 {
        self.reserve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn segments_shrink_to_the_volume_and_a_volume_too_small_is_refused_with_numbers() {
        let big = Sizing::for_volume(100 * 1024 * MIB, 32 * MIB).unwrap();
        assert_eq!(
            big.segment_bytes,
            32 * MIB,
            "the configured size when it fits"
        );
        assert_eq!(big.checkpoint_reserve, 136 * MIB);
        assert_eq!(big.publish_reserve, 264 * MIB);
        let small = Sizing::for_volume(64 * MIB, 32 * MIB).unwrap();
        assert_eq!(small.segment_bytes, 2 * MIB);
        assert_eq!(small.checkpoint_reserve, 16 * MIB);
        assert_eq!(small.publish_reserve, 24 * MIB);
        assert!(small.min_volume_bytes <= 64 * MIB);
        let tiny = Sizing::for_volume(24 * MIB, 32 * MIB).unwrap();
        assert_eq!(tiny.segment_bytes, MIB);
        let err = Sizing::for_volume(8 * MIB, 32 * MIB).unwrap_err();
        assert_eq!(err.segment_bytes, MIB);
        assert_eq!(err.needed_bytes, 4 * MIB + 2 * MIB + 16 * MIB);
        let msg = err.to_string();
        assert!(
            msg.contains(&(8 * MIB).to_string()) && msg.contains(&(22 * MIB).to_string()),
            "{msg}"
        );
    }
}
