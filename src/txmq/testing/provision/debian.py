"""Installing Debian packages that provisioning needs (``docker.io``, ``debootstrap``).

Only where that is possible without asking anyone: as root on Debian with apt-get.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from txmq.testing.provision.common import ProvisionError

INSTALL_TIMEOUT = 900.0


def can_install() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("apt-get") is not None
        and Path("/etc/debian_version").exists()
    )


def install(*packages: str) -> None:
    """``apt-get install`` ``packages``, refreshing the package lists once if that fails.

    Raises:
        ProvisionError: not root on Debian, or apt-get failed.
    """
    if not can_install():
        raise ProvisionError(f"cannot install {' '.join(packages)}: needs root on Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    result = None
    for refresh in (False, True):
        if refresh:
            subprocess.run(
                ["apt-get", "update", "-q"],  # noqa: S607
                env=env,
                capture_output=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        result = subprocess.run(  # noqa: S603
            argv, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
        if result.returncode == 0:
            return
    assert result is not None
    raise ProvisionError(f"apt-get install {' '.join(packages)} failed:\n{result.stderr[-2000:]}")
