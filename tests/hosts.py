"""Separate hosts for multi-host tests: network namespaces on a bridge the test makes.

Each host is a network namespace (``ip netns``, as root) joined to a bridge in the test's own
namespace by a veth pair; addresses come only from the benchmarking range 198.18.0.0/15, one /24
per test process. Nothing is routed anywhere else, so traffic stays on the links made here (or
127.0.0.1). Everything is bounded and removed: processes started on a host are killed with their
process group, the links and namespaces are deleted, on exit whatever happened.

    with Hosts(["scheduler", "w1", "w2"]) as hosts:
        hosts.start("scheduler", ["dask", "scheduler", "--host", hosts.address("scheduler"), ...])
        hosts.link_down("w1"); hosts.link_up("w1"); hosts.kill("w1")

Used by tests/test_cluster_hosts.py and benchmarks/bench_dask.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

STEP_TIMEOUT = 30.0  # seconds: any one setup or teardown command, or a wait for a port


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=STEP_TIMEOUT, check=check)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can): the skip reason of the tests."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux's; this is {sys.platform}"
    if os.geteuid() != 0:
        return "making network namespaces needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's ip command is not installed"
    probe = f"gxprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    try:
        bridge = _ip("link", "add", f"gxpb{os.getpid() % 100000}", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"ip link add ... type bridge failed: {bridge.stderr.strip()}"
        _ip("link", "del", f"gxpb{os.getpid() % 100000}", check=False)
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def netem_works() -> bool:
    """Whether this kernel has tc's netem (sch_netem): some containers' kernels lack it."""
    if shutil.which("tc") is None:
        return False
    name = f"gxq{os.getpid() % 100000}"
    if _ip("link", "add", name, "type", "dummy", check=False).returncode != 0:
        return False
    try:
        done = subprocess.run(
            ["tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms"], capture_output=True, timeout=10
        )
        return done.returncode == 0
    finally:
        _ip("link", "del", name, check=False)


class Hosts:
    """Hosts named ``names`` at 198.18.N.2, .3, ... on a bridge at 198.18.N.1 (this process's side)."""

    def __init__(self, names: list[str]) -> None:
        tag = uuid.uuid4().hex[:6]
        self.tag = tag
        self.net = 18 * 256 + 1 + int(tag, 16) % 500  # a /24 inside 198.18.0.0/15: 198.18.1.0 .. 198.19.245.0
        self.names = list(names)
        self.bridge = f"gx{tag}b"
        self.links = {name: f"gx{tag}{i}" for i, name in enumerate(names)}  # this side of each host's veth
        self.namespaces = {name: f"gx{tag}-{name}" for name in names}
        self.processes: dict[str, list[subprocess.Popen]] = {name: [] for name in names}
        self.logs = Path(tempfile.mkdtemp(prefix=f"gxhosts-{tag}-"))
        self._delayed: dict[str, float] = {}

    # -- addresses -------------------------------------------------------------------------
    def _prefix(self) -> str:
        return f"198.{self.net // 256}.{self.net % 256}"

    def address(self, name: str) -> str:
        return f"{self._prefix()}.{self.names.index(name) + 2}"

    @property
    def gateway(self) -> str:
        """This process's address on the bridge (clients run here)."""
        return f"{self._prefix()}.1"

    # -- making and removing -------------------------------------------------------------------
    def __enter__(self) -> Hosts:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for name in self.names:
                ns, link = self.namespaces[name], self.links[name]
                _ip("netns", "add", ns)
                _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", link, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.names:
            self.kill(name)
        for name in self.names:
            _ip("link", "del", self.links[name], check=False)
            _ip("netns", "del", self.namespaces[name], check=False)
        _ip("link", "del", self.bridge, check=False)
        shutil.rmtree(self.logs, ignore_errors=True)

    # -- processes -------------------------------------------------------------------------
    def start(self, name: str, argv: list[str], *, env: dict | None = None, log: str | None = None) -> subprocess.Popen:
        """Start ``argv`` on host ``name`` in its own process group (its log under :attr:`logs`)."""
        path = self.logs / (log or f"{name}-{len(self.processes[name])}.log")
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
        with path.open("wb") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespaces[name], *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        process.log = path  # type: ignore[attr-defined]
        self.processes[name].append(process)
        return process

    def kill(self, name: str) -> None:
        """SIGKILL every process started on host ``name`` (each one's whole group), and wait for them."""
        for process in self.processes[name]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STEP_TIMEOUT)
        # anything else left in the namespace (a grandchild that left the group)
        pids = _ip("netns", "pids", self.namespaces[name], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        self.processes[name] = []

    def wait_port(self, name: str, port: int, *, timeout: float = STEP_TIMEOUT) -> None:
        """Until host ``name`` accepts TCP connections on ``port`` (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection((self.address(name), port), timeout=1):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} ({self.address(name)}) did not listen on port {port} within {timeout:g} s")
            time.sleep(0.1)

    # -- links -------------------------------------------------------------------------------
    def link_down(self, name: str) -> None:
        """Cut host ``name``'s link (its packets are dropped; connections are not closed)."""
        _ip("link", "set", self.links[name], "down")

    def link_up(self, name: str) -> None:
        _ip("link", "set", self.links[name], "up")

    def bytes_through(self, name: str) -> int:
        """Bytes that crossed host ``name``'s link so far, both ways."""
        stats = Path(f"/sys/class/net/{self.links[name]}/statistics")
        return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())

    def add_delay(self, name: str, milliseconds: float) -> str:
        """Delay what host ``name`` sends by ``milliseconds`` with tc netem where the kernel has it.

        Returns "netem", or "none" where it cannot (a worker then takes :func:`delayed_worker_argv`).
        """
        if not netem_works():
            return "none"
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.namespaces[name],
                "tc",
                "qdisc",
                "add",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                f"{milliseconds:g}ms",
            ],
            check=True,
            capture_output=True,
            timeout=STEP_TIMEOUT,
        )
        self._delayed[name] = milliseconds
        return "netem"

    # -- Dask -------------------------------------------------------------------------------
    def dask(self) -> list[str]:
        """The ``dask`` command of this Python (its console script beside the interpreter)."""
        script = Path(sys.executable).parent / "dask"
        return [str(script)] if script.exists() else [sys.executable, "-m", "dask"]

    def start_scheduler(self, name: str, port: int = 8786) -> str:
        self.start(name, [*self.dask(), "scheduler", "--host", self.address(name), "--port", str(port), "--no-dashboard"])
        self.wait_port(name, port)
        return f"tcp://{self.address(name)}:{port}"

    def start_worker(
        self, name: str, scheduler: str, *, delay_ms: float = 0.0, port: int = 40000, env: dict | None = None
    ) -> None:
        """``dask worker`` on host ``name``, one thread, listening on ``port``.

        With ``delay_ms`` and no netem here, what the worker sends is delayed by a forwarding proxy
        in its namespace (tests/_delay_proxy.py): the scheduler and its peers reach it through the
        proxy (its contact address), and it reaches the scheduler through another one.
        """
        address = self.address(name)
        argv = [*self.dask(), "worker", "--nthreads", "1", "--no-dashboard", "--name", name, "--nanny-port", str(port + 1)]
        if delay_ms and self._delayed.get(name) is None:
            proxy = [sys.executable, str(Path(__file__).with_name("_delay_proxy.py"))]
            host, scheduler_port = scheduler.removeprefix("tcp://").rsplit(":", 1)
            # inbound: contact port+2 → the worker's port, its replies delayed
            self.start(name, [*proxy, address, str(port + 2), address, str(port), str(delay_ms), "reply"])
            # outbound: 127.0.0.1:port+3 → the scheduler, what the worker sends delayed
            self.start(name, [*proxy, "127.0.0.1", str(port + 3), host, scheduler_port, str(delay_ms), "request"])
            self.wait_port(name, port + 2)
            argv += ["--listen-address", f"tcp://{address}:{port}", "--contact-address", f"tcp://{address}:{port + 2}"]
            scheduler = f"tcp://127.0.0.1:{port + 3}"
        else:
            argv += ["--host", address, "--worker-port", str(port)]
        self.start(name, [*argv, scheduler], env=env)
