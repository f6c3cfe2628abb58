"""Config resolution: profiles, files and --set overrides, strictly validated."""

from __future__ import annotations

import pytest

from kr.config import PROFILES, ConfigError, DataConfig, RunConfig, parse_override, profile_values, resolve_config


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_resolves(profile: str) -> None:
    cfg = resolve_config(profile)
    assert isinstance(cfg, RunConfig)


@pytest.mark.parametrize("profile", PROFILES)
def test_a_profiles_sizes_name_image_sides_and_never_the_side_itself(profile: str) -> None:
    sides = set(DataConfig.model_fields["size"].annotation.__args__)
    for side, values in (profile_values(profile).get("sizes") or {}).items():
        assert side in sides, f"{profile}: sizes.{side} is not an image side"
        assert "size" not in values.get("data", {}), f"{profile}: sizes.{side} sets data.size"
        assert resolve_config(profile, overrides=[f"data.size={side}"]).data.size == side


def test_the_laptop_profile_trains_the_generator_longer_at_64_pixels_and_settings_still_win(tmp_path) -> None:
    at_28, at_64 = resolve_config("laptop"), resolve_config("laptop", overrides=["data.size=64"])
    assert at_64.generator.train_steps > at_28.generator.train_steps
    assert at_64.teacher == at_28.teacher  # only what the profile's sizes section names changes
    f = tmp_path / "c.yaml"
    f.write_text("data: {size: 64}\n")
    assert resolve_config("laptop", f).generator.train_steps == at_64.generator.train_steps  # the side from a file
    f.write_text("data: {size: 64}\ngenerator: {train_steps: 77}\n")
    assert resolve_config("laptop", f).generator.train_steps == 77  # the file beats the profile's sizes
    both = resolve_config("laptop", f, ["generator.train_steps=78"])
    assert both.generator.train_steps == 78


def test_smoke_is_smaller_than_cpu() -> None:
    smoke, cpu = resolve_config("smoke"), resolve_config("cpu")
    assert smoke.generator.train_steps < cpu.generator.train_steps
    assert smoke.gkd.epochs < cpu.gkd.epochs


def test_set_overrides_profile_and_file(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("gkd: {epochs: 7, temperature: 3.5}\nseed: 11\n")
    cfg = resolve_config("smoke", f, ["gkd.epochs=3", "selection.guidance_scales=[1, 1.5]"])
    assert cfg.gkd.epochs == 3  # --set beats the file
    assert cfg.gkd.temperature == 3.5  # the file beats the profile
    assert cfg.seed == 11
    assert cfg.selection.guidance_scales == [1.0, 1.5]


def test_parse_override_types() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=null") == (["a"], None)


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("gkd.epoch=3", ["gkd.epoch", "Extra inputs"]),  # misspelled key
        ("gkd.epochs=0", ["gkd.epochs", "greater than or equal"]),
        ("gkd.epochs=many", ["gkd.epochs", "integer"]),
        ("selection.guidance_scales=[0.5]", ["guidance_scales"]),
        ("noequals", ["KEY=VALUE"]),
        ("gkd.epochs.x=1", ["not a section"]),
    ],
)
def test_bad_overrides_name_the_key(item: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_config("smoke", overrides=[item])
    for word in words:
        assert word in str(exc.value)


def test_unknown_profile_and_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown profile"):
        resolve_config("tiny")
    with pytest.raises(ConfigError, match="not found"):
        resolve_config("smoke", tmp_path / "nope.yaml")


def test_generator_levels_must_match() -> None:
    with pytest.raises(ConfigError, match="attention_levels"):
        resolve_config("smoke", overrides=["generator.attention_levels=[true]"])


def test_digest_changes_with_config() -> None:
    assert resolve_config("smoke").digest() != resolve_config("smoke", overrides=["seed=1"]).digest()
    assert resolve_config("smoke").digest() == resolve_config("smoke").digest()


def test_runs_not_for_production_register_under_their_own_name() -> None:
    """A smoke run once became kr-breastmnist-student@champion, the name a deployment serves."""
    assert resolve_config("laptop").model_name == "kr-breastmnist-student"
    assert resolve_config("smoke").model_name == "kr-breastmnist-student-dev"
    marked = resolve_config("laptop", overrides=["tracking.production=false"])
    assert marked.model_name == "kr-breastmnist-student-dev"
    named = resolve_config("smoke", overrides=["tracking.model_name=my-model"])
    assert named.model_name == "my-model"  # an explicit name is the user's choice
