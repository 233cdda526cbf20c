from collections.abc import Generator

import pytest

from tests.app import SharedServe

_SHARED = SharedServe("serve")


@pytest.fixture(scope="session")
def shared_serve() -> SharedServe:
    """The throw-away Serve instance that consecutive test modules share (`SharedServe`)."""
    return _SHARED


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, None, None]:
    """After the test's own teardown: shut the shared instance down unless the next test uses
    it too."""
    yield
    if nextitem is None or "shared_serve" not in getattr(nextitem, "fixturenames", ()):
        _SHARED.stop()
