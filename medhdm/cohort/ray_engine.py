"""The Ray engine: a pool of actors, each loading the model and explainer(s) once, fed batches of cases.

``ray`` is imported only here, when ``--engine ray`` is asked for. With no address Ray
starts a local cluster on this machine (``ray.init(num_cpus=<cores>)``, no dashboard),
which dies with the driver: on Linux a watchdog process (:mod:`medhdm.cohort.ray_watchdog`)
kills every process of that cluster (agents and workers included) as soon as the driver
is gone, even killed with SIGKILL. ``address="auto"`` or ``"ray://host:10001"`` joins an
existing cluster (medhdm must be installed on its nodes and ``--out`` and the images must
be on a file system they share); a ``ray://`` address needs the Ray client
(``pip install "ray[client]"``), and an address where no cluster answers is a
``ValueError`` naming it.

Each actor sets its torch threads to its share of the cores (the cluster's CPUs divided
by the number of workers, at least 1, at most one node's CPUs; ``MEDHDM_THREADS``, when set
in the driver's environment, caps it: on cores shared with other work, two threads per
process stall at every operator, so a shared machine wants 1) and reserves that many
CPUs and ``gpus_per_worker`` GPUs (fractions let several actors share one GPU). Each actor
has one batch in flight; when an actor dies (killed, node lost), its batch is sent again
to a new actor, which skips the cases the dead one completed (their records exist), so
every case is done exactly once.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .engine import CaseOutcome
from .ray_watchdog import children

__all__ = ["RayEngine", "check_address", "import_ray"]


def import_ray():
    """The ``ray`` module, or a clear error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ValueError("engine ray: Ray is not installed; pip install -e '.[ray]' (or pip install ray)") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port`` (IPv6 in brackets); ``None`` for other forms."""
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or "/" in rest:
        return None
    return host.strip("[]"), int(port)


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Refuse an address where nothing answers, and a ``ray://`` address when the Ray client is not
    installed (called before any model is loaded).

    A ``host:port`` or ``ray://host:port`` address is tried with one TCP connection (``timeout``
    seconds); other forms (``auto``, ``ray://host``) are left to Ray.

    Raises:
        ValueError: one line naming ``address``, the address and the problem (and the package to install).
    """
    if not address:
        return
    problems = []
    target = _host_port(address)
    if target is not None:
        try:
            socket.create_connection(target, timeout=timeout).close()
        except OSError as err:
            problems.append(f"no Ray cluster answers there ({target[0]}:{target[1]}: {err.strerror or err})")
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        problems.append(
            'a ray:// address needs the Ray client, which is not installed here (pip install "ray[client]"; '
            "on a node of the cluster, the address auto needs no client)"
        )
    if problems:
        raise ValueError(f"address {address}: " + "; and ".join(problems))


def _start_watchdog(roots: set[int]) -> subprocess.Popen | None:
    """A :mod:`~medhdm.cohort.ray_watchdog` process watching ``roots``; ``None`` without ``/proc``.

    Its stdin is a pipe whose write end only this process holds (it is not inherited across
    exec): when this process ends, however it ends, the watchdog reads end of file.
    """
    if not roots or not os.path.isdir("/proc"):
        return None
    script = Path(__file__).with_name("ray_watchdog.py")
    return subprocess.Popen(
        [sys.executable, "-I", str(script), *map(str, sorted(roots))],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C at the terminal reaches the driver, not the watchdog
    )


class _CohortActor:
    """One Ray worker: builds the runner once (model, explainers), then runs batch after batch."""

    def __init__(self, recipe, key: str, threads: int) -> None:
        import torch

        from ..io.redact import install_redaction

        install_redaction()  # this worker's warnings and log records reach Ray's log files without patient names
        torch.set_num_threads(threads)
        self.runner = recipe.build()
        if self.runner.key != key:
            raise ValueError(
                "a Ray worker's configuration differs from the driver's (another medhdm version or other "
                "model weights on that node?)"
            )

    def run(self, batch: list[dict], out: str) -> list[CaseOutcome]:
        from .tasks import process_batch

        return process_batch(self.runner, batch, Path(out))

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()


