#!/usr/bin/env bash
# All of SAIL's checks, in the order CI runs them; pytest comes last (its summary line is the verdict).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export PYTHONUTF8=1   # text I/O in UTF-8 whatever locale a library sets mid-run (a test read its subprocess output as ASCII)

echo "== notebooks clean and library in sync"
before=$(git status --porcelain -- nbs sail settings.ini pyproject.toml 2>/dev/null; git diff -- nbs sail 2>/dev/null | sha1sum)
nbdev_clean
nbdev_export
after=$(git status --porcelain -- nbs sail settings.ini pyproject.toml 2>/dev/null; git diff -- nbs sail 2>/dev/null | sha1sum)
if [ "$before" != "$after" ]; then
  echo "nbdev_clean/nbdev_export changed tracked files: notebooks are not clean or sail/ is out of sync with nbs/" >&2
  git status --short -- nbs sail >&2
  exit 1
fi

echo "== style: a docment per public parameter, no line over 120 characters in sail/"
style=0
python tools/docments.py --check || style=1
python tools/line_length.py || style=1
[ $style -eq 0 ] || { echo "style check failed: fix the notebooks named above (tools/docments.py --write fixes some)" >&2; exit 1; }

echo "== notebook lessons (nbdev_test)"
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nbdev_test --n_workers 2 --timing    # two notebooks at once on two cores: one thread each

echo "== docs pre-processing without Quarto"
python -c "from nbdev.serve import proc_nbs; proc_nbs()"

echo "== pytest"
set +e
python -m pytest tests -q -n 2 --dist loadgroup "$@"
rc=$?
set -e
[ $rc -eq 5 ] && { echo "pytest collected no tests" >&2; exit 1; }
exit $rc
