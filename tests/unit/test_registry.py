"""The registry every named choice goes through: lookup, validation, kwargs routing."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from cxr.registry import Registry

SHAPES = Registry("shape")


@SHAPES.register("square")
def square(side: float, scale: float = 1.0) -> float:
    return (side * scale) ** 2


@SHAPES.register("rectangle")
def rectangle(side: float, other: float = 2.0, scale: float = 1.0) -> float:
    return side * other * scale ** 2


ShapeName = SHAPES.choice()


class Config(BaseModel):
    shape: ShapeName = "square"


def test_create_drops_none_so_defaults_apply():
    assert SHAPES.create("square", 3.0, scale=None) == 9.0
    assert SHAPES.create("rectangle", 3.0, other=4.0) == 12.0


def test_create_from_passes_only_the_knobs_a_constructor_takes():
    knobs = {"scale": 2.0, "other": 5.0, "side": 100.0, "unrelated": 1}
    assert SHAPES.create_from("square", 3.0, knobs=knobs) == 36.0, "side is filled by args, other not taken"
    assert SHAPES.create_from("rectangle", 3.0, knobs=knobs) == 60.0


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown shape 'circle'; choose from \['rectangle', 'square'\]"):
        SHAPES.create("circle", 1.0)


def test_config_fields_validate_against_the_registry():
    assert Config(shape="rectangle").shape == "rectangle"
    with pytest.raises(ValidationError, match="unknown shape 'sqare'"):
        Config(shape="sqare")
    assert Config.model_json_schema()["properties"]["shape"]["enum"] == ["rectangle", "square"]


def test_check_kwargs_names_the_knobs_a_choice_does_not_take():
    SHAPES.check_kwargs("rectangle", {"other": 1.0, "scale": None})
    SHAPES.check_kwargs("square", {"other": None})
    with pytest.raises(ValueError, match=r"shape 'square' takes no \['other'\]"):
        SHAPES.check_kwargs("square", {"other": 1.0})


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="already registered"):
        SHAPES.register("square")(lambda: None)


@pytest.mark.parametrize("field,bad", [("loss", "bcee"), ("optimizer", "adam"), ("scheduler", "cosine")])
def test_train_config_names_come_from_registries(field: str, bad: str):
    from cxr.train.config import TrainConfig

    with pytest.raises(ValidationError, match=f"unknown .*'{bad}'.*; choose from"):
        TrainConfig(**{field: bad})


def test_a_misspelt_head_fails_when_the_config_is_validated():
    from cxr.models.classifier import ModelConfig

    with pytest.raises(ValidationError,
                       match=r"unknown head 'atention' \(did you mean 'attention'\?\); choose from \['attention', 'linear', 'mlp'\]"):
        ModelConfig(head="atention")


def test_ssl_knobs_the_method_does_not_take_are_refused():
    from cxr.ssl.pretrain import SSLConfig

    assert SSLConfig(method="moco", memory_bank_size=64).method_kwargs()["memory_bank_size"] == 64
    with pytest.raises(ValidationError, match=r"SSL method 'simsiam' takes no \['memory_bank_size'\]"):
        SSLConfig(method="simsiam", memory_bank_size=64)


def test_every_schedule_and_optimizer_builds_from_a_train_config():
    import torch

    from cxr.train.config import TrainConfig
    from cxr.train.optim import OPTIMIZERS, SCHEDULES, create_optimizer, create_schedule

    for optimizer in OPTIMIZERS.names():
        for schedule in SCHEDULES.names():
            cfg = TrainConfig(optimizer=optimizer, scheduler=schedule)
            built = create_schedule(create_optimizer(torch.nn.Linear(2, 1), cfg), cfg, steps_per_epoch=3)
            assert type(built).__name__.lower().startswith(schedule.split("_")[0].replace("none", "constant"))
