"""Work handed out on demand: the pull model every dispatched search runs on.

A search that spreads over several *executors* (this machine's lanes, each
worker server, a simulated machine) cuts its work into small *tasks* and puts
them in a :class:`TaskQueue`.  Each executor takes the next task when it is
free (:meth:`TaskQueue.take`), so a fast executor takes more and a slow one
fewer, and nobody waits on a plan fixed up front.  A task whose executor
fails goes back to the head of the queue and runs elsewhere
(:meth:`TaskQueue.fail`); that executor takes nothing more in this search.

Results never depend on who ran what, or in what order: every candidate's
noise, in-sampler randomness and score depend only on its own seed, and the
search reads the results back in its own order (:meth:`TaskQueue.results`).

Two kinds of task:

* **free** tasks (``owner`` None) carry everything they need (a chunk of
  random search's candidates: their seeds); any executor may take one.
* **pinned** tasks (``owner`` set) continue rows whose state (a latent part-way
  through the schedule) lives on one executor: only that executor takes them.
  When their owner fails, :meth:`TaskQueue.fail` turns them into free tasks
  through the queue's ``orphan`` rule (successive halving re-runs those rows
  from their seeds, ``search/halving.py``), so the search still ends with the
  same result.

**Chunk sizes** (:func:`plan_chunks`): falling, by factoring.  The chunks
are handed out in waves of one per executor, each wave's chunks holding half
the candidates left, shared out (ceil(left / (2 x executors))); so the first
chunks are large (few requests) and the last ones small, and the executors
finish within about one small chunk of each other, whatever their speeds.  A
chunk never holds fewer candidates than ``floor``, the micro-batch an
executor samples at once (a smaller one would leave its batch part-empty),
nor fewer than one.  About log2(n / (executors x floor)) + 1 chunks per
executor: 5 for 512 candidates on 16 executors with a micro-batch of 4.

Two things a driver may ask for when an executor finds nothing to take: a
**backup** run of a free task another executor is running, when it would
finish it sooner (the first answer is kept; the same answer, since it
depends on the task alone), and a **steal** of a backlogged executor's last
pinned task, re-run from scratch through ``orphan``, when that would end
sooner than its owner would get to it.  Both go by the speeds the queue
measures (task cost over the ``clock`` seconds each executor took).

Drivers run the queue: :func:`drive_serial` (one thread, executors in turn:
tests), ``engine/workers.py`` (one thread per worker server, this machine's
lanes in the calling thread) and the simulated clock of
``bench/scaleout_sim.py``.  :class:`Pool` is a dispatcher over executors in
this process (``search.random_search.Dispatcher``, and the rounds of
``search/halving.py``).

Nothing here imports ComfyUI or does I/O.
"""
from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Protocol, Sequence, Tuple, Union

import torch

from .sharded import run_shard


def plan_chunks(n: int, executors: int, floor: int = 1) -> List[Tuple[int, int]]:
    """Candidates 0..n-1 cut into contiguous chunks (start, count), in order, their sizes falling (factoring):
    in each wave every executor's chunk is half the remaining candidates shared out,
    ceil(remaining / (2 x executors)), but never below ``floor`` (an executor's micro-batch) or 1."""
    n, e, floor = int(n), max(1, int(executors)), max(1, int(floor))
    out: List[Tuple[int, int]] = []
    s = 0
    while s < n:
        size = max(floor, math.ceil((n - s) / (2 * e)))
        for _ in range(e):
            if s >= n:
                break
            c = min(size, n - s)
            out.append((s, c))
            s += c
    return out


class ExecutorFault(RuntimeError):
    """The executor could not finish its task (unreachable, failed, timed out, a bad answer): the task goes
    back to the queue and runs elsewhere; the executor takes nothing more in this search."""


@dataclass(eq=False)
class Task:
    """One piece of work.  ``key``: its name in the results (a chunk's (start, count)); ``work(host, held)``
    runs it on an executor that has a SearchHost (``held``: that executor's state between rounds);
    ``spec``: what the task is, as plain data (for executors elsewhere, and reports); ``owner``: the executor
    holding the rows' state (a pinned task), or None."""
    key: Hashable
    work: Optional[Callable[[Any, Dict[Any, Any]], Any]] = None
    spec: Dict[str, Any] = field(default_factory=dict)
    owner: Optional[str] = None
    # its size, in one unit per queue (candidates, or NFE-rows where the strategy knows them): the queue measures
    # speeds with it and weighs backups and steals by it; never part of a result
    cost: float = 1.0


