"""Smoke test of `run.py audit`: the built-in features pass, a user's feature that peeks ahead is named."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from services.data.synthetic import write_csv
from tests.sessions import ROOT

pytestmark = pytest.mark.smoke

USER_MODULE = '''
import numpy as np

from services.data.features import FeatureContext, register_feature


@register_feature("tomorrow_close_ratio", warmup=0)
def tomorrow_close_ratio(ctx: FeatureContext) -> np.ndarray:
    """Return the next close over this one: one bar of look-ahead."""
    out = np.ones(len(ctx))
    out[:-1] = ctx.close[1:] / ctx.close[:-1]
    return out
'''


def audit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "bars.csv"
    if not data.exists():
        write_csv(data, 1500, seed=5)
        (tmp_path / "my_features.py").write_text(textwrap.dedent(USER_MODULE))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "audit", "--data", str(data), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_audit_passes_the_built_in_features_and_names_a_feature_that_peeks_ahead(tmp_path: Path) -> None:
    clean = audit(tmp_path, "--cuts", "3")
    leaking = audit(
        tmp_path, "--cuts", "3", "--set", "data.features.custom=[my_features:tomorrow_close_ratio]"
    )

    assert clean.returncode == 0, clean.stderr
    assert len(clean.stdout.strip().splitlines()) == 1
    assert clean.stdout.startswith("no look-ahead found (3 cuts, 4 features, ")
    assert leaking.returncode == 1, leaking.stderr
    lines = leaking.stdout.strip().splitlines()
    assert lines[0].startswith("look-ahead: feature 'tomorrow_close_ratio' at bar ")
    assert lines[1].startswith("look-ahead: observation 'tomorrow_close_ratio' (t-0 in the window) at bar ")
    assert lines[-1].startswith("look-ahead found: 2 leaking items (3 cuts, 5 features")


def test_audit_refuses_a_custom_feature_it_cannot_import_in_one_line(tmp_path: Path) -> None:
    result = audit(tmp_path, "--set", "data.features.custom=[my_features:nothing_here]")

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: audit: data.features.custom: 'my_features:nothing_here': my_features has no nothing_here"
    )
