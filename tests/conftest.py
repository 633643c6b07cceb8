"""Shared fixtures of the test suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import services

# --- real services: PostgreSQL, Redis, S3 (code in tests/services.py) ---------
# ``*_url`` is what most tests need; ``*_service`` is the handle for tests that
# stop and restart a server (``.stop()``, ``.stop(kill=True)``, ``.start()``;
# ``.controllable`` is False when the URL came from DAVSERVER_TEST_*_URL).


@pytest.fixture(scope="session")
def pg_service() -> Iterator[services.Service]:
    yield from services.session_service("postgres")


@pytest.fixture(scope="session")
def pg_url(pg_service: services.Service) -> str:
    return pg_service.url


@pytest.fixture(scope="session")
def redis_service() -> Iterator[services.Service]:
    yield from services.session_service("redis")


@pytest.fixture(scope="session")
def redis_url(redis_service: services.Service) -> str:
    return redis_service.url


@pytest.fixture(scope="session")
def s3_service() -> Iterator[services.Service]:
    yield from services.session_service("s3")


@pytest.fixture(scope="session")
def s3_url(s3_service: services.Service) -> str:
    return s3_service.url


# --- end of real services -------------------------------------------------------
