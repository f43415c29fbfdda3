"""Where a benchmark result was measured: the commit and the CPU, recorded with every result.

Throughput ratios against libspn-keras differ from machine to machine (benchmarks/README.md),
so the CPU model goes with the numbers.
"""

import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_state():
    """``{'git_commit': sha or None, 'git_dirty_skspn': bool or None}`` of the repository
    (None outside a git checkout); dirty = uncommitted changes under ``skspn/``."""
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=ROOT, text=True, capture_output=True,
                              check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"),
                "git_dirty_skspn": bool(git("status", "--porcelain", "skspn"))}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty_skspn": None}


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
