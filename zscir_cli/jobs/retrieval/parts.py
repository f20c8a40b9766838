"""One runner for encoding cut into parts and shared by the processes of a torchrun group:
plan -> deal out -> write -> wait -> assemble. Sharded indexing (`sharded_index`) and the
sharded feature cache (`sharded_features`) are its two users; each says how a part is written
and how the parts become its artifact.

A gallery's rows are cut into parts of `part_rows` rows, a multiple of the batch size, so that
every batch holds the images it holds in one process and the numbers are one process's. Rank 0
plans: it lists the parts not yet written (a layout cut another way is discarded) and every rank
takes its share in turn. A part's files are written under temporary names and renamed into
place, then its log (rows, unreadable images, timings, rank), last: a part is done when its log
is there, so a rerun after a crash, with any number of processes, skips the parts written.

Rank 0 waits for the last log by watching the files (no collective, so a long part never trips
a process group's timeout), checks the unreadable images and assembles the artifact. Ranks that
need the artifact too (`RankRole.WAIT`) watch the cache for it; a user error on rank 0 is left
in the parts folder (`failed.json`) for them to raise alike. Several machines need the cache on
a shared file system.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zscir_cli.core import faults, locks
from zscir_cli.core.cache import Artifact
from zscir_cli.core.durable import write_atomically
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import Gallery
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.distributed import Dist
from zscir_cli.jobs.retrieval.encoder import GalleryRows, RunStats

PARTS = ".parts"  # under the cache root: one folder per build in progress, <kind>-<key>
LAYOUT = "layout.json"  # how the rows were cut: a rerun cut another way starts afresh
LOGS = "log"  # one log per written part, written last
TMP = "tmp"  # files being written, renamed into place when whole
FAILED = "failed.json"  # rank 0's user error, for the ranks that wait for the artifact
POLL_S = 0.1  # seconds between looks at the parts folder (a few stat calls)


def parts_folder(root: Path, kind: str, key: str) -> Path:
    return Path(root) / PARTS / f"{kind}-{key}"


def lock_prefix(kind: str, key: str) -> str:
    """The names of the locks the processes of a build hold, one per rank, begin so."""
    return f"parts-{kind}-{key}-"


def part_name(k: int, count: int) -> str:
    """clip-retrieval's part number: zero-padded to the digits of the part count, so that the
    order of the file names is the order of the parts."""
    return str(k).zfill(int(math.log10(max(count, 1))) + 1)


@dataclass
class Plan:
    action: str  # found (nothing to encode) | encode | error
    pending: list[int] = field(default_factory=list)  # parts to write, in order
    count: int = 0  # parts of the gallery
    part_rows: int = 0
    error: tuple[str, str] | None = None


@dataclass
class Part:
    """One part to write: its number, name, gallery rows and the folder for temporary files."""

    number: int
    name: str
    rows: range
    tmp: Path

    def gallery(self, gallery: Gallery) -> GalleryRows:
        return GalleryRows(gallery, self.rows)


# (part) -> the part's log fields; it has renamed its files into place when it returns
PartWriter = Callable[[Part], dict[str, Any]]


class PartsRun:
    """One build of `kind` (index | features) with content key `key` over `n` rows."""

    def __init__(self, ctx: Context, d: Dist, kind: str, key: str, n: int, part_rows: int):
        self.ctx, self.d, self.kind, self.key, self.n, self.part_rows = ctx, d, kind, key, n, part_rows
        self.folder = parts_folder(ctx.store.root, kind, key)
        self.count = math.ceil(n / part_rows)

    def held(self):
        """This rank's lock on the build, held while it works on it: `cache rm --incomplete` never
        removes the parts of a build a live process is working on."""
        return locks.hold(self.ctx.store.root, f"{lock_prefix(self.kind, self.key)}{self.d.rank}")

    # -- plan (rank 0), shared with every rank -----------------------------------------------

    def plan(self, decide: Callable[[], str | None] = lambda: None) -> Plan:
        """Rank 0's plan, on every rank. `decide()` (rank 0) returns an action other than encoding
        ('found' when the artifact is there), or None to encode; a user error it or the planning
        raises is every rank's."""
        return self.d.share(self._plan(decide) if self.d.main else None)

    def _plan(self, decide: Callable[[], str | None]) -> Plan:
        try:
            action = decide()
            if action is not None:
                return Plan(action)
            self.ctx.store.ensure_writable()
            layout = {"rows": self.n, "part_rows": self.part_rows, "parts": self.count}
            if (self.folder / LAYOUT).is_file() and json.loads((self.folder / LAYOUT).read_text()) != layout:
                self.ctx.reporter.info(f"discarding the parts in {self.folder}: they were cut another way")
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / FAILED).unlink(missing_ok=True)  # a previous run's verdict; this run decides again
            (self.folder / LAYOUT).write_text(json.dumps(layout))
            pending = [k for k in range(self.count) if not self.done(k)]
            if len(pending) < self.count:
                self.ctx.reporter.info(f"resuming: {self.count - len(pending)} of {self.count} parts are already "
                                       f"written in {self.folder}")
            return Plan("encode", pending, self.count, self.part_rows)
        except UserError as e:
            return Plan("error", error=(e.message, e.hint or ""))

    def log_path(self, k: int) -> Path:
        return self.folder / LOGS / f"part_{part_name(k, self.count)}.json"

    def done(self, k: int) -> bool:
        return self.log_path(k).is_file()

    # -- deal out and write --------------------------------------------------------------------

    def write(self, plan: Plan, write_part: PartWriter, kill_point: str) -> None:
        """This rank's share of the pending parts, each written then logged."""
        for k in plan.pending[self.d.rank::self.d.world]:
            rows = range(k * self.part_rows, min(self.n, (k + 1) * self.part_rows))
            tmp = self.folder / TMP
            tmp.mkdir(exist_ok=True)
            log = {"rows": [rows.start, rows.stop], "rank": self.d.rank,
                   **write_part(Part(k, part_name(k, self.count), rows, tmp))}
            self._write_log(k, log, tmp)
            faults.point(kill_point)

    def _write_log(self, k: int, log: dict[str, Any], tmp: Path) -> None:
        (self.folder / LOGS).mkdir(exist_ok=True)
        write_atomically(self.log_path(k), json.dumps(log).encode())

    # -- wait and assemble (rank 0) ------------------------------------------------------------

    def wait_for_parts(self, plan: Plan) -> None:
        """Until every part is logged (the other processes' too). A process that dies takes the
        group down with it (torchrun stops the rest), so this never waits for a dead writer."""
        waiting = [k for k in plan.pending if not self.done(k)]
        if not waiting:
            return
        with self.ctx.reporter.task(f"waiting for {len(waiting)} part(s) from the other processes",
                                    total=len(waiting)) as task:
            while waiting:
                time.sleep(POLL_S)
                left = [k for k in waiting if not self.done(k)]
                task.advance(len(waiting) - len(left))
                waiting = left

    def logs(self) -> tuple[list[dict[str, Any]], RunStats]:
        """Every part's log, in part order, and their rows, unreadable images and timings summed."""
        logs = [json.loads(self.log_path(k).read_text()) for k in range(self.count)]
        stats = RunStats()
        for log in logs:
            stats.rows.extend(log["written"])
            stats.digests.extend(log.get("digests", []))
            stats.failures.extend((int(r), str(e)) for r, e in log["failures"])
            for stage, s in log["timings_s"].items():
                setattr(stats.timings, stage, getattr(stats.timings, stage) + float(s))
        return logs, stats

    def finish(self, plan: Plan, assemble: Callable[[list[dict[str, Any]], RunStats], Artifact],
               check: Callable[[RunStats], None], waited_for: bool) -> Artifact:
        """Rank 0: wait for every part, check them, assemble under the artifact's lock (unless
        another command finished it first) and remove the parts. A user error of `check` is
        left for the other ranks when they wait for the artifact (`waited_for`), then raised."""
        self.wait_for_parts(plan)
        logs, stats = self.logs()
        try:
            check(stats)
        except UserError as e:
            if waited_for:
                write_atomically(self.folder / FAILED, json.dumps({"message": e.message, "hint": e.hint}).encode())
                self.d.barrier()  # the other ranks have read it
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        with self.ctx.store.lock(self.kind, self.key, on_wait=self.ctx.reporter.info):
            art = self.ctx.store.get(self.kind, self.key)
            if art is None:
                art = assemble(logs, stats)
        shutil.rmtree(self.folder, ignore_errors=True)
        return art

    def wait_for_artifact(self) -> Artifact:
        """The other ranks: until rank 0 has published the artifact, or stopped with a user error."""
        while (art := self.ctx.store.get(self.kind, self.key)) is None:
            failed = self.folder / FAILED
            if failed.is_file():
                err = json.loads(failed.read_text())
                self.d.barrier()
                raise UserError(err["message"], err["hint"])
            time.sleep(POLL_S)
        return art


def log_fields(stats: RunStats, rows: range) -> dict[str, Any]:
    """A part's log: the gallery rows written, the unreadable ones, the seconds per stage, and the
    digest of each image written."""
    return {"written": [rows[i] for i in stats.rows], "failures": [[rows[i], e] for i, e in stats.failures],
            "timings_s": stats.timings.as_dict(), "digests": stats.digests}
