"""Every error gpuslice raises on purpose derives from :class:`GpusliceError`.

Errors keep their fields and build their message in ``__str__`` (the Parsl habit), so
callers can inspect them and the CLI can print them without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class GpusliceError(Exception):
    """Base class of every error gpuslice raises for a known cause."""

    #: Exit code the CLI uses for this error: 2 for user input, 1 for the environment.
    exit_code: int = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a plan or fleet file.

    Attributes:
        location: dotted path of the offending field, e.g. ``pools.small.mps.memory``;
            ``<yaml>`` for the document itself.
        message: what is wrong.
        hint: what to do about it (may be empty).
    """

    location: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}"
        if self.hint:
            text += f" (fix: {self.hint})"
        return text


class PlanError(GpusliceError):
    """A plan (or fleet file) was refused; :attr:`problems` lists every reason at once.

    The message shows the first :attr:`SHOWN` problems and counts the rest, so a hostile
    file cannot flood a terminal; :attr:`problems` keeps them all.
    """

    exit_code = 2
    #: Problems the message lists before it only counts the rest.
    SHOWN = 50

    def __init__(self, problems: list[Problem] | tuple[Problem, ...], source: str = "plan") -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"{self.source} has {count} problem{'s' if count != 1 else ''}:"
        lines = [head, *(f"  - {p}" for p in self.problems[: self.SHOWN])]
        if count > self.SHOWN:
            lines.append(f"  … and {count - self.SHOWN} more of the same kinds")
        return "\n".join(lines)


class UsageError(GpusliceError):
    """A command was asked for something it cannot do with the input given."""

    exit_code = 2


class NvmlUnavailable(GpusliceError):
    """NVML could not start: no NVIDIA driver or GPU on this machine."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"no NVIDIA GPU or driver is usable here ({self.reason}); "
            "describe the GPUs in a fleet file and pass --fleet FILE (see `gpuslice gpus --help`)"
        )


class MpsError(GpusliceError):
    """The MPS control daemon could not be started, reached or stopped."""


class MigError(GpusliceError):
    """A MIG layout could not be read, asserted or applied."""
