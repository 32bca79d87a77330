# Shared by this experiment's scripts: run from the repository root with the project's Python,
# runs under $RUNS and results under $OUT; `resume PATH` adds --resume when PATH exists.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-folder:../shared/data/cifar10-jpeg.tar.gz}
RUNS=${RUNS:-runs/ntga_cifar}
OUT=${OUT:-experiments/ntga_cifar}
mkdir -p "$RUNS"
resume() { [ -e "$1" ] && echo --resume || true; }