class TaskQueue:
    """The pull model's bookkeeping, safe to share between threads (``cond`` guards it; drivers may wait on
    it).  ``orphan(task, dead)``: the free task(s) that replace a pinned task whose owner ``dead`` failed."""

    def __init__(self, tasks: Iterable[Task],
                 orphan: Optional[Callable[[Task, str], Union[Task, List[Task]]]] = None):
        self.cond = threading.Condition()
        self.order: List[Hashable] = []
        self.pending: collections.deque = collections.deque()
        self.running: Dict[Hashable, Tuple[Task, List[str]]] = {}  # key -> (task, who runs it: 2 with a backup)
        self.done: Dict[Hashable, Any] = {}
        self.ran: Dict[Hashable, str] = {}
        self.dead: Dict[str, str] = {}
        self.notes: List[str] = []
        self.backups = 0       # backup runs handed out (a running task started again by an idle executor)
        self.steals = 0        # pinned tasks re-run from scratch by an idle executor
        self.clock: Callable[[], float] = time.monotonic  # a driver on another clock (a simulation) sets its own
        self.started: Dict[Tuple[Hashable, str], float] = {}
        self.speed: Dict[str, Tuple[float, float]] = {}  # executor -> (cost finished, seconds it took)
        self.uncancellable: set = set()  # executors whose runs cannot be stopped: no backup of theirs
        self.seen: set = set()           # executors that asked for work (the ones the end-game plans with)
        self.defer = True                # a free task goes to whoever would finish it first (:meth:`_defer`)
        self.deferred = 0                # times an executor left a task to a faster one
        self.orphan = orphan
        for t in tasks:
            self.add(t)

    def add(self, task: Task) -> None:
        with self.cond:
            new = self._orphaned(task, task.owner) if task.owner is not None and task.owner in self.dead else [task]
            if task.key not in self.order:
                self.order.append(task.key)
            self._replace(task.key, new)
            self.pending.extend(new)
            self.cond.notify_all()

    def _replace(self, key: Hashable, new: List[Task]) -> None:
        """Puts the keys of ``new`` where ``key`` stood in the task order (a pinned task's replay, cut up)."""
        if [t.key for t in new] != [key] and key in self.order:
            at = self.order.index(key)
            self.order[at:at + 1] = [t.key for t in new]

    def _orphaned(self, task: Task, who: str) -> List[Task]:
        if self.orphan is None:
            raise ExecutorFault(f"the rows of task {task.key!r} lived on {who}, which failed, and this search "
                                "cannot re-run them elsewhere")
        new = self.orphan(task, who)
        return list(new) if isinstance(new, (list, tuple)) else [new]

    def take(self, who: str, backup: bool = False, steal: bool = False) -> Optional[Task]:
        """The next task ``who`` may run (free, or pinned to it), first come first served; None when there is
        none now (there may be later: a failed executor's task comes back).  With ``steal``, when nothing is
        pending for it, the last pinned task of the executor with the most pinned work waiting, re-run from
        scratch (``orphan``) when that costs less than the owner's other waiting work (:meth:`_steal`).  With
        ``backup``, then, a free task another executor is running, when ``who`` would finish it sooner
        (:meth:`_backup`): whichever finishes first gives the result (the same result: it depends on the task
        alone), so a slow executor's last task does not hold up the end."""
        with self.cond:
            if who in self.dead:
                return None
            self.seen.add(who)
            for i, t in enumerate(self.pending):
                if t.owner is None or t.owner == who:
                    if t.owner is None and self._defer(who):
                        self.deferred += 1
                        break
                    del self.pending[i]
                    self._start(t, who)
                    return t
            if steal:
                t = self._steal(who)
                if t is not None:
                    return t
            if backup:
                return self._backup(who)
            return None

    def _defer(self, who: str) -> bool:
        """Whether ``who`` should leave the free tasks pending to faster executors: the end-game of uneven
        machines.  The pending free tasks are planned greedily, in order, each on the executor that would
        finish it first (earliest finish time, from the speeds measured so far; a busy executor is free when its
        running task should end); ``who`` defers when that plan gives it none of them, since then a faster
        machine, free soon, ends each of them sooner than ``who`` would.  Never before ``who``'s own speed is
        measured, nor while an executor of unknown speed could take work."""
        mine = self.rate(who)
        if not self.defer or mine is None:
            return False
        now = self.clock()
        rates: Dict[str, float] = {who: mine}
        free: Dict[str, float] = {who: now}
        for e in self.seen:
            if e == who or e in self.dead:
                continue
            r = self.rate(e)
            if r is None:
                return False
            rates[e], free[e] = r, now
        for key, (t, runners) in self.running.items():
            for e in runners:
                if e in free and e != who:
                    ends = self.started.get((key, e), now) + float(t.cost) / rates[e]
                    free[e] = max(free[e], ends)
        for t in self.pending:
            if t.owner is not None:
                continue
            best = min(free, key=lambda e: (free[e] + float(t.cost) / rates[e], e != who))
            if best == who:
                return False
            free[best] += float(t.cost) / rates[best]
        return True

    def _backup(self, who: str) -> Optional[Task]:
        """A free task another executor runs, for ``who`` to run too: the one whose run by ``who`` would end
        soonest before its runner's, reckoned from measured speeds (:meth:`rate`); a runner not measured yet
        is taken to need as long again as it has run so far.  None when no backup would end sooner, or
        ``who``'s speed is not known either.  Runners in ``uncancellable`` (this machine's lanes, which cannot
        be stopped mid-chunk, so the search would wait for them anyway) get no backup."""
        now, best = self.clock(), None
        mine = self.rate(who)
        for key, (t, runners) in self.running.items():
            if t.owner is not None or len(runners) != 1 or who in runners or runners[0] in self.uncancellable:
                continue
            began = self.started.get((key, runners[0]), now)
            theirs = self.rate(runners[0])
            ends = began + t.cost / theirs if theirs else now + (now - began)
            speed = mine or theirs
            if not speed:
                continue
            gain = ends - (now + t.cost / speed)
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, t)
        if best is None:
            return None
        self._start(best[1], who)
        self.backups += 1
        return best[1]

    def rate(self, who: str) -> Optional[float]:
        """``who``'s measured speed (task cost per second of ``clock``, over the tasks it finished), or None."""
        cost, spent = self.speed.get(who, (0.0, 0.0))
        return cost / spent if spent > 0 and cost > 0 else None

    def _steal(self, who: str) -> Optional[Task]:
        """A pinned task of a backlogged executor, for ``who`` to re-run from scratch (``orphan``): the one whose
        replay by ``who`` would end soonest before its owner would have finished it, reckoned from each one's
        measured speed (:meth:`rate`; equal speeds while unmeasured) and what the owner has still to do (the
        rest of its running task, then its pinned tasks waiting before this one); None when no replay ends
        sooner.  The owner gives up its last waiting task, so the rows it has at hand stay there."""
        if self.orphan is None:
            return None
        backlog: Dict[str, List[Task]] = {}
        for t in self.pending:
            if t.owner is not None and t.owner != who and t.owner not in self.dead:
                backlog.setdefault(t.owner, []).append(t)
        now = self.clock()
        best = None
        for owner, tasks in sorted(backlog.items()):
            mine = self.rate(who)
            theirs = self.rate(owner) or mine or 1.0
            mine = mine or theirs
            last = tasks[-1]
            left = sum(t.cost for t in tasks)  # its waiting tasks, the last one included
            for key, (t, runners) in self.running.items():  # and the rest of what it runs now
                if owner in runners:
                    left += max(0.0, t.cost - (now - self.started.get((key, owner), now)) * theirs)
            new = self._orphaned(last, owner)
            gain = left / theirs - sum(t.cost for t in new) / mine
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, last, new)
        if best is None:
            return None
        _, last, new = best
        self.pending.remove(last)
        self._replace(last.key, new)
        self.pending.extendleft(reversed(new[1:]))
        self.steals += 1
        self._start(new[0], who)
        return new[0]

    def _start(self, task: Task, who: str) -> None:
        if task.key in self.running:
            self.running[task.key][1].append(who)
        else:
            self.running[task.key] = (task, [who])
        self.started[(task.key, who)] = self.clock()

    def finish(self, task: Task, who: str, result: Any) -> List[str]:
        """``who`` finished ``task``: the first answer is kept (a backup's later one is dropped).  The other
        executors still running it, whose run can be stopped."""
        with self.cond:
            _, runners = self.running.pop(task.key, (task, [who]))
            begun = self.started.pop((task.key, who), None)
            if begun is not None and task.key not in self.done:  # its speed, from the tasks it finished first
                cost, spent = self.speed.get(who, (0.0, 0.0))
                self.speed[who] = (cost + float(task.cost), spent + max(0.0, self.clock() - begun))
            if task.key not in self.done:
                self.done[task.key] = result
                self.ran[task.key] = who
            self.cond.notify_all()
            return [w for w in runners if w != who]

    def fail(self, task: Optional[Task], who: str, why: str, quiet: bool = False) -> None:
        """``who`` could not finish ``task`` (None: it failed, whatever it was running): the task goes back to
        the head of the queue (unless a backup still runs it), ``who`` takes nothing more, and its pinned tasks
        become free ones (``orphan``)."""
        with self.cond:
            mine = [t for t, runners in self.running.values() if who in runners] if task is None else [task]
            back = []
            for t in mine:
                _, runners = self.running.get(t.key, (t, [who]))
                if who in runners:
                    runners.remove(who)
                if runners:
                    continue  # its backup goes on
                self.running.pop(t.key, None)
                if t.key not in self.done:
                    back.append(t)
            if who not in self.dead:
                self.dead[who] = why
            if not quiet:
                for t in back:
                    self.notes.append(f"{who} {why}: its task ({describe(t)}) was re-assigned")
            rest = []
            for t in self.pending:
                (back if t.owner == who else rest).append(t)
            self.pending = collections.deque(rest)
            for t in reversed(back):
                if t.owner == who:
                    new = self._orphaned(t, who)
                    self._replace(t.key, new)
                    self.pending.extendleft(reversed(new))
                else:
                    self.pending.appendleft(t)
            self.cond.notify_all()

    def complete(self) -> bool:
        with self.cond:
            return all(k in self.done for k in self.order)

    def results(self) -> List[Any]:
        """The results in the order the tasks were added."""
        with self.cond:
            return [self.done[k] for k in self.order]


