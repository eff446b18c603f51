"""The benchmark's work, in a module of its own: Ray workers import a remote function's module
to run it, and this one imports nothing heavy (a notebook's functions travel by value)."""

from __future__ import annotations

import time

import ray


@ray.remote(num_cpus=1)
def work() -> float:
    started = time.time()
    time.sleep(3)
    return started


@ray.remote(num_cpus=1)
def started_at() -> float:
    return time.time()
