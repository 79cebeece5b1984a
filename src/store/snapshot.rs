//! A dump of the whole store, for the cluster's snapshots (issue 15): its format, the
//! streaming reader and writer of it, and the public API that asks the writer thread
//! to export the store into a file or to replace the store's content with a dump.
//! The writer-side work (reading sled between groups, importing as journaled groups)
//! is `writer/snapshot.rs`; what a snapshot file holds beside the dump (membership,
//! applied log id) is the cluster's (`cluster/snapshot.rs`).
//!
//! Format (after whatever header the caller wrote before it), little-endian:
//! `b"SQDUMP01"`, then one record per stored key in key order:
//! `1u8, key_len u32, key, value_len u32, value`, then `0u8, records u64, crc32 u32`
//! where the checksum covers every byte from the magic through `records`. A `B` value
//! is the body record itself (where the store keeps the body is the store's own
//! business); every other value is sled's value as it is. The store-local journal
//! floor is left out. Memory: one record at a time, whatever the store's size.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};

use super::keys;

const MAGIC: &[u8; 8] = b"SQDUMP01";
const RECORD: u8 = 1;
const END: u8 = 0;
/// Largest key accepted from a dump (sled keys are small: a prefix and a name).
const MAX_KEY: u32 = 64 * 1024;

/// A finished export or import: records and bytes of the dump.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Records (stored keys) in the dump.
    pub records: u64,
    /// Bytes of the dump, trailer included.
    pub bytes: u64,
}

/// What a snapshot job does with its result.
pub(crate) type Reply<T> = Box<dyn FnOnce(Result<T, super::StoreError>) + Send>;

/// A job for the writer thread, run between two groups (so that it sees exactly what
/// every job before it applied and none after it).
pub(crate) enum SnapshotJob {
    /// Append a dump of the store to `out` (positioned where the dump starts).
    Export {
        out: File,
        reply: Reply<(File, DumpStats)>,
    },
    /// Replace the store's content with the dump `input` holds (positioned at its
    /// magic), and record `applied` as the last Raft entry applied.
    Import {
        input: File,
        applied: Option<(u64, u64, u64)>,
        reply: Reply<DumpStats>,
    },
}

/// Whether a key is written into a dump: everything but what only this store's own
/// files give a meaning to.
pub(crate) fn dumped(key: &[u8]) -> bool {
    key != keys::JOURNAL_FLOOR
}

/// Writes a dump record by record, checksumming as it goes.
pub(crate) struct DumpWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    stats: DumpStats,
}

