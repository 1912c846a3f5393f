"""stages.infer.admission: at most the current limit inside, the limit read anew as holders leave."""

from __future__ import annotations

import asyncio

from stages.infer.admission import Admission


async def test_holders_past_the_limit_wait_until_one_leaves() -> None:
    admission = Admission(lambda: 2)
    release = asyncio.Event()
    entered: list[int] = []

    async def hold(index: int) -> None:
        async with admission.held():
            entered.append(index)
            await release.wait()

    tasks = [asyncio.create_task(hold(i)) for i in range(5)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert entered == [0, 1] and admission.inside == 2
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(entered) == [0, 1, 2, 3, 4] and admission.inside == 0


async def test_a_bigger_limit_lets_more_in_when_one_leaves() -> None:
    limit = 1
    admission = Admission(lambda: limit)
    gates = [asyncio.Event() for _ in range(4)]
    entered: list[int] = []

    async def hold(index: int) -> None:
        async with admission.held():
            entered.append(index)
            await gates[index].wait()

    tasks = [asyncio.create_task(hold(i)) for i in range(4)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert entered == [0]
    limit = 3  # auto chose a bigger batch: more items may wait for it
    gates[0].set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert entered == [0, 1, 2, 3] and admission.inside == 3
    for gate in gates:
        gate.set()
    await asyncio.gather(*tasks)


async def test_a_holder_that_fails_still_leaves() -> None:
    admission = Admission(lambda: 1)
    try:
        async with admission.held():
            raise ValueError("a bad frame")
    except ValueError:
        pass
    async with admission.held():
        assert admission.inside == 1
