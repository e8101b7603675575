"""A progress bar on the driver over a Ray Train run, moved by the metrics its workers report.

Worker output stays in Ray's log files unless --verbose (cluster.runtime), so a training run shows
its progress here instead: a Ray Train callback, which runs in the Train controller, passes rank 0's
reported count (e.g. "epoch") through a Ray queue to a thread on the driver that moves a tqdm bar.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ray.train import UserCallback
from ray.util.queue import Empty, Queue
from tqdm import tqdm


class _Forward(UserCallback):
    def __init__(self, queue: Queue, key: str):
        self.queue, self.key = queue, key

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if metrics and self.key in metrics[0]:
            self.queue.put((metrics[0][self.key], metrics[0].get("status")))


@contextmanager
def train_progress(desc: str, total: int, key: str = "epoch") -> Iterator[UserCallback]:
    """Yields the callback to pass as RunConfig(callbacks=[...]); while the block runs, a bar of
    `total` follows the value of `key` in rank 0's reports (a running count: epochs, steps); a report's
    "status" string, if any, is shown after the bar (what the run does once the count stops moving)."""
    queue = Queue(actor_options={"num_cpus": 0})  # never waits for a CPU the workers hold
    finished = threading.Event()
    bar = tqdm(total=total, desc=desc, unit=key, mininterval=1)

    def follow() -> None:
        while True:
            try:
                count, status = queue.get(timeout=0.5)
                bar.update(count - bar.n)
                if status:
                    bar.set_postfix_str(status)
            except Empty:
                if finished.is_set():  # the run has returned: every report is in the queue already
                    return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield _Forward(queue, key)
    finally:
        finished.set()
        thread.join()
        bar.close()
        queue.shutdown()
