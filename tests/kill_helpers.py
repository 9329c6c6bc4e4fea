"""Run the rtk CLI in a subprocess with a test's plugins and SIGKILL it at a known point."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kill_cli_at_marker(registry_factory: str, args: list, marker: Path, env: dict, timeout: float = 300,
                       one_thread: bool = False) -> bytes:
    """Run `rtk ARGS` (``registry_factory`` = "tests.module:function" builds the registry) until a
    test plugin creates ``marker`` and hangs, then SIGKILL it. Returns the process's stderr.

    The plugin hangs instead of the test timing the kill, so the kill lands at an exact step.
    ``one_thread`` matches a test process that runs on one thread: float sums depend on the split.
    """
    module, _, function = registry_factory.partition(":")
    script = (f"import torch\nimport rtk.cli\nfrom rtk.registry import using\nfrom {module} import {function}\n"
              + ("torch.set_num_threads(1)\n" if one_thread else "")
              + f"with using({function}()):\n    rtk.cli.main()\n")
    process = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=dict(os.environ, HF_HUB_OFFLINE="1", **env),
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.stderr.read()
