"""The browser test runs on a built book, so it is opt-in: `make browser-test` (CI runs it after
`make book`) sets SFS_BROWSER_TEST=1. Without it these tests are skipped, so `make test` needs no
browser and no build."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SFS_BROWSER_TEST"):
        return
    skip = pytest.mark.skip(reason="browser test: run `make browser-test` after `make book`")
    for item in items:
        if "tests/browser" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
