"""Real disks for the spilling tests: a slow one and a small one.

:class:`SlowDisk` is ext4 on a loop device, mounted ``-o sync`` so that each
write reaches the device in the writer's own context, where a cgroup v1 blkio
throttle (``blkio.throttle.write_bps_device``) holds it to a given rate. A
process joins the throttle by running under :meth:`SlowDisk.command`; its
children (a nanny's worker) inherit it.

:class:`SmallTmpfs` is a tmpfs of a few megabytes, to fill up.

Both need root and the kernel's features; :func:`missing` says what is
missing, in words a developer can act on. Each object undoes everything it
made in ``close()``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

BLKIO = "/sys/fs/cgroup/blkio"
HOW = ("run the tests as root on Linux with util-linux's losetup and e2fsprogs' "
       "mkfs.ext4 (apt-get install -y mount e2fsprogs), loop devices (/dev/loop-control) "
       "and the cgroup v1 blkio controller mounted at " + BLKIO)


def unavailable(message: str) -> None:
    """Skip the test with ``message``; fail it on CI (CI=true), where it must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI must run this test: .ci/run installs what it needs)")
    pytest.skip(message)


def _run(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if done.returncode:
        raise OSError(f"{' '.join(args)} exited with {done.returncode}: "
                      f"{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def missing_for_slow_disk() -> str | None:
    """What this machine lacks to make a :class:`SlowDisk`, or None."""
    if os.geteuid() != 0:
        return "a slow disk needs root (a loop device, a mount, a cgroup): " + HOW
    for program in ("losetup", "mkfs.ext4", "mount", "umount", "dd"):
        if shutil.which(program) is None:
            return f"{program} is missing: " + HOW
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control): " + HOW
    if not os.path.exists(os.path.join(BLKIO, "blkio.throttle.write_bps_device")):
        return f"no cgroup v1 blkio throttle at {BLKIO}: " + HOW
    return None


class SlowDisk:
    """A filesystem at ``<workdir>/mnt`` whose writes, by processes started
    under :meth:`command`, go at ``bytes_per_second``.

    ``size``: bytes of the filesystem (its backing file in ``workdir`` is
    sparse, and removed at :meth:`close`).
    """

    def __init__(self, workdir: str, size: int, bytes_per_second: int):
        self.bytes_per_second = bytes_per_second
        self.backing = os.path.join(workdir, "slow-disk.img")
        self.mountpoint = os.path.join(workdir, "mnt")
        self.cgroup = os.path.join(BLKIO, f"zfutures-slow-disk-{os.getpid()}-{time.time_ns()}")
        self.device: str | None = None
        self.mounted = False
        try:
            os.makedirs(workdir, exist_ok=True)
            with open(self.backing, "wb") as f:
                f.truncate(size)
            self.device = _run("losetup", "--find", "--show", self.backing).strip()
            _run("mkfs.ext4", "-q", "-F", self.device)
            os.makedirs(self.mountpoint)
            _run("mount", "-o", "sync", self.device, self.mountpoint)
            self.mounted = True
            rdev = os.stat(self.device).st_rdev
            self.major_minor = f"{os.major(rdev)}:{os.minor(rdev)}"
            os.mkdir(self.cgroup)
            with open(os.path.join(self.cgroup, "blkio.throttle.write_bps_device"), "w") as f:
                f.write(f"{self.major_minor} {bytes_per_second}\n")
        except BaseException:
            self.close()
            raise

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the throttle: the shell joins the cgroup, then
        execs it (same pid, so it is stopped like any process started)."""
        procs = os.path.join(self.cgroup, "cgroup.procs")
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *argv]

    def holds(self, pid: int) -> bool:
        """Whether process ``pid`` is in the throttle's cgroup."""
        name = "/" + os.path.basename(self.cgroup)
        with open(f"/proc/{pid}/cgroup") as f:
            return any(line.split(":")[1] == "blkio" and line.rstrip("\n").split(":")[2] == name
                       for line in f)

    def written(self) -> int:
        """Bytes written to the device by the cgroup's processes so far."""
        with open(os.path.join(self.cgroup, "blkio.throttle.io_service_bytes")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == self.major_minor and parts[1] == "Write":
                    return int(parts[2])
        return 0

    def measure(self, nbytes: int = 25 * 2**20) -> float:
        """Write ``nbytes`` with dd inside the throttle; the rate seen, bytes/s."""
        probe = os.path.join(self.mountpoint, "dd-probe")
        start = time.monotonic()
        _run(*self.command("dd", "if=/dev/zero", f"of={probe}", "bs=1M",
                           f"count={nbytes // 2**20}"))
        elapsed = time.monotonic() - start
        os.unlink(probe)
        return nbytes / elapsed

    def close(self) -> None:
        """Undo it all: the cgroup (any process still in it moved back out
        first), the mount, the loop device, the backing file. Raises if a
        step fails, after trying the rest."""
        errors = []
        if os.path.isdir(self.cgroup):
            try:
                with open(os.path.join(self.cgroup, "cgroup.procs")) as f:
                    left = [line.strip() for line in f if line.strip()]
                for pid in left:  # (a test that failed before stopping its worker)
                    with open(os.path.join(BLKIO, "cgroup.procs"), "w") as f:
                        f.write(pid)
                os.rmdir(self.cgroup)
            except OSError as e:
                errors.append(f"cgroup {self.cgroup}: {e}")
        if self.mounted:
            try:
                _run("umount", self.mountpoint)
            except OSError as e:
                errors.append(str(e))
                _run("umount", "--lazy", self.mountpoint)
            self.mounted = False
        if self.device is not None:
            try:
                _run("losetup", "--detach", self.device)
            except OSError as e:
                errors.append(str(e))
            self.device = None
        for path in (self.backing,):
            if os.path.exists(path):
                os.unlink(path)
        if os.path.isdir(self.mountpoint):
            os.rmdir(self.mountpoint)
        assert not errors, f"the slow disk was not undone cleanly: {errors}"


def missing_for_tmpfs() -> str | None:
    """What this machine lacks to mount a :class:`SmallTmpfs`, or None."""
    if os.geteuid() != 0:
        return "a small tmpfs needs root to mount it (run the tests as root)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount and umount are missing: apt-get install -y mount"
    return None


class SmallTmpfs:
    """A tmpfs of ``size`` (mount's syntax: ``"50m"``) mounted at ``path``."""

    def __init__(self, path: str, size: str):
        self.path = path
        os.makedirs(path, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path)
        self.mounted = True

    def close(self) -> None:
        if self.mounted:
            self.mounted = False
            try:
                _run("umount", self.path)
            except OSError:
                _run("umount", "--lazy", self.path)
                raise
