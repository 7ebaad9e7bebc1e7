"""One cgroup per sandbox slot: memory (tmpfs included) and process limits for a whole run.

cgroup v2 (the unified hierarchy at /sys/fs/cgroup): the slots live under `root` (default
/sys/fs/cgroup/sdpo-sandbox), whose parent must be able to delegate the memory and pids
controllers (the worker image's entrypoint arranges that). cgroup v1 (a `memory` and a `pids`
hierarchy, as on hosts still mounting v1): the slots live under this process's own cgroup of
each hierarchy. The fork server opens the files it needs once; per run it sets the memory
limit, moves the run into the cgroup and reads the OOM-kill counter afterwards.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")


class CgroupUnavailable(OSError):
    """No writable cgroup for the sandbox here; the message says why."""


@dataclass
class SlotCgroup:
    version: int
    dirs: list[Path]  # the slot's directories (one per v1 hierarchy, one for v2)
    procs: list[str]  # cgroup.procs files the run joins
    memory: str  # memory limit file
    oom: str  # the file with the oom_kill counter
    stat: str  # memory.stat: the server's own anonymous memory, added to each run's limit
    made: list[Path] = field(default_factory=list)  # directories we created (to remove)

    def config(self) -> dict:
        return {"procs": self.procs, "memory": self.memory, "oom": self.oom, "stat": self.stat}

    def remove(self) -> None:
        """Remove the slot's directories (the slot's uid lock makes them ours), then the parents
        we created if no other slot uses them. A killed server takes a moment to leave."""
        for d in self.dirs:
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        for d in reversed(self.made):
            if d not in self.dirs:
                try:
                    d.rmdir()
                except OSError:
                    pass  # another slot's cgroup is still in it


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise CgroupUnavailable(f"cannot write {text.strip()!r} to {path}: {exc}") from None


def _mkdir(path: Path, made: list[Path]) -> None:
    try:
        path.mkdir()
        made.append(path)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create {path}: {exc}") from None


def _own_v1_path(controller: str) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise CgroupUnavailable(f"this process is in no cgroup v1 {controller!r} hierarchy")


def _enable(parent: Path, made: list[Path]) -> None:
    wanted = {"memory", "pids"}
    have = set((parent / "cgroup.subtree_control").read_text().split())
    if not wanted <= have:
        _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(wanted)))


def slot_cgroup(uid: int, nproc: int, root: str | None = None) -> SlotCgroup:
    """Create (or reuse) the cgroup of the slot owning `uid`; CgroupUnavailable if we cannot."""
    made: list[Path] = []
    try:
        if (CGROUP_FS / "cgroup.controllers").exists():  # v2, unified
            base = Path(root) if root else CGROUP_FS / "sdpo-sandbox"
            if not (base.parent / "cgroup.controllers").exists():
                raise CgroupUnavailable(f"{base.parent} is not a cgroup v2 directory")
            _enable(base.parent, made)
            _mkdir(base, made)
            _enable(base, made)
            slot = base / f"uid-{uid}"
            _mkdir(slot, made)
            _write(slot / "pids.max", str(nproc + 2))  # + the server and the run's init
            if (slot / "memory.swap.max").exists():
                _write(slot / "memory.swap.max", "0")
            return SlotCgroup(
                2, [slot], [str(slot / "cgroup.procs")], str(slot / "memory.max"),
                str(slot / "memory.events"), str(slot / "memory.stat"), made,
            )  # fmt: skip
        mem_fs, pids_fs = CGROUP_FS / "memory", CGROUP_FS / "pids"
        if (
            not (mem_fs / "memory.limit_in_bytes").exists()
            or not (pids_fs / "cgroup.procs").exists()
        ):
            raise CgroupUnavailable(
                f"no cgroup v2 at {CGROUP_FS} and no v1 memory and pids hierarchies"
            )
        dirs = []
        for fs, controller in ((mem_fs, "memory"), (pids_fs, "pids")):
            d = fs / _own_v1_path(controller).lstrip("/") / "sdpo-sandbox"
            _mkdir(d, made)
            d = d / f"uid-{uid}"
            _mkdir(d, made)
            dirs.append(d)
        _write(dirs[1] / "pids.max", str(nproc + 2))  # + the server and the run's init
        return SlotCgroup(
            1, dirs, [str(d / "cgroup.procs") for d in dirs],
            str(dirs[0] / "memory.limit_in_bytes"), str(dirs[0] / "memory.oom_control"),
            str(dirs[0] / "memory.stat"), made,
        )  # fmt: skip
    except CgroupUnavailable:
        SlotCgroup(0, [], [], "", "", "", made).remove()
        raise
    except OSError as exc:
        SlotCgroup(0, [], [], "", "", "", made).remove()
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise CgroupUnavailable(f"cgroup file system not writable: {exc}") from None
        raise CgroupUnavailable(f"cgroup setup failed: {exc}") from None


__all__ = ["CgroupUnavailable", "SlotCgroup", "slot_cgroup"]