def describe(task: Task) -> str:
    s = task.spec
    if "start" in s and "count" in s:
        return f"candidates {s['start']}..{s['start'] + s['count'] - 1}"
    if "rows" in s or "children" in s:
        rows = list(s.get("rows") or s["children"])
        return f"{len(rows)} row(s) to step {s.get('end')}"
    if "seeds" in s:
        return f"{len(s['seeds'])} noise row(s)"
    return str(task.key)


class Executor(Protocol):
    """Something that runs tasks: ``name`` (as reports say it), ``run(task)`` (its result; raises
    :class:`ExecutorFault` when it cannot)."""
    name: str

    def run(self, task: Task) -> Any: ...


class HostExecutor:
    """An executor in this process over its own SearchHost (a lane, a simulated machine): it runs each task's
    ``work`` on its host, and keeps its rows' state between rounds in ``held``."""

    def __init__(self, name: str, host: Any):
        self.name, self.host = name, host
        self.held: Dict[Any, Any] = {}

    def run(self, task: Task) -> Any:
        if task.work is None:
            raise ValueError(f"task {task.key!r} has no work to run in this process")
        return task.work(self.host, self.held)


def drive_serial(queue: TaskQueue, executors: Sequence[Executor], interrupted: Callable[[], None] = lambda: None
                 ) -> None:
    """Runs the queue in this thread: the executors take tasks in turn (as equal machines would) until it is
    complete.  An executor that raises :class:`ExecutorFault` is dropped and its task runs elsewhere."""
    queue.defer = False  # one at a time in this thread: nobody is busy, so there is no end-game to plan
    while not queue.complete():
        progressed = False
        for ex in executors:
            task = queue.take(ex.name)
            if task is None:
                continue
            progressed = True
            interrupted()
            try:
                result = ex.run(task)
            except ExecutorFault as e:
                queue.fail(task, ex.name, str(e))
                continue
            queue.finish(task, ex.name, result)
        if not progressed and not queue.complete():
            raise ExecutorFault("every executor failed before the search's work was done: " +
                                "; ".join(f"{k} {v}" for k, v in queue.dead.items()))


