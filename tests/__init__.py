"""The test suite: `make test`. Shared helpers are tests/helpers.py; fixtures, tests/conftest.py."""
