"""Rendezvous (highest-random-weight) hashing: which node of several addresses owns a
queue. A byte-for-byte transcription of client/src/rendezvous.rs, pinned by the same
test vectors: every client, in any language, must pick the same owner.

The weight of (node, queue) is FNV-1a (64-bit) over the node name's UTF-8 bytes, one
0xFF byte, and the queue name's bytes, passed through MurmurHash3's fmix64. The owner is
the node with the highest weight; equal weights go to the greater node name (bytewise).
"""

from __future__ import annotations

from collections.abc import Sequence

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x00000100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF


def fmix64(k: int) -> int:
    """MurmurHash3's 64-bit finaliser."""
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _MASK
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _MASK
    k ^= k >> 33
    return k


def weight(node: str, queue: str) -> int:
    """The rendezvous weight of `queue` on `node`."""
    h = _FNV_OFFSET
    for b in node.encode() + b"\xff" + queue.encode():
        h ^= b
        h = (h * _FNV_PRIME) & _MASK
    return fmix64(h)


def owner(nodes: Sequence[str], queue: str) -> int | None:
    """The index in `nodes` of the node that owns `queue`, or None for an empty list."""
    best: int | None = None
    best_key: tuple[int, bytes] | None = None
    for i, node in enumerate(nodes):
        key = (weight(node, queue), node.encode())
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best