Driver = Callable[[TaskQueue, Sequence[Executor]], None]


def first_member(matrix: torch.Tensor) -> torch.Tensor:
    """An absolute verifier's scores: its one column."""
    return matrix[:, 0]


class Pool:
    """A dispatcher over executors in this process (``search.random_search.Dispatcher``, and
    ``search/halving.py``'s rounds): ``executors`` (HostExecutors or any :class:`Executor`), run by ``drive``
    (:func:`drive_serial`, or a simulated clock); ``local``: the search's own host takes chunks too (an
    executor named 'local' that runs random search's ``run_local``); ``floor``: the smallest chunk worth
    sending (an executor's micro-batch); ``seed``: the search's seed, which members need to sample random
    search's chunks (as a worker server gets it in its prompt); ``recombine``: a relative verifier's rule
    over the member matrix.

    Successive halving's rounds use :meth:`run` (a round's tasks, with the ``orphan`` rule for rows whose
    executor failed), :meth:`plan`, :meth:`recombine`, :meth:`executors` and ``dead``."""

    def __init__(self, executors: Sequence[Executor], drive: Driver = drive_serial, local: bool = False,
                 floor: int = 1, recombine: Callable[[torch.Tensor], torch.Tensor] = first_member,
                 seed: Optional[int] = None, verifier: str = "verifier"):
        self.members = list(executors)
        self.drive, self.local, self.floor = drive, bool(local), int(floor)
        self.rule = recombine
        self.seed, self.verifier = seed, verifier
        self.queues: List[TaskQueue] = []   # every queue this pool ran, in order (reports, simulations)
        self.dead: Dict[str, str] = {}       # executors that failed, across the search's rounds
        self.speed: Dict[str, Tuple[float, float]] = {}  # executor -> (cost finished, seconds it took)

    def executors(self) -> int:
        return len(self.members) + int(self.local)

    def plan(self, n: int, floor: int = 1) -> List[Tuple[int, int]]:
        """The chunks of ``n`` candidates (:func:`plan_chunks`; ``floor``: the search host's micro-batch)."""
        return plan_chunks(n, self.executors(), max(int(floor), self.floor))

    def recombine(self, matrix: torch.Tensor) -> torch.Tensor:
        return self.rule(matrix)

    def run(self, tasks: Iterable[Task], orphan: Optional[Callable[[Task, str], Task]] = None,
            extra: Sequence[Executor] = ()) -> TaskQueue:
        """Runs these tasks to the end on the pool's executors (and ``extra`` ones); the queue, its results in
        task order.  An executor that failed in an earlier round takes nothing more."""
        queue = TaskQueue([], orphan)
        queue.dead.update(self.dead)
        queue.speed = self.speed  # the executors' measured speeds carry over from round to round
        for t in tasks:
            queue.add(t)
        self.queues.append(queue)
        try:
            self.drive(queue, [*extra, *self.members])
        finally:
            self.dead.update(queue.dead)
        return queue

    def __call__(self, plan: List[Tuple[int, int]], run_local: Callable[[int, int], Any],
                 steps: Optional[int] = None) -> List[Any]:
        """Random search's chunks: each member samples and scores its chunks on its own host (``run_shard``
        of the pool's ``seed``; on ``steps`` steps when given: a coarse search); with ``local``, the search's own
        host takes chunks too (``run_local``)."""
        if self.seed is None:
            raise ValueError("this pool does not know the search's seed, which its members need for random search")
        seed, verifier = int(self.seed), self.verifier

        def on(host: Any) -> Any:
            return host if steps is None or int(host.steps) == int(steps) else host.with_steps(int(steps))

        def work(start: int, count: int):
            return lambda host, held: run_shard(on(host), seed, start, count, verifier=verifier)
        tasks = [Task((s, c), work(s, c), {"start": s, "count": c}, cost=float(c)) for s, c in plan]
        extra = [_Local(run_local)] if self.local else []
        queue = self.run(tasks, extra=extra)
        out = queue.results()
        for k, rows in zip(queue.order, out):
            if queue.ran.get(k, "local") != "local":
                rows.where = queue.ran[k]
        return out


