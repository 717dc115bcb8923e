"""A task module that imports numpy when a worker first unpickles a task of it
(see test_worker.py: a fresh worker importing numpy on two threads at once)."""
import numpy as np


def total(values):
    return int(np.sum(values))
