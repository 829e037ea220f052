"""Provenance attached to every evaluation record: versions, commit, device, host."""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
from pathlib import Path

import torch

from tlbench.core.version import __version__

_ROOT = Path(__file__).resolve().parent.parent  # the package (harness/ in a checkout)
#: The checkout the package is installed from (editable): the folder holding its pyproject.toml.
_CHECKOUT = _ROOT.parent


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the tlbench source tree, with ``-dirty`` when it has local changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(_CHECKOUT), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        # Only tlbench's own checkout counts (the repository whose top holds the package's pyproject.toml):
        # an installed copy may sit inside another repository.
        if not (_CHECKOUT / "pyproject.toml").is_file() or \
                Path(git("rev-parse", "--show-toplevel")).resolve() != _CHECKOUT:
            return "unknown"
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device) -> dict[str, str]:
    return {
        "tlbench_version": __version__,
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "device": device_name(device),
        "host": socket.gethostname(),
    }
