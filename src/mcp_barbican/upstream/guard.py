"""The parent-death watch of a stdio child, run by file path as `python -I -S guard.py`.

The proxy starts it in the child's process group with stdin the read end of a pipe whose
only write end the proxy holds (see `upstream.stdio`). It never writes, so the read ends
only when the proxy is gone, however it died (SIGKILL and OOM kills included): the kernel
closes the write end. Then the guard ends its whole group, SIGTERM and a grace period
first, then SIGKILL, which ends the guard too. Being a member, it keeps the group's id
from being reused while anything of the child may still be in it. Standard library only:
it runs isolated from the package and from the environment.
"""

from __future__ import annotations

import os
import signal
import sys
import time

#: How long the group gets between SIGTERM and SIGKILL once the proxy is gone.
GRACE_SECONDS = 2.0


def main() -> int:
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # only the proxy's death (or its own SIGKILL) ends the guard
    try:
        while os.read(0, 512):
            pass
    except OSError:
        pass
    os.killpg(0, signal.SIGTERM)
    time.sleep(GRACE_SECONDS)
    os.killpg(0, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
