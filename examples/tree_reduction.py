"""Add up 16 random arrays with a binary tree of additions on a local zfutures cluster.

The arrays are made on the workers and stay there: each addition is a task whose
arguments are futures, so a worker adds two arrays it holds (or fetches one from
another worker), and only the final array comes back to this process.

    python examples/tree_reduction.py                 # one worker per CPU core
    python examples/tree_reduction.py --workers 2 --size 1000
"""
from __future__ import annotations

import argparse
import sys
import time
from operator import add

import numpy as np

from zfutures import Executor


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Sum 16 random arrays with a tree of additions on a local cluster.")
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="worker processes to start (default: one per CPU core)")
    parser.add_argument("--size", type=positive_int, default=1_000_000, metavar="N",
                        help="numbers in each random array (default: 1000000)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    # No address: start a local cluster (a center and the worker processes, all on
    # 127.0.0.1). Leaving the `with` block shuts it down.
    with Executor(n_workers=args.workers) as ex:
        print(f"local cluster of {len(ex.nthreads())} workers at {ex.address} "
              f"(started in {time.perf_counter() - t0:.2f} s)")

        t1 = time.perf_counter()
        # 16 tasks, each making one random array on a worker, where it stays. We get
        # futures back at once. pure=False: identical calls of a random function must
        # be 16 different tasks, not one task whose result is shared.
        pieces = ex.map(np.random.random, [args.size] * 16, pure=False)

        # The tree: add neighbours pairwise, 16 -> 8 -> 4 -> 2 -> 1. The arguments are
        # futures, so nothing is computed or moved here: each add runs on a worker as
        # soon as its two inputs exist, fetching from another worker any input it lacks.
        xs = pieces
        while len(xs) > 1:
            xs = [ex.submit(add, xs[i], xs[i + 1]) for i in range(0, len(xs), 2)]

        # The only array that comes to this process: the final sum.
        total = xs[0].result()
        elapsed = time.perf_counter() - t1

        print(f"reduced 16 arrays of {args.size} random numbers in {elapsed:.2f} s")
        print(f"result: shape {total.shape}, first values {total[:4]}, sum {total.sum():.6g}")

        # Checks: bring the 16 inputs here (exactly the traffic the tree avoided; done
        # only to verify), make sure they are 16 different arrays, and add them up here.
        inputs = ex.gather(pieces)
        distinct = len({piece[:8].tobytes() for piece in inputs})
        matches = bool(np.allclose(total, sum(inputs)))
    print(f"check: the 16 inputs are different arrays: {'OK' if distinct == 16 else 'FAILED'}"
          f" ({distinct} distinct)")
    print(f"check against the sum of the gathered inputs: {'OK' if matches else 'MISMATCH'}")
    return 0 if distinct == 16 and matches else 1


if __name__ == "__main__":
    sys.exit(main())
