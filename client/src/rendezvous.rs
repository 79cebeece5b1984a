//! Rendezvous (highest-random-weight) hashing: which node of a cluster owns a queue.
//! Pure functions, no I/O. Every client of a cluster, in any version or language, must
//! pick the same owner, so the weight is defined here byte for byte and pinned by test
//! vectors; changing it moves queues between nodes and is a breaking change.
//!
//! The weight of (node, queue) is FNV-1a (64-bit) over the node name's UTF-8 bytes, one
//! `0xFF` byte (never part of UTF-8, so `("ab","c")` and `("a","bc")` differ), and the
//! queue name's bytes, passed through the MurmurHash3 64-bit finaliser (`fmix64`) so
//! that names differing only in their last bytes still spread evenly. The owner is the
//! node with the highest weight; equal weights go to the greater node name (bytewise).
//! Adding a node moves exactly the queues whose new highest weight is the new node's;
//! removing one moves only its own queues.

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The rendezvous weight of `queue` on `node` (see the module docs for the exact
/// definition).
///
/// ```
/// assert_eq!(squall_client::rendezvous_weight("squall-0", "emails"), 0xd618_9dc0_c3c0_b202);
/// ```
pub fn rendezvous_weight(node: &str, queue: &str) -> u64 {
    let mut h = FNV_OFFSET;
    let bytes = node.bytes().chain([0xFF]).chain(queue.bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The index in `nodes` of the node that owns `queue`, or `None` for an empty list.
/// The order of `nodes` does not matter, only their names.
///
/// ```
/// use squall_client::rendezvous_owner;
///
/// let nodes = ["squall-0", "squall-1", "squall-2"];
/// let owner = rendezvous_owner(&nodes, "emails").unwrap();
/// // The same owner whatever the order of the list.
/// let reversed = ["squall-2", "squall-1", "squall-0"];
/// assert_eq!(reversed[rendezvous_owner(&reversed, "emails").unwrap()], nodes[owner]);
/// ```
pub fn rendezvous_owner<S: AsRef<str>>(nodes: &[S], queue: &str) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| {
            let (a, b) = (a.as_ref(), b.as_ref());
            rendezvous_weight(a, queue)
                .cmp(&rendezvous_weight(b, queue))
                .then_with(|| a.as_bytes().cmp(b.as_bytes()))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner<'a>(nodes: &[&'a str], queue: &str) -> &'a str {
        nodes[rendezvous_owner(nodes, queue).unwrap()]
    }

    /// Pinned values: if this test fails, queues would move between nodes for every
    /// deployed client. Do not update the numbers; restore the hash.
    #[test]
    fn weights_are_pinned() {
        assert_eq!(fmix64(0), 0);
        assert_eq!(rendezvous_weight("", ""), fmix64(0xaf64_724c_8602_eb6e));
        assert_eq!(
            rendezvous_weight("squall-0", "emails"),
            0xd618_9dc0_c3c0_b202
        );
        let nodes = ["squall-0", "squall-1", "squall-2"];
        let owners: Vec<&str> = ["emails", "reports", "q0", "q1", "q2", "q3"]
            .iter()
            .map(|q| owner(&nodes, q))
            .collect();
        assert_eq!(owners, PINNED_OWNERS);
    }

    /// Computed independently (a Python transcription of the definition in the module docs).
    const PINNED_OWNERS: [&str; 6] = [
        "squall-0", "squall-2", "squall-2", "squall-1", "squall-0", "squall-0",
    ];

    #[test]
    fn separator_keeps_node_and_queue_apart() {
        assert_ne!(rendezvous_weight("ab", "c"), rendezvous_weight("a", "bc"));
    }

    #[test]
    fn order_of_the_node_list_does_not_matter() {
        let a = ["n1", "n2", "n3", "n4"];
        let b = ["n4", "n2", "n1", "n3"];
        for i in 0..500 {
            let q = format!("queue-{i}");
            assert_eq!(owner(&a, &q), owner(&b, &q));
        }
        assert_eq!(rendezvous_owner::<&str>(&[], "q"), None);
    }

    /// Adding a node moves only queues to the new node; removing one moves only its
    /// queues; and the queues spread about evenly.
    #[test]
    fn adding_a_node_moves_only_the_queues_it_takes() {
        let three = ["10.0.0.1:7600", "10.0.0.2:7600", "10.0.0.3:7600"];
        let four = [
            "10.0.0.1:7600",
            "10.0.0.2:7600",
            "10.0.0.3:7600",
            "10.0.0.4:7600",
        ];
        let n = 4000;
        let mut moved = 0;
        let mut per_node = [0usize; 4];
        for i in 0..n {
            let q = format!("tenant-{i}.jobs");
            let (before, after) = (owner(&three, &q), owner(&four, &q));
            per_node[rendezvous_owner(&four, &q).unwrap()] += 1;
            if before != after {
                moved += 1;
                assert_eq!(
                    after, four[3],
                    "{q} moved from {before} to an old node {after}"
                );
            }
            // Removing the new node again restores the old owner.
            assert_eq!(owner(&three, &q), before);
        }
        // About a quarter moves (expected n/4 = 1000).
        assert!((800..1200).contains(&moved), "{moved} of {n} moved");
        for count in per_node {
            assert!((800..1200).contains(&count), "uneven spread {per_node:?}");
        }
    }
}
