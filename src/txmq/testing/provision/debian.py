"""Installing Debian packages that provisioning needs (``docker.io``, ``debootstrap``).

Only where that is possible without asking anyone: as root on Debian with apt-get.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from txmq.testing.provision.common import ProvisionError

INSTALL_TIMEOUT = 900.0
#: invoke-rc.d asks this script whether a package may start its service; 101 means no.
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def can_install() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("apt-get") is not None
        and Path("/etc/debian_version").exists()
    )


@contextlib.contextmanager
def _no_service_starts() -> Iterator[None]:
    # A dockerd started by docker.io's postinst would clash with the one txmq starts, and
    # would outlive everything. A policy someone already has is theirs and stays.
    if POLICY_RC_D.exists():
        yield
        return
    POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink(missing_ok=True)


def install(*packages: str) -> None:
    """``apt-get install`` ``packages``, refreshing the package lists once if that fails.

    Package scripts start no services meanwhile (as in ``scripts/setup``).

    Raises:
        ProvisionError: not root on Debian, or apt-get failed.
    """
    if not can_install():
        raise ProvisionError(f"cannot install {' '.join(packages)}: needs root on Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    result = None
    with _no_service_starts():
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
