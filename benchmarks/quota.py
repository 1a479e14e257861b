"""CPU quotas that emulate Lambda memory sizes: a cgroup whose CFS quota is the size's CPU share.

Lambda gives a function CPU in proportion to its memory, one full vCPU at 1,769 MB
(``benchmarks.cost.ONE_VCPU_MB``). A process in a cgroup with ``quota / period = share`` gets that
share of a core, as the function would. The period is short (``PERIOD_US``) so that a request of a
few milliseconds spans several periods and is slowed on average, as sustained back-to-back traffic
is; with the default 100 ms period a 5 ms request fits in one period's quota and runs at full
speed once, then waits.

The cgroup v1 ``cpu`` controller (``cpu.cfs_period_us`` / ``cpu.cfs_quota_us``) and cgroup v2
(``cpu.max``) are both handled; creating a group needs root and a writable hierarchy. Where
neither is there, ``create`` says why and the benchmark estimates instead (full-CPU latency divided
by the share).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

PERIOD_US = 20_000
# The kernel refuses a CFS quota under 1 ms: at a 20 ms period that is a share of 0.05 (88 MB).
MIN_QUOTA_US = 1_000
V1_ROOT = Path("/sys/fs/cgroup/cpu")


@dataclass(frozen=True)
class CpuGroup:
    """A cgroup with a CPU quota: ``kind`` is ``v1`` or ``v2``, ``path`` its directory."""

    kind: str
    path: Path

    def join(self, pid: int | None = None) -> None:
        """Moves a process (default: this one) into the group."""
        (self.path / "cgroup.procs").write_text(str(pid or os.getpid()))

    def set_share(self, share: float, period_us: int = PERIOD_US) -> int:
        """Limits the group to ``share`` of one CPU; returns the quota written, in microseconds."""
        quota = max(MIN_QUOTA_US, round(period_us * share))
        if self.kind == "v1":
            (self.path / "cpu.cfs_period_us").write_text(str(period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (self.path / "cpu.max").write_text(f"{quota} {period_us}")
        return quota

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": str(self.path)}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> CpuGroup:
        return cls(data["kind"], Path(data["path"]))


def _v2_root() -> Path | None:
    """The mount point of a cgroup v2 hierarchy that has the cpu controller, if any."""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            root = Path(fields[1])
            controllers = root / "cgroup.controllers"
            if controllers.is_file() and "cpu" in controllers.read_text().split():
                return root
    return None


def create(name: str) -> tuple[CpuGroup | None, str]:
    """Creates a child cgroup with a CPU controller.

    Args:
        name: the directory name of the group.

    Returns:
        ``(group, how)``, or ``(None, why not)`` when no hierarchy is writable here.
    """
    reasons = []
    if (V1_ROOT / "cpu.cfs_quota_us").is_file():
        path = V1_ROOT / name
        try:
            path.mkdir(exist_ok=True)
            group = CpuGroup("v1", path)
            group.set_share(1.0)
            return group, f"cgroup v1 cpu controller ({path}, CFS period {PERIOD_US} us)"
        except OSError as exc:
            reasons.append(f"cgroup v1 {V1_ROOT} not writable ({exc.strerror})")
    else:
        reasons.append("no cgroup v1 cpu controller")
    root = _v2_root()
    if root is not None:
        path = root / name
        try:
            subtree = root / "cgroup.subtree_control"
            if "cpu" not in subtree.read_text().split():
                subtree.write_text("+cpu")
            path.mkdir(exist_ok=True)
            group = CpuGroup("v2", path)
            group.set_share(1.0)
            return group, f"cgroup v2 cpu.max ({path}, period {PERIOD_US} us)"
        except OSError as exc:
            reasons.append(f"cgroup v2 {root} not writable ({exc.strerror})")
    else:
        reasons.append("no cgroup v2 hierarchy with the cpu controller")
    return None, "; ".join(reasons)


def remove(group: CpuGroup) -> None:
    """Removes the group (its processes must have exited)."""
    # Still busy or already gone: an empty group left behind is harmless.
    with contextlib.suppress(OSError):
        group.path.rmdir()
