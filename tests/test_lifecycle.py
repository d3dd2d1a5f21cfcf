"""The shared life cycle (zmqruntime.core.lifecycle): a component that cannot start or
connect as a ``with`` enters is closed before the error propagates (the block never runs, so
``__exit__`` would not)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest

from zmqruntime.core.lifecycle import connect_on_enter, start_on_enter


@attrs.define
class _Failing:
    """Fails to start and to connect; counts its closes."""

    closes: int = 0

    def start(self) -> None:
        raise OSError("the address is taken")

    def connect(self) -> None:
        raise OSError("no route")

    def close(self) -> None:
        self.closes += 1


@pytest.mark.parametrize("enter", [start_on_enter, connect_on_enter])
def test_a_component_that_fails_to_enter_is_closed_once(enter: Callable[[Any], Any]) -> None:
    component = _Failing()
    with pytest.raises(OSError):
        enter(component)
    assert component.closes == 1
