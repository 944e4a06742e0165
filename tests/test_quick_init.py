"""quick_init (coins_sync/configs/model.py): the faster ``__init__`` of the values a plan
makes once per rule gives what the dataclass's own ``__init__`` gives."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from coins_sync.configs.model import Rule, RuleKey, Source, quick_init
from coins_sync.plan.reconcile import Action, Change
from coins_sync.state.model import StateEntry

QUICK = [Source, Rule, StateEntry, Change]


def twin(cls: type[Any]) -> type[Any]:
    """The same frozen dataclass with the ``__init__`` dataclasses writes."""
    specs = [
        (f.name, f.type, dataclasses.field(default=f.default)) for f in dataclasses.fields(cls)
    ]
    return dataclasses.make_dataclass(cls.__name__, specs, frozen=True, slots=True)


def fields_of(value: object) -> dict[str, object]:
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}  # type: ignore[arg-type]


KEY = RuleKey("ACME", "DEFAULT", "SIGNUP")
SOURCE = Source("configs/acme.yaml", 4, 5)
CALLS: dict[type[Any], list[tuple[tuple[Any, ...], dict[str, Any]]]] = {
    Source: [(("a.yaml", 3), {}), (("a.yaml", 3, 7), {}), ((), {"path": "b", "line": 1, "col": 2})],
    Rule: [
        ((KEY, 5, SOURCE), {}),
        ((KEY, 0, SOURCE, "WCC1", RuleKey("A", "B", "C"), True), {}),
        ((KEY,), {"amount": 9, "source": SOURCE, "retired": True}),
    ],
    StateEntry: [
        ((KEY, 5, "WCC1"), {}),
        ((KEY, 5, "WCC1", 7, True), {}),
        ((KEY, 1, "X"), {"pending": 2}),
    ],
    Change: [
        ((Action.CREATE, KEY, 5), {}),
        ((Action.MOVE, KEY, 5, 4, SOURCE, "WCC9", RuleKey("O", "L", "D"), True), {}),
        ((Action.UPDATE, KEY, 5), {"before": 3, "source": SOURCE, "coin_config_id": "WCC2"}),
    ],
}


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_quick_init_has_the_dataclass_signature(cls: type[Any]) -> None:
    assert inspect.signature(cls) == inspect.signature(twin(cls))
    assert cls.__init__.__qualname__ == f"{cls.__name__}.__init__"


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_quick_init_sets_every_field_as_the_dataclass_does(cls: type[Any]) -> None:
    reference = twin(cls)
    for args, kwargs in CALLS[cls]:
        made = cls(*args, **kwargs)
        assert fields_of(made) == fields_of(reference(*args, **kwargs))
        assert made == cls(*args, **kwargs) and hash(made) == hash(cls(*args, **kwargs))
        assert repr(made).split("(", 1)[1] == repr(reference(*args, **kwargs)).split("(", 1)[1]


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_quick_init_keeps_the_value_frozen_and_replaceable(cls: type[Any]) -> None:
    args, kwargs = CALLS[cls][0]
    made = cls(*args, **kwargs)
    first = dataclasses.fields(made)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, first, None)
    last = dataclasses.fields(made)[-1]
    changed = dataclasses.replace(made, **{last.name: 42})
    assert getattr(changed, last.name) == 42
    with pytest.raises(TypeError, match="missing"):
        cls()


def test_quick_init_refuses_what_it_cannot_set() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        items: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        n: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(slots=True)
    class Mutable:
        n: int

    for cls in (Factory, PostInit, Mutable):
        with pytest.raises(TypeError, match="quick_init"):
            quick_init(cls)
