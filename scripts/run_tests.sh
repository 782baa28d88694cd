#!/usr/bin/env bash
# The whole test suite. Brokers and PostgreSQL are started here (and stopped if we started
# them). Three runs go side by side (the broker tests mostly wait on other processes):
#   1. the suite and the multi-service integration tests on SQLite, with RabbitMQ and Redis;
#   2. the core suite on PostgreSQL, then the integration tests on PostgreSQL (a database per
#      service, see integration_tests/conftest.py), then the broker tests of the side run
#      (PostgreSQL replicas and the 3-node cluster, CQRS_TEST_SIDE_RUN in
#      tests/transport/conftest.py), which run 1 leaves out to finish sooner;
#   3. the core suite on SQLite with Django 4.2 LTS (PY42, built by `make venv42`).
# Coverage of runs 1 and 2 is combined at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PY42=${PY42:-.venv-django42/bin/python}

scripts/services.sh up || exit 1
trap 'scripts/services.sh down' EXIT
mkdir -p .run
rm -f .run/coverage.* .run/evidence.*
# tests/_evidence.py records what each passed test ran against (broker, PostgreSQL, browser).
EVIDENCE=(-p tests._evidence)

postgres_run() {
  echo "== core suite on PostgreSQL =="
  CQRS_TEST_EVIDENCE=.run/evidence.pg.jsonl COVERAGE_FILE=.run/coverage.pg "$PY" -m pytest \
    tests --ignore=tests/transport --ds=tests.settings_pg --cov=dj_cqrs --cov-report= \
    "${EVIDENCE[@]}" "$@" || return 1
  echo "== multi-service integration tests on PostgreSQL, with RabbitMQ =="
  CQRS_TEST_DB_VENDOR=postgresql CQRS_TEST_EVIDENCE=.run/evidence.it-pg.jsonl \
    COVERAGE_FILE=.run/coverage.it-pg "$PY" -m pytest integration_tests --cov=dj_cqrs \
    --cov-report= "${EVIDENCE[@]}" "$@" || return 1
  echo "== broker tests with PostgreSQL replicas, and the 3-node RabbitMQ cluster =="
  CQRS_TEST_SIDE_RUN=1 CQRS_TEST_EVIDENCE=.run/evidence.side.jsonl \
    COVERAGE_FILE=.run/coverage.side "$PY" -m pytest tests/transport --cov=dj_cqrs \
    --cov-report= "${EVIDENCE[@]}" "$@" || return 1
}

django42_run() {
  echo "== core suite on SQLite with Django 4.2 =="
  if [ ! -x "$PY42" ]; then
    echo "$PY42 is missing: run 'make venv42'"
    return 1
  fi
  "$PY42" -m django --version
  CQRS_TEST_EVIDENCE=.run/evidence.django42.jsonl "$PY42" -m pytest tests \
    --ignore=tests/transport "${EVIDENCE[@]}" "$@"
}

postgres_run "$@" >.run/postgres-tests.log 2>&1 &
postgres_pid=$!
django42_run "$@" >.run/django42-tests.log 2>&1 &
django42_pid=$!

status=0
echo "== suite and multi-service integration tests on SQLite, with RabbitMQ and Redis =="
CQRS_TEST_SIDE_RUN=0 CQRS_TEST_EVIDENCE=.run/evidence.sqlite.jsonl \
  COVERAGE_FILE=.run/coverage.sqlite "$PY" -m pytest \
  tests integration_tests --cov=dj_cqrs --cov-report= "${EVIDENCE[@]}" "$@" || status=1

wait "$postgres_pid" || status=1
cat .run/postgres-tests.log
wait "$django42_pid" || status=1
cat .run/django42-tests.log

echo "== coverage of dj_cqrs, all runs =="
"$PY" -m coverage combine -q .run/coverage.sqlite .run/coverage.pg .run/coverage.it-pg \
  .run/coverage.side
"$PY" -m coverage report
echo "== what the tests ran against =="
"$PY" scripts/test_summary.py .run/evidence.*.jsonl || status=1
exit $status
