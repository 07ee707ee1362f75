"""Fixtures: demo upstreams and Berry servers, real HTTP on loopback, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from berry_shared.config import Config
from dynamodb import dynamodb_env, dynamodb_local, restartable_dynamodb  # noqa: F401
from support import Berry, DemoUpstream, build_config


@pytest.fixture
def make_upstream() -> Iterator[Callable[..., DemoUpstream]]:
    started: list[DemoUpstream] = []

    def make(**behaviour: Any) -> DemoUpstream:
        upstream = DemoUpstream().start()
        for key, value in behaviour.items():
            setattr(upstream.behaviour, key, value)
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        upstream.stop()


@pytest.fixture
def start_berry() -> Iterator[Callable[[Config], Berry]]:
    started: list[Berry] = []

    def start(config: Config) -> Berry:
        berry = Berry(config).start()
        started.append(berry)
        return berry

    yield start
    for berry in started:
        berry.stop()


@pytest.fixture
def two_upstreams(make_upstream: Callable[..., DemoUpstream]) -> dict[str, DemoUpstream]:
    return {"a": make_upstream(name="a"), "b": make_upstream(name="b")}


@pytest.fixture
def berry(two_upstreams: dict[str, DemoUpstream], start_berry: Callable[[Config], Berry]) -> Berry:
    """Berry in front of two healthy upstreams, one model "test-model"."""
    return start_berry(build_config(two_upstreams))
