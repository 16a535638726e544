# Source this file: creates (once) and activates the project's Python 3.12 virtual environment in .venv
# and installs the requirements file given as $1 (default requirements.txt) when it changed.
set -e
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_req="${1:-requirements.txt}"
_find_python() {
  for c in python3.12 "$(pyenv root 2>/dev/null)/versions/3.12"*/bin/python3.12; do
    if [ -x "$(command -v "$c" 2>/dev/null || echo "$c")" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  echo "rwkvjax needs Python 3.12 (python3.12 on PATH or installed by pyenv)" >&2; return 1
}
if [ ! -x "$_root/.venv/bin/python" ]; then
  _py="$(_find_python)"
  echo "[env] creating $_root/.venv with $_py"
  "$_py" -m venv "$_root/.venv"
fi
. "$_root/.venv/bin/activate"
_stamp="$_root/.venv/.installed-$(basename "$_req")"
if [ ! -f "$_stamp" ] || ! cmp -s <(cat "$_root"/requirements*.txt) "$_stamp"; then
  echo "[env] installing $_req"
  python -m pip install -q --disable-pip-version-check -r "$_root/$_req"
  cat "$_root"/requirements*.txt > "$_stamp"
fi
export PYTHONPATH="$_root${PYTHONPATH:+:$PYTHONPATH}"
cd "$_root"
