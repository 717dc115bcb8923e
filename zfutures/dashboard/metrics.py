"""Prometheus metrics over the dashboard's model.

A custom collector, read at each scrape, in a registry of its own (not the
process-wide default, whose Python-process metrics would describe the
dashboard and not the cluster). Every metric is derived from the model's
latest "events", so a scrape costs the center nothing.
"""
from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .model import STATES, Model

#: The content type of :func:`render`'s text.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Per-worker gauges: metric name, help, WorkerStats field.
_WORKER_GAUGES = (
    ("zfutures_worker_memory_bytes", "Memory of the worker's process (its RSS)", "memory"),
    ("zfutures_worker_managed_bytes", "Bytes of results the worker holds in memory", "managed"),
    ("zfutures_worker_spilled_bytes", "Bytes of results the worker spilled to disk", "spilled"),
    ("zfutures_worker_memory_limit_bytes", "The worker's memory limit (0: none)",
     "memory_limit"),
    ("zfutures_worker_cpu_percent", "CPU the worker's process used lately, "
     "in percent of one core", "cpu"),
    ("zfutures_worker_executing", "Tasks running on the worker", "executing"),
    ("zfutures_worker_queued", "Tasks queued on the worker", "queued"),
)


class ModelCollector(Collector):
    """The cluster's numbers, as the model holds them at each scrape."""

    def __init__(self, model: Model):
        self.model = model

    def collect(self) -> Iterator[Metric]:
        model = self.model
        tasks = GaugeMetricFamily("zfutures_tasks", "Tasks by state", labels=["state"])
        for state, n in model.tasks().items():
            tasks.add_metric([state], n)
        yield tasks

        groups = GaugeMetricFamily("zfutures_group_tasks", "Tasks of each task group by state",
                                   labels=["group", "state"])
        for name, group in sorted(model.groups.items()):
            for state in STATES:
                groups.add_metric([name, state], getattr(group.counts, state))
        yield groups

        finished, failed = model.finished()
        yield CounterMetricFamily("zfutures_tasks_finished_total",
                                  "Task runs that finished", value=finished)
        yield CounterMetricFamily("zfutures_tasks_failed_total",
                                  "Task runs that raised", value=failed)

        workers = list(model.workers.values())
        yield GaugeMetricFamily("zfutures_workers", "Workers connected", value=len(workers))
        yield GaugeMetricFamily("zfutures_threads", "Worker threads, over all workers",
                                value=sum(w.nthreads for w in workers))
        for name, help_text, attribute in _WORKER_GAUGES:
            gauge = GaugeMetricFamily(name, help_text, labels=["worker"])
            for w in workers:
                gauge.add_metric([w.address], float(getattr(w, attribute)))
            yield gauge

        counters = model.counters
        yield CounterMetricFamily("zfutures_transfer_bytes_total",
                                  "Bytes copied between workers",
                                  value=counters.get("transfer_bytes", 0))
        yield CounterMetricFamily("zfutures_center_messages_total",
                                  "Messages the center handled",
                                  value=counters.get("messages", 0))


def registry_for(model: Model) -> CollectorRegistry:
    """A registry of the model's metrics alone."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ModelCollector(model))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text of ``registry``."""
    return generate_latest(registry)
