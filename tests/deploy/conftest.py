"""Fixtures of the deployment tests: a fresh PostgreSQL database (``tests/helpers/postgres``)."""

from tests.helpers.postgres import postgres_admin, postgres_url  # noqa: F401 - fixtures
