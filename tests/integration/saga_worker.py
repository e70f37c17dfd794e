"""A saga worker process for the kill -9 test: runner, dispatcher and deadlines together."""

from __future__ import annotations

import asyncio
import sys

from examples import funds_transfer as ft

import chronik
from chronik.sagas import CommandDispatcher, DeadlineWorker, SagaRunner


async def main(url: str) -> None:
    async with await chronik.connect(url) as store:
        runner = SagaRunner(store, ft.transfer_saga, batch_size=7, poll_interval=0.05)
        dispatcher = CommandDispatcher(
            store,
            [ft.transfer_saga],
            ft.account_executor(store),
            rejected_by=(ft.AccountRejected,),
            poll_interval=0.05,
            claim_timeout=1.0,  # a killed worker's claims are taken over soon
        )
        deadlines = DeadlineWorker(store, [ft.transfer_saga], poll_interval=0.1)
        await asyncio.gather(runner.run(), dispatcher.run(), deadlines.run())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
