"""``python -m zfutures center|worker|keygen ...``: the same programs as zfut-center,
zfut-worker and zfut-keygen."""
import sys

from .cli import center_main, keygen_main, worker_main

_COMMANDS = {"center": center_main, "worker": worker_main, "keygen": keygen_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in _COMMANDS:
        sys.exit("usage: python -m zfutures {center|worker|keygen} [OPTIONS]")
    command = _COMMANDS[sys.argv[1]]
    del sys.argv[1]
    command(prog_name=f"zfut-{(command.name or '').split('-')[-1]}")
