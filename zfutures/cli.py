"""The command-line programs ``zfut-center`` and ``zfut-worker``."""
from __future__ import annotations

import logging
import signal
import sys

import click

from .addressing import DEFAULT_PORT, is_loopback
from .memory_thresholds import MemoryThresholds, parse_fraction
from .processes import die_with_parent, total_memory
from .units import parse_memory


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _serve(run, stop) -> None:
    """Run until SIGINT or SIGTERM (exit status 0), or until a parent that
    started us as part of a local cluster goes away."""
    _stop_on_signals(stop)
    die_with_parent(stop)
    run()


def _stop_on_signals(stop) -> None:
    """SIGINT and SIGTERM call ``stop``: set before a program says it is up,
    so that whoever read that and stops it is heard, not a default death."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop())


def check_bind(host: str, insecure: bool, security) -> None:
    """Refuse to bind ``host`` beyond loopback without keys, unless ``insecure``
    (then warn): the rule for every socket a zfutures program listens on."""
    if is_loopback(host) or security is not None:
        return
    if not insecure:
        raise click.UsageError(
            f"binding {host} without keys exposes the cluster to the network, and anyone "
            "who can send it a task runs code on it. Create keys with 'zfut-keygen DIR' "
            "and pass --keys DIR (or set ZFUTURES_KEYS=DIR); or pass --insecure to bind "
            "without them on a network you trust.")
    logging.getLogger("zfutures").warning(
        "--insecure: %s is reachable from other hosts, and anyone who reaches it can run "
        "code on this cluster", host)


def _load_keys(keys: str | None):
    """The Security for --keys DIR (or $ZFUTURES_KEYS), or None."""
    if not keys:
        return None
    from .security import Security, SecurityError

    try:
        return Security(keys)
    except SecurityError as e:
        raise click.BadParameter(str(e), param_hint="--keys") from None


_MAX_MESSAGE_SIZE_OPTION = click.option(
    "--max-message-size", default=2**30, show_default=True, type=click.IntRange(min=1024),
    help="Bytes: a peer that sends a larger message is disconnected.")

_KEYS_OPTION = click.option(
    "--keys", envvar="ZFUTURES_KEYS", default=None, metavar="DIR",
    help="Key directory made by zfut-keygen (default: $ZFUTURES_KEYS): encrypt every "
         "connection and admit only the keys in DIR/allowed.")


def parse_resources(text: str) -> dict[str, float]:
    """``"GPU=1,MEM=8e9"`` -> ``{"GPU": 1.0, "MEM": 8e9}``."""
    resources = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            resources[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise click.BadParameter(f"{part!r} is not NAME=NUMBER", param_hint="--resources")
    return resources


def parse_memory_limit(text: str) -> int:
    """``"4GB"``, ``"0.8"`` (a share of this machine's memory), ``"auto"`` or ``"0"``."""
    if text.strip().lower() == "auto":
        return total_memory()
    try:
        return parse_memory(text, total_memory())
    except ValueError as e:
        raise click.BadParameter(f"{e}, or auto", param_hint="--memory-limit") from None


@click.command(name="zfut-center")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, help="Port (0: any free one).")
@click.option("--allowed-failures", default=3, show_default=True,
              help="Workers that may die running a task before it errs with KilledWorker.")
@click.option("--heartbeat-interval", default=0.5, show_default=True,
              help="Seconds between heartbeats to idle peers.")
@click.option("--worker-timeout", default=5.0, show_default=True,
              help="Seconds of silence after which a worker is declared dead.")
@click.option("--client-timeout", default=30.0, show_default=True,
              help="Seconds of silence after which a client's keys are released.")
@click.option("--recovery-window", default=10.0, show_default=True,
              help="After a restart, seconds to wait for workers and clients to bring "
                   "their keys back before recomputing what is missing.")
@_MAX_MESSAGE_SIZE_OPTION
@_KEYS_OPTION
@click.option("--insecure", is_flag=True, help="Allow binding beyond loopback without keys.")
@click.option("--dashboard-address", default=None, metavar="HOST:PORT",
              help="Where the dashboard (a web view of the cluster) listens. Default: the "
                   "center's host, port 8788, or any free port if that one is taken; "
                   "PORT 0: any free port.")
