"""Pure parts: the error hierarchy against the wire codes, rendezvous hashing against
the Rust client's pinned vectors, backoff arithmetic, duration conversion."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

import squall
from squall import errors, rendezvous
from squall._proto import squall_pb2 as pb
from squall.backoff import ReconnectPolicy
from squall.types import duration_ms


def test_every_wire_error_code_has_its_class() -> None:
    wire = {v.number: v.name for v in pb.ErrorCode.DESCRIPTOR.values if v.number != 0}
    assert set(errors.BY_CODE) == set(wire), "a broker error code has no exception class"
    for code, cls in errors.BY_CODE.items():
        assert cls.code == code
        assert issubclass(cls, squall.BrokerError) and issubclass(cls, squall.SquallError)
        assert getattr(squall, cls.__name__) is cls, f"{cls.__name__} is not exported"
        e = errors.from_wire(code, "why")
        assert type(e) is cls and e.code == code and wire[code] in str(e) and "why" in str(e)
    unknown = errors.from_wire(999, "new")
    assert type(unknown) is squall.BrokerError and unknown.code == 999 and "999" in str(unknown)


def test_pinned_numbers() -> None:
    # The same numbers proto/squall.proto and the Rust pinning test fix.
    assert (squall.QueueFull.code, squall.LeaseExpired.code, squall.StorageError.code) == (6, 5, 11)
    assert squall.ServerTimeout.code == 20 and squall.InvalidQueueName.code == 16


def test_nothing_was_applied_mirrors_the_rust_client() -> None:
    assert squall.Unavailable(1, "x").nothing_was_applied
    assert squall.QueueFull("x").nothing_was_applied
    assert not squall.ConnectionLost("x").nothing_was_applied
    assert not squall.Timeout("publish", 1).nothing_was_applied
    # A cluster's refusal after a proposal: the change may still commit.
    assert not squall.NotLeader("x").nothing_was_applied
    assert not squall.SequenceTooOld("x").nothing_was_applied


# Copied from client/src/rendezvous.rs (tests `weights_are_pinned`, PINNED_OWNERS):
# every client in every language must pick the same owner. Do not update the numbers.
PINNED_WEIGHT = ("squall-0", "emails", 0xD6189DC0C3C0B202)
PINNED_EMPTY = rendezvous.fmix64(0xAF64724C8602EB6E)
PINNED_NODES = ["squall-0", "squall-1", "squall-2"]
PINNED_QUEUES = ["emails", "reports", "q0", "q1", "q2", "q3"]
PINNED_OWNERS = ["squall-0", "squall-2", "squall-2", "squall-1", "squall-0", "squall-0"]


def test_rendezvous_matches_the_rust_vectors() -> None:
    assert rendezvous.fmix64(0) == 0
    assert rendezvous.weight("", "") == PINNED_EMPTY
    node, queue, w = PINNED_WEIGHT
    assert rendezvous.weight(node, queue) == w
    owners = [PINNED_NODES[rendezvous.owner(PINNED_NODES, q) or 0] for q in PINNED_QUEUES]
    assert owners == PINNED_OWNERS
    assert rendezvous.weight("ab", "c") != rendezvous.weight("a", "bc")
    assert rendezvous.owner([], "q") is None
    a, b = ["n1", "n2", "n3", "n4"], ["n4", "n2", "n1", "n3"]
    for i in range(200):
        assert a[rendezvous.owner(a, f"queue-{i}") or 0] == b[rendezvous.owner(b, f"queue-{i}") or 0]


def test_backoff_matches_the_rust_policy() -> None:
    p = ReconnectPolicy(jitter=0.0)
    assert [p.delay(n, 0.7) for n in (0, 1, 2, 10, 10**9)] == [0.1, 0.2, 0.4, 5.0, 5.0]
    p = ReconnectPolicy(jitter=0.5)
    for attempt in range(40):
        base = p.delay(attempt, 0.0)
        for i in range(101):
            d = p.delay(attempt, i / 100)
            assert base * 0.5 - 1e-12 <= d <= base <= 5.0
    assert p.delay(0, -3.0) == 0.1 and p.delay(0, math.nan) == 0.1 and p.delay(0, 7.0) == 0.05
    assert not ReconnectPolicy().gives_up_after(10**6)
    assert ReconnectPolicy.disabled().gives_up_after(0)
    assert ReconnectPolicy(max_attempts=3).gives_up_after(3)


def test_durations_round_up_to_milliseconds() -> None:
    assert duration_ms(0) == 0
    assert duration_ms(0.000001) == 1
    assert duration_ms(0.0015) == 2
    assert duration_ms(timedelta(seconds=30)) == 30_000
    assert duration_ms(2) == 2000
    with pytest.raises(ValueError):
        duration_ms(-0.5)
    with pytest.raises(TypeError):
        duration_ms(True)
