"""Item 5 (issue 12): the built wheel holds the whole package, ``py.typed`` included."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ('pyproject.toml', 'setup.py', 'README.md', 'LICENSE')


def _setuptools_major() -> int:
    return int(version('setuptools').split('.')[0])


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    if _setuptools_major() < 77:
        pytest.skip(
            'the build backend of pyproject.toml (setuptools>=77) is not installed: '
            'pip install -r requirements/test.txt'
        )
    # Build from a copy, so that the build leaves no build/ or egg-info in the source tree.
    src = tmp_path_factory.mktemp('src')
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / 'dj_cqrs', src / 'dj_cqrs', ignore=shutil.ignore_patterns('__pycache__', '*.pyc')
    )
    out = tmp_path_factory.mktemp('wheel')
    subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q']
        + ['-w', str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob('django_cqrs-*.whl')
    return built


@pytest.fixture(scope='module')
def wheel_names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _package_files(pattern: str = '*') -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / 'dj_cqrs').rglob(pattern)
        if path.is_file() and '__pycache__' not in path.parts and path.suffix != '.pyc'
    }


def test_item_05_wheel_ships_py_typed_marker(wheel_names):
    assert (ROOT / 'dj_cqrs' / 'py.typed').is_file()
    assert 'dj_cqrs/py.typed' in wheel_names


def test_item_05_wheel_ships_migrations(wheel_names):
    migrations = _package_files('migrations/*.py')
    assert 'dj_cqrs/migrations/0001_initial.py' in migrations
    assert migrations <= wheel_names


def test_item_05_wheel_ships_every_file_of_the_package(wheel_names):
    # Templates, static files and anything else that is not a module must be declared as
    # package data; a file missing from the wheel breaks an installed project, not this repo.
    missing = _package_files() - wheel_names
    assert not missing, f'not in the wheel: {sorted(missing)}'


def test_item_05_wheel_declares_typed_classifier(wheel, wheel_names):
    (metadata,) = [name for name in wheel_names if name.endswith('.dist-info/METADATA')]
    with zipfile.ZipFile(wheel) as archive:
        lines = archive.read(metadata).decode().splitlines()
    assert 'Classifier: Typing :: Typed' in lines