class RayEngine:
    """Batches over a pool of ``workers`` Ray actors (see the module docstring); an
    :class:`~medhdm.cohort.engine.Engine`.

    Args:
        recipe: an :class:`~medhdm.cohort.tasks.ExplainRecipe` or :class:`~medhdm.cohort.tasks.EvaluateRecipe`.
        key: the driver's configuration hash (each actor checks that its own equals it).
        workers: number of actors.
        gpus_per_worker: GPUs reserved per actor (0: CPU only; 0.5: two actors per GPU).
        address: None (a local cluster), ``"auto"`` or ``"ray://host:port"``.
        log: where to report restarted actors.
    """

    name = "ray"

    def __init__(
        self,
        recipe,
        key: str,
        *,
        workers: int = 2,
        gpus_per_worker: float = 0.0,
        address: str | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers: expected at least 1, got {workers}")
        if gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker: expected 0 or more, got {gpus_per_worker}")
        self.recipe, self.key, self.workers = recipe, key, workers
        self.gpus_per_worker, self.address, self.log = gpus_per_worker, address, log
        self.ray = import_ray()
        self.started = False
        self.actors: list = []
        self.replaced = 0
        self.threads = 1
        self.watchdog: subprocess.Popen | None = None

    def start(self) -> None:
        """Join or start the cluster and start the actors (nothing when they already run)."""
        if self.actors:
            return
        ray = self.ray
        if not ray.is_initialized():
            if self.address:
                check_address(self.address)
                try:
                    ray.init(address=self.address, log_to_driver=False)
                except ConnectionError as err:
                    raise ValueError(f"address {self.address}: no Ray cluster answers there ({err})") from None
            else:
                before = children(os.getpid()) if os.path.isdir("/proc") else None
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
                self.started = True
                self.watchdog = _start_watchdog(children(os.getpid()) - before if before is not None else set())
        total = int(ray.cluster_resources().get("CPU", 1))
        per_node = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=1)
        self.threads = max(1, min(total // self.workers, per_node))
        if os.environ.get("MEDHDM_THREADS"):
            self.threads = max(1, min(self.threads, int(os.environ["MEDHDM_THREADS"])))
        self.actor_class = ray.remote(_CohortActor)
        self.actors = [self._new_actor() for _ in range(self.workers)]

    def ready(self) -> list[int]:
        """Wait until every actor has built its runner; their torch thread counts."""
        return self.ray.get([actor.threads.remote() for actor in self.actors])

    def _new_actor(self):
        return self.actor_class.options(num_cpus=self.threads, num_gpus=self.gpus_per_worker, max_restarts=0).remote(
            self.recipe, self.key, self.threads
        )

    def map(self, batches: Iterable[list[dict]], out: Path) -> Iterator[list[CaseOutcome]]:
        """The outcomes of each batch as it finishes; the batch of an actor that died is run again."""
        ray = self.ray
        queue = deque(batches)
        idle = list(range(len(self.actors)))
        pending: dict = {}
        while queue or pending:
            while queue and idle:
                i = idle.pop()
                batch = queue.popleft()
                pending[self.actors[i].run.remote(batch, str(out))] = (i, batch)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i, batch = pending.pop(ref)
            try:
                outcomes = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                self.replaced += 1
                if self.replaced > 3 * self.workers:
                    raise RuntimeError(f"Ray workers keep dying ({self.replaced} replaced); last: {err}") from None
                if self.log:
                    self.log(f"a Ray worker died ({type(err).__name__}); its batch of {len(batch)} goes to a new one")
                self.actors[i] = self._new_actor()
                queue.appendleft(batch)
                idle.append(i)
                continue
            idle.append(i)
            yield outcomes

    def close(self) -> None:
        """Stop the actors, and the local cluster (and its watchdog) if this engine started it."""
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001,S110 (already dead)
                pass
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False
        if self.watchdog is not None:  # it kills what the shutdown left, and ends
            self.watchdog.stdin.close()
            try:
                self.watchdog.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()
                self.watchdog.wait()
            self.watchdog = None
