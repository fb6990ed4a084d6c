"""Where the named pipeline configurations are found: in a checkout, and in an installed copy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.lifecycle.config import CONFIG_DIR, DEMO_CONFIG, TINY_CONFIG
from tests.servers import ROOT

PROBE = "from pipeline.lifecycle import config; print(config.CONFIG_DIR, config.DEMO_CONFIG)"


def test_checkout_configs_are_found() -> None:
    assert CONFIG_DIR == ROOT / "configs"
    assert DEMO_CONFIG.is_file() and TINY_CONFIG.is_file()


def test_installed_copy_reads_shopserve_config_dir(tmp_path: Path) -> None:
    # The pipeline image sets it: an installed package has no configs/ beside it.
    env = {"SHOPSERVE_CONFIG_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT,
                          env=env, check=True)
    assert done.stdout.split() == [str(tmp_path), str(tmp_path / "pipeline-demo.yaml")]
