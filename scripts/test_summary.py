"""Print the headline of a ``make test`` run from the evidence files of its pytest runs.

    python scripts/test_summary.py .run/evidence.*.jsonl

Each file holds one JSON line per passed test (``tests/_evidence.py``). The same test run in
several runs (SQLite, PostgreSQL, Django 4.2) counts once; it counts for a kind of server when
any of its runs used one.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(paths: list[str]) -> int:
    kinds: dict[str, set[str]] = defaultdict(set)
    runs = 0
    for path in paths:
        try:
            with open(path, encoding='utf-8') as stream:
                records = [json.loads(line) for line in stream]
        except OSError as exc:
            print(f'test summary: cannot read {path}: {exc.strerror}', file=sys.stderr)
            return 1
        for record in records:
            kinds[record['test']].update(record['kinds'])
        runs += len(records)

    def count(kind: str) -> int:
        return sum(1 for used in kinds.values() if kind in used)

    print(
        f'{len(kinds)} distinct tests passed ({runs} test runs over {len(paths)} suites); '
        f'against a real broker: {count("broker")}, a real PostgreSQL: {count("postgresql")}, '
        f'a browser: {count("browser")}.'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
