"""A real one-node Slurm cluster for the tests marked ``slurm`` (see tests/slurm/cluster.py).

The cluster starts once per test session, in a private directory under /tmp, on ports of its
own, and stops at the end of the session, leaving nothing running. Where Slurm cannot start
(not root, no apt-get or no network to install it, a container that refuses the daemons) every
test that uses it is skipped with the reason; set ``GPUSLICE_REQUIRE_SLURM=1`` to make that a
failure instead (for a CI that must run them).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm import cluster as slurm
from tests.slurm.cluster import Cluster, ClusterUnavailable

REQUIRE_ENV = "GPUSLICE_REQUIRE_SLURM"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Cluster]:
    """The session's Slurm cluster; ``SLURM_CONF`` in os.environ points clients at it.

    Yields:
        Its facts: ``hostname``, ``partition``, ``scratch`` (a directory every job can write),
        ``gpus`` (fake gres/gpu count), ``conf``; and ``batch(script, *sbatch_options)``.
    """
    base = Path(tempfile.gettempdir())
    # A session that was killed leaves its cluster running: stop those whose owner is gone.
    slurm.reap_orphans(base)
    root = Path(tempfile.mkdtemp(dir=base, prefix=slurm.SESSION_PREFIX))
    try:
        cluster = slurm.start(root, owner_pid=os.getpid())
    except ClusterUnavailable as err:
        slurm.stop(root)
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"Slurm cannot start here ({REQUIRE_ENV}=1): {err.reason}")
        pytest.skip(f"Slurm cannot start here: {err.reason}")
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env())
    try:
        yield cluster
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        slurm.stop(cluster.root)
