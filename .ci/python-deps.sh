# Sourced by .ci/run before `cargo test`: a Python with the packages the tests drive
# (tests/openai_client.py needs `openai`; the strict OpenMetrics parse in
# tests/server_metrics.rs needs `prometheus-client`), pinned, from PyPI, in a venv under
# target/ so that the system Python is left alone. It exports WC_PYTHON (the interpreter the
# tests run) and WC_REQUIRE_PYTHON_TESTS=1, which turns those tests' "skipped: no Python
# package" into a failure: CI never passes by skipping them.
WC_CI_VENV="${WC_CI_VENV:-target/ci-python}"
if [ ! -x "$WC_CI_VENV/bin/python" ]; then
    python3 -m venv "$WC_CI_VENV"
fi
"$WC_CI_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "openai==3.51.0" "prometheus-client==0.26.0"
WC_PYTHON="$(cd "$WC_CI_VENV/bin" && pwd)/python"
export WC_PYTHON
export WC_REQUIRE_PYTHON_TESTS=1