class AtSteps:
    """A dispatcher whose executors sample on ``steps`` steps: coarse-to-fine's coarse search.  Every task's work
    runs on its executor's host re-scheduled to ``steps`` (``host.with_steps``, unless it is already there), and
    its spec says ``steps`` (what a worker server is sent).  Everything else is the wrapped dispatcher's."""

    def __init__(self, inner: Any, steps: int):
        self.inner, self.steps = inner, int(steps)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _on(self, host: Any) -> Any:
        return host if int(host.steps) == self.steps else host.with_steps(self.steps)

    def wrap(self, task: Task) -> Task:
        work = task.work
        return Task(task.key, None if work is None else (lambda host, held: work(self._on(host), held)),
                    dict(task.spec, steps=self.steps), task.owner, task.cost)

    def run(self, tasks: Iterable[Task], orphan: Optional[Callable[[Task, str], Any]] = None,
            extra: Sequence[Executor] = ()) -> TaskQueue:
        def wrapped(task: Task, dead: str):
            new = orphan(task, dead)
            return [self.wrap(t) for t in new] if isinstance(new, (list, tuple)) else self.wrap(new)
        return self.inner.run([self.wrap(t) for t in tasks], orphan=None if orphan is None else wrapped, extra=extra)

    def __call__(self, plan: List[Tuple[int, int]], run_local: Callable[[int, int], Any]) -> List[Any]:
        return self.inner(plan, run_local, steps=self.steps)


class _Local:
    """The search's own host as an executor of random search's chunks (``run_local``)."""
    name = "local"

    def __init__(self, run_local: Callable[[int, int], Any]):
        self.run_local = run_local

    def run(self, task: Task) -> Any:
        return self.run_local(task.spec["start"], task.spec["count"])
