# Body of the stub's `python`: the real nixpkgs python would run the program; this one records how it
# was called so the tests can check an app's final command, then runs $STUB_PYTHON_EXEC (a real
# python) with the same arguments when the test sets it.
# Each call writes one folder under $STUB_PYTHON_LOG: argv and env (NUL-separated), cwd, packages, config.
if [ -n "${STUB_PYTHON_LOG:-}" ]; then
  mkdir -p "$STUB_PYTHON_LOG"
  call="$(mktemp -d "$STUB_PYTHON_LOG/call.XXXXXX")"
  : > "$call/argv"
  for arg in "$@"; do
    printf '%s\0' "$arg" >> "$call/argv"
  done
  env -0 > "$call/env"
  printf '%s' "$PWD" > "$call/cwd"
  printf '%s' "$STUB_PACKAGES" > "$call/packages"
  printf '%s' "$STUB_CONFIG" > "$call/config"
  printf '%s' "$0" > "$call/interpreter"
fi
if [ -n "${STUB_PYTHON_EXEC:-}" ]; then
  exec "$STUB_PYTHON_EXEC" "$@"
fi
