# Sourced by the test scripts: `pinned_venv DIR PACKAGE==VERSION...` creates
# the virtual environment DIR if needed and installs exactly the given wheels,
# again only when the pin list changed (a stamp file in DIR records it).
pinned_venv() {
  local venv="$1"
  shift
  local stamp="$venv/.vitrine-pins"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
  fi
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$*" ]]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "$@"
    printf '%s' "$*" >"$stamp"
  fi
}
