import math

import pytest

from media_cleaner.params import ParameterError, ProtectionParams, normalize_audio_level


def test_defaults():
    p = ProtectionParams.parse()
    assert (p.epsilon, p.video_strength, p.every_n_frames, p.audio_level) == (0.12, 1.0, 10, "weak")
    assert p.effective_epsilon == pytest.approx(0.12)


def test_strings_from_a_form_are_parsed():
    p = ProtectionParams.parse("0.2", "2", "30", "STRONG")
    assert (p.epsilon, p.video_strength, p.every_n_frames, p.audio_level) == (0.2, 2.0, 30, "strong")
    assert p.effective_epsilon == pytest.approx(0.4)


@pytest.mark.parametrize("alias,level", [("слабый", "weak"), ("средний", "medium"), ("Сильный", "strong"),
                                         ("none", "none")])
def test_audio_aliases(alias, level):
    assert normalize_audio_level(alias) == level


@pytest.mark.parametrize("field,kwargs,fragment", [
    ("epsilon", {"epsilon": 0.5}, "above the maximum 0.2"),
    ("epsilon", {"epsilon": 0.01}, "below the minimum 0.04"),
    ("epsilon", {"epsilon": "abc"}, "must be a number"),
    ("epsilon", {"epsilon": "nan"}, "finite"),
    ("epsilon", {"epsilon": math.inf}, "finite"),
    ("video_strength", {"video_strength": -1}, "below the minimum 1"),
    ("every_n_frames", {"every_n_frames": "2.5"}, "whole number"),
    ("every_n_frames", {"every_n_frames": 31}, "above the maximum 30"),
    ("audio_level", {"audio_level": "loud"}, "not one of"),
    ("epsilon", {"epsilon": True}, "must be a number"),
])
def test_out_of_range_values_name_the_field_and_range(field, kwargs, fragment):
    with pytest.raises(ParameterError) as err:
        ProtectionParams.parse(**kwargs)
    assert err.value.field == field
    assert field in err.value.message and fragment in err.value.message


def test_blank_values_take_the_configured_defaults():
    server_defaults = ProtectionParams(0.08, 1.5, 5, "medium")
    assert ProtectionParams.parse("", " ", None, "", defaults=server_defaults) == server_defaults
