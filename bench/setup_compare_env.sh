#!/usr/bin/env bash
# Create bench/.venv-compare: the project's requirements plus gym-anytrading and FinRL, for the comparison
# benchmarks.
#
#     bash bench/setup_compare_env.sh
#
# requirements.txt brings the env kernels' numba and llvmlite pins; rerun this script after it changes.
# The project's own .venv never gets gym-anytrading. torch is pinned to 2.13.0 first: that version
# resolves to the local CPU build; any other pulls gigabytes of CUDA packages. FinRL's wheel is installed
# without dependencies: `import finrl` would pull in data downloaders and brokers' SDKs, so the benchmark
# loads only its env module, which needs nothing beyond what is already here (see docs/BENCHMARKS.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/bench/.venv-compare"
PYTHON="${PYTHON:-python3}"
GYM_ANYTRADING="gym-anytrading==2.0.0"
FINRL="FinRL==0.3.7"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -r "$ROOT/requirements.txt" "$GYM_ANYTRADING"
"${PIP[@]}" --no-deps "$FINRL"
"$VENV/bin/python" - <<'EOF'
import gym_anytrading
import numba
import stable_baselines3
import torch

print(f"compare venv ready: torch {torch.__version__}, stable-baselines3 {stable_baselines3.__version__}, "
      f"numba {numba.__version__}, gym-anytrading from {gym_anytrading.__file__}")
EOF
