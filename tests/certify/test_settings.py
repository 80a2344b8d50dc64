"""CertifyConfig: every field classified, validated once, the identity derived from the fields."""

from __future__ import annotations

from dataclasses import fields

import pytest

from nonuniform.certify.settings import CertifyConfig, solver_defaults
from nonuniform.engine.methods import METHODS, Method

#: Fields that change only how the work runs (samples are independent: tests/engine/test_batch_mixing.py).
RUN_FIELDS = {"batch_size", "device"}


def test_every_field_is_classified_box_or_run():
    """A new field must be declared with box(...) or run(...): the run identity depends on it."""
    for f in fields(CertifyConfig):
        assert f.metadata.get("identity") in (True, False), f"{f.name} is neither box(...) nor run(...)"
    run = {f.name for f in fields(CertifyConfig) if not f.metadata["identity"]}
    assert run == RUN_FIELDS, "a field changed class: check that it really cannot change a box"


def test_identity_is_every_box_field_and_nothing_else():
    ident = CertifyConfig().identity()
    assert set(ident) == {f.name for f in fields(CertifyConfig)} - RUN_FIELDS


def test_method_is_validated_once_with_the_choices_named():
    assert Method.parse("alpha-crown") is Method.ALPHA_CROWN
    assert f"{Method.CROWN}" == "crown" and str(Method.IBP) == "ibp"
    assert METHODS == ("ibp", "fastlin", "crown", "alpha-crown")
    with pytest.raises(ValueError, match="choose one of ibp, fastlin, crown, alpha-crown"):
        CertifyConfig(method="crwon")
    assert CertifyConfig(method=Method.FASTLIN).method == "fastlin"  # stored as the plain string


def test_solver_defaults_resolve_by_method_and_follow_a_method_override():
    crown = CertifyConfig()
    assert (crown.shape_steps, crown.iterations) == (solver_defaults("crown")["shape_steps"], 0)
    alpha = CertifyConfig.build(crown, method="alpha-crown")
    assert (alpha.shape_steps, alpha.iterations) == (0, 60)
    assert CertifyConfig.build(crown, method="alpha-crown", iterations=7).iterations == 7
    assert (alpha.alpha_steps, alpha.alpha_steps_check, alpha.joint_slopes) == (5, 50, True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha_steps": 2}, "`alpha_steps` only applies to `method` alpha-crown"),
        ({"joint_slopes": False}, "`joint_slopes` only applies"),
        ({"iterations": -1}, "`iterations` must be 0 or more"),
        ({"batch_size": 0}, "`batch_size` must be at least 1"),
        ({"bab_time": 0.0}, "`bab_time` must be a positive"),
        ({"bab": True, "check_dtype": "float32"}, "`bab` proves its leaves in float64"),
        ({"domain": (1.0, 0.0)}, "lower end above upper end"),
        ({"domain": (float("nan"), 1.0)}, "NaN"),
        ({"domain": 3}, "a pair"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CertifyConfig(**kwargs)


def test_unknown_overrides_are_refused_not_ignored():
    with pytest.raises(TypeError, match="unknown certify setting"):
        CertifyConfig.build(None, iteratons=5)


def test_to_dict_round_trips_through_json():
    cfg = CertifyConfig(method="alpha-crown", domain=([[0.0, 0.5]], [[1.0, 2.0]]), batch_size=3, device="cpu")
    again = CertifyConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="unknown certify settings: bogus"):
        CertifyConfig.from_dict({**cfg.to_dict(), "bogus": 1})
