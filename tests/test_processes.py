"""Helpers every zfutures process uses about itself and the machine."""
from __future__ import annotations

import gc

import numpy as np
import psutil

from zfutures.center import GC_THRESHOLDS, tune_garbage_collector
from zfutures.processes import own_rss, total_memory


def test_own_rss_follows_what_psutil_sees():
    before = own_rss()
    assert abs(before - psutil.Process().memory_info().rss) < 32 * 2**20
    block = np.ones(64 * 2**20, dtype=np.uint8)  # touched: resident
    grown = own_rss() - before
    assert 48 * 2**20 < grown < 128 * 2**20
    del block


def test_total_memory_is_the_machines():
    assert total_memory() == psutil.virtual_memory().total


def test_a_center_process_collects_cyclic_garbage_less_often():
    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > before[0]   # rarer than Python's default
    finally:
        gc.set_threshold(*before)