@click.option("--no-dashboard", is_flag=True, help="Run no dashboard.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def center_main(host: str, port: int, allowed_failures: int, heartbeat_interval: float,
                worker_timeout: float, client_timeout: float, recovery_window: float,
                max_message_size: int, keys: str | None, insecure: bool,
                dashboard_address: str | None, no_dashboard: bool, log_level: str) -> None:
    """Run a zfutures center (scheduler and broker) until interrupted."""
    from .center import Center, tune_garbage_collector

    tune_garbage_collector()
    _setup_logging(log_level)
    security = _load_keys(keys)
    check_bind(host, insecure, security)
    center = Center(host, port, allowed_failures=allowed_failures,
                    heartbeat_interval=heartbeat_interval, worker_timeout=worker_timeout,
                    client_timeout=client_timeout, recovery_window=recovery_window,
                    security=security, max_message_size=max_message_size)
    lines = [f"zfut-center listening at {center.address}"]
    dashboard = None
    if not no_dashboard:
        dashboard = _start_dashboard(center.address, dashboard_address, security, insecure,
                                     log_level)
    if dashboard is not None:
        center.dashboard_link = dashboard.link
        lines.append(f"zfut-center dashboard at {dashboard.link}")
    _stop_on_signals(center.stop)
    # One write of both lines (print would write the last newline on its own
    # with PYTHONUNBUFFERED): a local cluster reads the first line and closes
    # the pipe, and a later write would fail.
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
    try:
        _serve(center.run, center.stop)
    finally:
        if dashboard is not None:
            dashboard.stop()


def _start_dashboard(center_address: str, address: str | None, security, insecure: bool,
                     log_level: str):
    """The center's dashboard process, or None if it cannot run here."""
    from .dashboard.launch import missing_requirement, start_dashboard

    missing = missing_requirement()
    if missing is not None:
        if address is not None:  # asked for explicitly: an error
            raise click.UsageError(f"the dashboard needs {missing}: pip install {missing}")
        logging.getLogger("zfutures").warning(
            "no dashboard: it needs %s (pip install %s)", missing, missing)
        return None
    return start_dashboard(center_address, address, security, insecure, log_level)


def parse_thresholds(target: str, spill: str, pause: str, terminate: str) -> MemoryThresholds:
    """The four memory thresholds of the command line, checked together."""
    values = {}
    for name, text in (("target", target), ("spill", spill), ("pause", pause),
                       ("terminate", terminate)):
        try:
            values[name] = parse_fraction(text)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=f"--memory-{name}") from None
    try:
        return MemoryThresholds(**values)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@click.command(name="zfut-worker")
@click.argument("address")
@click.option("--nthreads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Task threads per worker process.")
@click.option("--nworkers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Worker processes to run.")
@click.option("--name", default=None,
              help="Worker name (default: its address); NAME-i with several workers.")
@click.option("--host", default=None,
              help="Interface the data server binds and announces "
                   "(default: the one that routes to the center).")
@click.option("--memory-limit", default="auto", show_default=True,
              help="Per worker: 4GB, 0.8 (share of this machine's memory), 0 (none), or "
                   "auto (an equal share for each worker). The --memory-* shares below say "
                   "what happens as a worker nears it.")
@click.option("--memory-target", default="0.6", show_default=True,
              help="Share of the memory limit above which results move to disk, least "
                   "recently used first; false: never.")
@click.option("--memory-spill", default="0.7", show_default=True,
              help="Share of the memory limit the whole process is kept under by moving "
                   "results to disk; false: not checked.")
@click.option("--memory-pause", default="0.8", show_default=True,
              help="Share of the memory limit above which the worker starts no new task; "
                   "false: never.")
@click.option("--memory-terminate", default="0.95", show_default=True,
              help="Share of the memory limit above which the nanny restarts the worker; "
                   "false: never.")
@click.option("--spill-dir", default=None, type=click.Path(file_okay=False),
              help="Where results go when memory runs short (default: the system's "
                   "temporary directory); each worker uses a fresh directory in it, removed "
                   "when it stops.")
