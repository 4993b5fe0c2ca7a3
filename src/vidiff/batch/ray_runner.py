"""Running a batch on a Ray cluster: one actor per GPU (or per CPU slot when the cluster has none).

Each actor is a :class:`~vidiff.batch.worker.BatchWorker` that keeps its loaded pipelines. The
driver hands every actor a whole group of jobs (same pipeline and model) one job at a time; an
actor with nothing left takes jobs from the longest unfinished group of another. An actor that dies
mid-job (its process crashed or was killed) is replaced by a fresh one, which runs that job again,
up to ``retries`` times. Ray is optional (``pip install 'vidiff[ray]'``): it is imported only here.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

from ..cli.errors import UsageError
from .jobs_file import BatchJob
from .plan import Report, group_by_model
from .worker import CRASH_ONCE_ENV, BatchWorker, Outcome


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`UsageError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray, which is not installed: pip install 'vidiff[ray]'") from None
    return ray


def connect(ray: Any, address: str) -> bool:
    """Join the cluster (``auto``: ``ray.init()``, a new local one unless RAY_ADDRESS names one; else
    the address given); True when this call started Ray (and so must shut it down)."""
    if ray.is_initialized():
        return False
    ray.init(address=None if address == "auto" else address)
    return True


def actor_slots(ray: Any, device: str, jobs: int) -> tuple[int, dict[str, float], str]:
    """(how many actors, each one's resource request, the device its runs use)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if device == "cuda" and gpus == 0:
        raise UsageError("--device cuda: the Ray cluster has no GPUs; use --device cpu or auto")
    if gpus and device != "cpu":
        return min(gpus, jobs), {"num_gpus": 1}, "cuda"
    return max(1, min(int(resources.get("CPU", 1)), jobs)), {"num_cpus": 1}, "cpu"


def run_on_ray(
    jobs: list[BatchJob], out: Path, address: str, device: str, pipelines_kept: int, retries: int, report: Report,
) -> list[Outcome]:
    """Run ``jobs`` (none finished yet) on Ray actors; ``report`` is called after each job."""
    ray = import_ray()
    started = connect(ray, address)
    try:
        slots, resources, worker_device = actor_slots(ray, device, len(jobs))
        actor_class = ray.remote(BatchWorker).options(**resources)

        def new_actor() -> Any:
            return actor_class.remote(worker_device, pipelines_kept, os.getcwd(), os.environ.get(CRASH_ONCE_ENV))

        return _Dispatcher(ray, [new_actor() for _ in range(slots)], new_actor, out, retries, report).run(jobs)
    finally:
        if started:
            ray.shutdown()


class _Dispatcher:
    """Feeds the actors one job at a time and replaces those that die."""

    def __init__(self, ray: Any, actors: list[Any], new_actor, out: Path, retries: int, report: Report) -> None:
        self.ray, self.new_actor = ray, new_actor
        self.actors: list[Any | None] = actors  # None: died, not yet replaced
        self.out, self.retries, self.report = str(out), retries, report
        self.assigned: list[collections.deque[BatchJob]] = [collections.deque() for _ in actors]
        self.groups: collections.deque[list[BatchJob]] = collections.deque()
        self.in_flight: dict[Any, tuple[int, BatchJob]] = {}  # Ray ObjectRef → (actor slot, job)
        self.deaths: collections.Counter[str] = collections.Counter()  # job name → attempts whose worker died

    def run(self, jobs: list[BatchJob]) -> list[Outcome]:
        self.groups.extend(group_by_model(jobs))
        outcomes = []
        try:
            for slot in range(len(self.actors)):
                self._submit(slot)
            while self.in_flight:
                (ref,), _ = self.ray.wait(list(self.in_flight), num_returns=1)
                slot, job = self.in_flight.pop(ref)
                outcome = self._collect(ref, slot, job)
                if outcome is not None:
                    outcomes.append(outcome)
                    self.report(outcome)
                self._submit(slot)
        finally:
            for actor in self.actors:
                if actor is not None:
                    self.ray.kill(actor)  # frees their GPUs / CPU slots for whatever runs next
        return outcomes

    def _submit(self, slot: int) -> None:
        """Give actor ``slot`` its next job: from its group, a new group, or another actor's group."""
        queue = self.assigned[slot]
        if not queue and self.groups:
            queue.extend(self.groups.popleft())
        if not queue:
            donor = max(self.assigned, key=len)
            if donor:
                queue.append(donor.pop())
        if queue:
            job = queue.popleft()
            if self.actors[slot] is None:
                self.actors[slot] = self.new_actor()  # a fresh process in place of one that died
            self.in_flight[self.actors[slot].run_job.remote(job, self.out)] = (slot, job)

    def _collect(self, ref: Any, slot: int, job: BatchJob) -> Outcome | None:
        """The job's outcome, or None when its actor died and the job was put back to run again."""
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exceptions.RayActorError as error:
            self.deaths[job.name] += 1
            self.ray.kill(self.actors[slot])  # dead already, or unreachable: its GPU must be freed either way
            self.actors[slot] = None  # replaced when it gets its next job
            if self.deaths[job.name] <= self.retries:
                self.assigned[slot].appendleft(job)
                return None
            died = self.deaths[job.name]
            reason = f"its worker died {died} time(s) ({type(error).__name__}); not retried again (--retries {self.retries})"
            return Outcome(job.name, job.line, "failed", reason)
        except exceptions.RayError as error:
            return Outcome(job.name, job.line, "failed", f"{type(error).__name__}: {' '.join(str(error).split())[:300]}")