impl<W: Write> DumpWriter<W> {
    /// Starts a dump (writes the magic).
    pub(crate) fn new(out: W) -> io::Result<DumpWriter<W>> {
        let mut w = DumpWriter {
            out,
            crc: crc32fast::Hasher::new(),
            stats: DumpStats::default(),
        };
        w.put(MAGIC)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.stats.bytes += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    fn put_len(&mut self, len: usize) -> io::Result<()> {
        let len = u32::try_from(len).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "a stored value is over 4 GiB")
        })?;
        self.put(&len.to_le_bytes())
    }

    /// Adds one stored key and its value.
    pub(crate) fn record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        debug_assert!(!key.is_empty() && key.len() <= MAX_KEY as usize);
        self.put(&[RECORD])?;
        self.put_len(key.len())?;
        self.put(key)?;
        self.put_len(value.len())?;
        self.put(value)?;
        self.stats.records += 1;
        Ok(())
    }

    /// Writes the trailer; returns the writer and what was written.
    pub(crate) fn finish(mut self) -> io::Result<(W, DumpStats)> {
        self.put(&[END])?;
        let records = self.stats.records.to_le_bytes();
        self.put(&records)?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.stats.bytes += 4;
        self.out.flush()?;
        Ok((self.out, self.stats))
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads a dump record by record. The checksum is checked at the end only: call
/// [`verify`] over the whole dump before acting on any record of it.
pub(crate) struct DumpReader<R: BufRead> {
    input: R,
    crc: crc32fast::Hasher,
    stats: DumpStats,
    done: bool,
}

impl<R: BufRead> DumpReader<R> {
    /// Reads the magic.
    pub(crate) fn new(input: R) -> io::Result<DumpReader<R>> {
        let mut r = DumpReader {
            input,
            crc: crc32fast::Hasher::new(),
            stats: DumpStats::default(),
            done: false,
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("not a store dump (bad magic)"));
        }
        Ok(r)
    }

    fn take(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid("the dump ends early")
            } else {
                e
            }
        })?;
        self.crc.update(buf);
        self.stats.bytes += buf.len() as u64;
        Ok(())
    }

    fn len(&mut self, max: u32) -> io::Result<usize> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        let len = u32::from_le_bytes(b);
        if len > max {
            return Err(invalid(format!("a dump record of {len} bytes")));
        }
        Ok(len as usize)
    }

    /// The next record into `key` and `value` (replaced), or `None` at a good end. An
    /// end whose count or checksum is wrong is an error.
    pub(crate) fn next_into(
        &mut self,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> io::Result<Option<()>> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        match tag[0] {
            RECORD => {
                let klen = self.len(MAX_KEY)?;
                key.resize(klen, 0);
                self.take(key)?;
                let vlen = self.len(u32::MAX)?;
                // Grown as the bytes arrive: a corrupt length costs an error, not memory.
                value.clear();
                let mut limited = (&mut self.input).take(vlen as u64);
                let got = limited.read_to_end(value)?;
                if got != vlen {
                    return Err(invalid("the dump ends early"));
                }
                self.crc.update(value);
                self.stats.bytes += vlen as u64;
                if key.is_empty() {
                    return Err(invalid("a dump record without a key"));
                }
                self.stats.records += 1;
                Ok(Some(()))
            }
            END => {
                let mut count = [0u8; 8];
                self.take(&mut count)?;
                let expected = self.crc.clone().finalize();
                let mut crc = [0u8; 4];
                self.input.read_exact(&mut crc)?;
                self.stats.bytes += 4;
                if u32::from_le_bytes(crc) != expected {
                    return Err(invalid("the dump fails its checksum"));
                }
                if u64::from_le_bytes(count) != self.stats.records {
                    return Err(invalid(format!(
                        "the dump says {} records and holds {}",
                        u64::from_le_bytes(count),
                        self.stats.records
                    )));
                }
                self.done = true;
                Ok(None)
            }
            other => Err(invalid(format!("unknown dump record tag {other}"))),
        }
    }

    /// What was read so far.
    pub(crate) fn stats(&self) -> DumpStats {
        self.stats
    }
}

/// Reads a whole dump from `input` (positioned at its magic) and checks its records,
/// count and checksum, one record in memory at a time.
pub fn verify(input: impl Read) -> io::Result<DumpStats> {
    let mut reader = DumpReader::new(io::BufReader::with_capacity(1 << 16, input))?;
    let (mut key, mut value) = (Vec::new(), Vec::new());
    while reader.next_into(&mut key, &mut value)?.is_some() {}
    Ok(reader.stats())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut w = DumpWriter::new(Vec::new()).unwrap();
        for (k, v) in records {
            w.record(k, v).unwrap();
        }
        w.finish().unwrap().0
    }

    #[test]
    fn a_dump_reads_back_and_any_damage_is_an_error() {
        let records: &[(&[u8], &[u8])] = &[(b"Qjobs", b"cfg"), (b"S\0\0\0\0\0\0\0\x01", b"")];
        let bytes = dump(records);
        let stats = verify(&bytes[..]).unwrap();
        assert_eq!(stats.records, 2);
        assert_eq!(stats.bytes, bytes.len() as u64);
        let mut r = DumpReader::new(&bytes[..]).unwrap();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for (key, value) in records {
            r.next_into(&mut k, &mut v).unwrap().unwrap();
            assert_eq!((&k[..], &v[..]), (*key, *value));
        }
        assert!(r.next_into(&mut k, &mut v).unwrap().is_none());
        // Every flipped byte and every truncation is refused.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x41;
            assert!(verify(&bad[..]).is_err(), "byte {i} flipped");
            assert!(verify(&bytes[..i]).is_err(), "cut at {i}");
        }
    }
}