@click.option("--resources", default="", help='Resources it offers, e.g. "GPU=1,MEM=8e9".')
@click.option("--heartbeat-interval", default=0.5, show_default=True,
              help="Seconds between heartbeats to the center when idle.")
@click.option("--heartbeat-timeout", default=5.0, show_default=True,
              help="Seconds without a word from the center before reconnecting to it.")
@click.option("--no-nanny", is_flag=True,
              help="Run one worker in this process, with no nanny to restart it.")
@_MAX_MESSAGE_SIZE_OPTION
@_KEYS_OPTION
@click.option("--insecure", is_flag=True, help="Allow binding beyond loopback without keys.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def worker_main(address: str, nthreads: int, nworkers: int, name: str | None, host: str | None,
                memory_limit: str, memory_target: str, memory_spill: str, memory_pause: str,
                memory_terminate: str, spill_dir: str | None, resources: str,
                heartbeat_interval: float,
                heartbeat_timeout: float, no_nanny: bool, max_message_size: int,
                keys: str | None, insecure: bool, log_level: str) -> None:
    """Serve tasks for the center at ADDRESS until interrupted.

    A nanny process runs the workers and starts a fresh one when one dies.
    """
    from .addressing import interface_towards, normalize_address

    _setup_logging(log_level)
    try:
        center = normalize_address(address)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="ADDRESS") from None
    resource_map = parse_resources(resources)
    limit = parse_memory_limit(memory_limit)
    if memory_limit.strip().lower() == "auto":
        limit //= nworkers
    thresholds = parse_thresholds(memory_target, memory_spill, memory_pause, memory_terminate)
    memory_args = ["--memory-target", memory_target, "--memory-spill", memory_spill,
                   "--memory-pause", memory_pause, "--memory-terminate", memory_terminate,
                   *(["--spill-dir", spill_dir] if spill_dir else [])]
    host = host or interface_towards(center)
    security = _load_keys(keys)
    check_bind(host, insecure, security)
    if not no_nanny:
        from .nanny import Nanny

        worker_args = ["--nthreads", str(nthreads), "--host", host, "--memory-limit", str(limit),
                       "--resources", resources, "--heartbeat-interval", str(heartbeat_interval),
                       "--heartbeat-timeout", str(heartbeat_timeout),
                       "--max-message-size", str(max_message_size),
                       *memory_args,
                       "--log-level", log_level, *(["--insecure"] if insecure else []),
                       *(["--keys", str(security.directory)] if security else [])]
        nanny = Nanny(center, worker_args, nworkers, name, memory_limit=limit,
                      security=security, terminate=thresholds.terminate, spill_dir=spill_dir)
        _serve(nanny.run, nanny.stop)
        return
    if nworkers > 1:
        raise click.UsageError("--no-nanny runs one worker: drop --nworkers")
    from .logs import keep_recent_lines
    from .worker import Worker

    keep_recent_lines()  # (served to the dashboard: see DataServer)
    worker = Worker(center, nthreads=nthreads, name=name, host=host, memory_limit=limit,
                    resources=resource_map, heartbeat_interval=heartbeat_interval,
                    heartbeat_timeout=heartbeat_timeout, security=security,
                    max_message_size=max_message_size, memory_thresholds=thresholds,
                    spill_dir=spill_dir)
    print(f"zfut-worker {worker.name} serving at {worker.address} for {center}", flush=True)
    _serve(worker.run, worker.stop)


@click.command(name="zfut-keygen")
@click.argument("directory", type=click.Path(file_okay=False))
def keygen_main(directory: str) -> None:
    """Create the keys of a secured cluster in DIRECTORY.

    The center's key pair (also used by the workers' data servers), a key pair
    for clients and workers, and the allow list DIRECTORY/allowed holding the
    latter's public key. Give clients center.key and client.key_secret; give
    the center and the workers the whole directory.
    """
    from .security import SecurityError, keygen

    try:
        path = keygen(directory)
    except (SecurityError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"keys written to {path}: start the center and the workers with --keys {path}, "
               f"and clients with Executor(..., security={str(path)!r})")
