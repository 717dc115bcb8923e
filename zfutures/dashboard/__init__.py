"""The dashboard: a web view of a cluster, run by the center in a process of its own.

The center publishes compact "events" (task groups' counts, workers' stats,
task runs and transfers; see messages.Events) to watchers once per tick;
the dashboard process is one watcher. It keeps bounded buffers of what it
heard and serves pages, server-sent events, Prometheus metrics and JSON
over HTTP. It shows and never controls: nothing here submits, cancels or
runs anything on the cluster.

Modules, one role each::

    __main__.py     the process: arguments, the inherited socket, signals, the parent
    center_link.py  the client that registers with the center and watches it
    model.py        the center's events applied, in bounded buffers (sans-I/O)
    server.py       the aiohttp application: routes, the token, the live page's stream
    pages.py        the server-made HTML pages (workers, task groups, one key)
    metrics.py      the Prometheus collector over the model
    launch.py       the center's side: binds the socket, starts the process
    static/         status.html and status.js (the live page), taskstream.js (the
                    task stream, shared with performance reports), report.js,
                    dashboard.css
"""
