#!/usr/bin/env bash
# The whole test suite: brokers and PostgreSQL started here (and stopped if we started them),
# then the suite on SQLite with the real brokers, then the core suite on PostgreSQL, then the
# multi-service integration tests on PostgreSQL (a database per service, see
# integration_tests/conftest.py).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

scripts/services.sh up || exit 1
trap 'scripts/services.sh down' EXIT

status=0
echo "== suite and multi-service integration tests on SQLite, with RabbitMQ and Redis =="
"$PY" -m pytest tests integration_tests --cov=dj_cqrs --cov-report= "$@" || status=1
echo "== core suite on PostgreSQL =="
"$PY" -m pytest tests --ignore=tests/transport --ds=tests.settings_pg \
  --cov=dj_cqrs --cov-append --cov-report= "$@" || status=1
echo "== multi-service integration tests on PostgreSQL, with RabbitMQ =="
CQRS_TEST_DB_VENDOR=postgresql "$PY" -m pytest integration_tests \
  --cov=dj_cqrs --cov-append --cov-report=term "$@" || status=1
exit $status
