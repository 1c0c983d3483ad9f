"""The two browser test processes of `make browser-tests` share the notebooks between them: none is lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from series import ALL_NOTEBOOKS, in_shard

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_every_notebook_is_tested_by_exactly_one_process(shards):
    for name in [*ALL_NOTEBOOKS, None]:
        owners = [i for i in range(shards) if in_shard(name, i, shards)]
        assert len(owners) == 1, f"{name} is tested by processes {owners} of {shards}"


@pytest.mark.parametrize("value", ["2/2", "x", "1/", "-1/2"])
def test_a_bad_shard_is_refused_with_its_value(value):
    env = {**os.environ, "GQA_BROWSER_SHARD": value}
    done = subprocess.run([sys.executable, "-c", "import series"], cwd=HERE, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and f"GQA_BROWSER_SHARD={value!r} must be 'i/n'" in done.stderr, done.stderr
