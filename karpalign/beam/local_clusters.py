"""Local stand-ins for a cluster's workers, for trying the distributed route on one machine (the tests and
``benchmarks/extract.py`` use them): a Beam worker pool -- the Fn API's EXTERNAL environment, what runs beside
a Flink or Spark task manager -- and a dask.distributed cluster (a scheduler and N worker processes). Each is a
separate process on its own 127.0.0.1 port, started as its own process group and stopped by that group's id.

Worker processes see only what a cluster's workers see: installed packages, ``PYTHONPATH`` entries given here,
files on disk and the environment given here -- never the launcher's memory::

    with worker_pool(log_dir) as (address, pool):
        run_extract(config, ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                             f"--environment_config={address}"])
    with dask_cluster(log_dir, workers=2) as address:
        run_extract(config, ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                             f"--dask_client_address={address}"])
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Optional, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(pythonpath: Sequence[str] = (), **extra: str) -> dict:
    """The environment of a worker process: this one's, with this interpreter's folder first on PATH (the
    worker pool starts its SDK workers as ``python -c ...``), ``pythonpath`` in front of PYTHONPATH, quiet
    TensorFlow, plus ``extra``."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


class Process:
    """One started command in its own session (process group); its output goes to ``log``."""

    def __init__(self, argv: list[str], log: str, env: dict, python: str = sys.executable,
                 cwd: Optional[str] = None):
        self.argv, self.log = [python, *argv], log
        self._log_file = open(log, "wb")
        self.popen = subprocess.Popen(self.argv, stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
                                      cwd=cwd, start_new_session=True)

    def output(self) -> str:
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def check_alive(self, what: str) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{what} exited with {self.popen.returncode}; its log {self.log}:\n"
                               f"{self.output()[-3000:]}")

    def terminate(self) -> None:
        """SIGTERM to the process group this process leads (it and the workers it started)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        """:meth:`terminate`, wait, then SIGKILL to whatever is left of the group."""
        self.terminate()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # it, or SDK workers the pool started, still in its group
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=timeout)
        self._log_file.close()


def stop_all(processes: list[Process]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop()


def _wait_for_port(port: int, process: Process, what: str, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        process.check_alive(what)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s; log {process.log}")


@contextlib.contextmanager
def worker_pool(log_dir: str, env: Optional[dict] = None, python: str = sys.executable, cwd: Optional[str] = None):
    """``python -m apache_beam.runners.worker.worker_pool_main`` on a free port; yields (address, Process).
    ``python`` (another environment's interpreter, if given) runs the pool, and its folder goes first on the
    pool's PATH: the pool starts every SDK worker as ``python``. ``env``: default :func:`worker_env`."""
    port = free_port()
    env = dict(env if env is not None else worker_env())
    env["PATH"] = os.path.dirname(python) + os.pathsep + env.get("PATH", "")
    pool = Process(["-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
                   os.path.join(log_dir, f"worker_pool_{port}.log"), env, python, cwd)
    try:
        _wait_for_port(port, pool, "the Beam worker pool")
        yield f"127.0.0.1:{port}", pool
    finally:
        pool.stop()


def started_sdk_workers(pool: Process) -> list[str]:
    """The worker ids the pool was asked to start (it logs one line per StartWorker request)."""
    return re.findall(r'worker_id="([^"]+)"', pool.output())


@contextlib.contextmanager
def dask_cluster(log_dir: str, env: Optional[dict] = None, workers: int = 2, timeout: float = 90.0,
                 cwd: Optional[str] = None):
    """A dask scheduler and ``workers`` worker processes (one thread each, no nanny) on 127.0.0.1; yields the
    scheduler address. ``env``: default :func:`worker_env`."""
    env = env if env is not None else worker_env()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    started = [Process(["-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                        "--no-dashboard"], os.path.join(log_dir, f"dask_scheduler_{port}.log"), env, cwd=cwd)]
    try:
        _wait_for_port(port, started[0], "the dask scheduler")
        for i in range(workers):
            started.append(Process(["-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
                                    "--no-dashboard", "--host", "127.0.0.1", "--name", f"worker-{i}"],
                                   os.path.join(log_dir, f"dask_worker_{port}_{i}.log"), env, cwd=cwd))
        from distributed import Client

        with Client(address, timeout=timeout) as client:
            deadline = time.time() + timeout
            while len(client.scheduler_info()["workers"]) < workers:
                for process in started:
                    process.check_alive("a dask process")
                if time.time() > deadline:
                    raise TimeoutError(f"{workers} dask workers did not connect within {timeout:.0f}s")
                time.sleep(0.2)
        yield address
    finally:
        stop_all(started)


def dask_transitions(address: str) -> dict[str, int]:
    """Task state transitions each dask worker has made so far, by worker name (it grows with every task the
    worker runs)."""
    from distributed import Client

    with Client(address, timeout=30) as client:
        counts = client.run(lambda dask_worker: dask_worker.state.transition_counter)
        names = {addr: info["name"] for addr, info in client.scheduler_info()["workers"].items()}
    return {names[addr]: n for addr, n in counts.items()}
