"""The dashboard: a web view of a cluster, run by the center in a process of its own.

The center publishes compact "events" (task groups' counts, workers' stats,
task runs and transfers; see messages.Events) to watchers once per tick;
the dashboard process is one watcher. It keeps bounded buffers of what it
heard and serves pages, server-sent events, Prometheus metrics and JSON
over HTTP. It shows and never controls: nothing here submits, cancels or
runs anything on the cluster.
"""
