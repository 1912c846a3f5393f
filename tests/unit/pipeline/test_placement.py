"""Placement rules of the cluster: fair shares, the neediest first, no stream moved for an
imbalance of one. Simulated rounds: every worker plans on the same facts, claims race (the first
wins, as a compare-and-set would), releases apply at once."""

from __future__ import annotations

from collections import Counter

from pipeline.cluster.placement import Plan, fair_share, plan


def test_fair_share_is_the_ceiling() -> None:
    assert [fair_share(12, w) for w in (1, 3, 4, 5)] == [12, 4, 3, 3]
    assert fair_share(0, 3) == 0 and fair_share(5, 0) == 0


def settle(catalog: list[str], owners: dict[str, str], live: list[str], rounds: int = 20) -> list[str]:
    """Rounds until nothing changes; every stream that changed owner, once per move."""
    moves: list[str] = []
    for _ in range(rounds):
        plans = {worker: plan(worker, catalog, owners, live) for worker in live}
        changed = False
        for step in plans.values():
            if step.release is not None:
                del owners[step.release]
                moves.append(step.release)
                changed = True
        for worker, step in plans.items():
            won = 0
            for stream_id in step.claim:
                if won < step.room and stream_id not in owners:
                    owners[stream_id] = worker
                    won += 1
                    changed = True
        if not changed:
            return moves
    raise AssertionError(f"no steady state in {rounds} rounds: {owners}")


def counts(owners: dict[str, str], live: list[str]) -> list[int]:
    owned = Counter(owners.values())
    return sorted(owned.get(worker, 0) for worker in live)


def test_twelve_streams_spread_over_three_workers() -> None:
    catalog = [f"s{n:02}" for n in range(12)]
    owners: dict[str, str] = {}
    settle(catalog, owners, ["a", "b", "c"])
    assert counts(owners, ["a", "b", "c"]) == [4, 4, 4]


def test_a_joining_worker_gets_its_share_and_no_stream_moves_twice() -> None:
    catalog = [f"s{n:02}" for n in range(12)]
    owners: dict[str, str] = {}
    settle(catalog, owners, ["a", "b", "c"])
    moves = settle(catalog, owners, ["a", "b", "c", "d"])
    assert counts(owners, ["a", "b", "c", "d"]) == [3, 3, 3, 3]
    assert len(moves) == 3 and len(set(moves)) == 3  # exactly its share moved, each stream once


def test_a_dead_workers_streams_spread_over_the_rest() -> None:
    catalog = [f"s{n:02}" for n in range(12)]
    owners: dict[str, str] = {}
    settle(catalog, owners, ["a", "b", "c", "d"])
    assert plan("a", catalog, owners, ["a", "b", "c"]).claim  # d is not live: its streams count as unowned
    for stream_id in [s for s, worker in owners.items() if worker == "d"]:
        del owners[stream_id]  # d died: its leases expire
    moves = settle(catalog, owners, ["a", "b", "c"])
    assert counts(owners, ["a", "b", "c"]) == [4, 4, 4]
    assert moves == []  # nothing taken from a live worker
    assert "d" not in owners.values()


def test_an_imbalance_of_one_moves_nothing() -> None:
    owners = {"s0": "a", "s1": "a", "s2": "b"}
    assert plan("a", ["s0", "s1", "s2"], owners, ["a", "b"]) == Plan()
    assert plan("b", ["s0", "s1", "s2"], owners, ["a", "b"]) == Plan()


def test_an_uneven_count_still_converges_to_within_one() -> None:
    catalog = [f"s{n:02}" for n in range(13)]
    owners = {stream_id: worker for stream_id, worker in zip(catalog, "aaaabbbbccccc", strict=True)}
    settle(catalog, owners, ["a", "b", "c", "d"])
    got = counts(owners, ["a", "b", "c", "d"])
    assert got[-1] - got[0] <= 1 and sum(got) == 13


def test_a_worker_down_to_the_floor_gives_no_more_while_the_newcomer_claims() -> None:
    """Seen mid-join: a gave one up (the newcomer d took it), b and c have not yet. a stops at an
    even split's floor (12 // 4 = 3); b and c still give one each."""
    catalog = [f"s{n:02}" for n in range(12)]
    owners = dict(zip(catalog, "aaabbbbccccd", strict=True))
    live = ["a", "b", "c", "d"]
    assert plan("a", catalog, owners, live) == Plan()
    assert plan("b", catalog, owners, live).release is not None
    assert plan("c", catalog, owners, live).release is not None
