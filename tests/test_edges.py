"""No traceback at any edge a user reaches by typing: every command-line option's value and every
config file (JSON or TOML) ends in a value or a one-line error (the CLI's exit status 2)."""

from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys

import pytest

from pixel_diffusion.cli import build_parser
from pixel_diffusion.config import apply_overrides, read_config_file
from pixel_diffusion.presets import preset

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BOUNDED = settings(max_examples=300, deadline=10000, suppress_health_check=[HealthCheck.function_scoped_fixture])
EDGES = ["nan", "-nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999", "-1", "0", "1e-320", " 3", "3 ", "0x10",
         "1_000", "\u0663", "", " ", "-", "1e", "99999999999999999999999999", "-0", "true", "null", "[1]", "{}", "\x00"]
TEXTS = (st.sampled_from(EDGES) | st.text(max_size=12) | st.integers(-10**30, 10**30).map(str)
         | st.floats().map(repr) | st.floats(allow_nan=False).map(lambda v: f"{v:g}"))


def _options() -> list[tuple[str, argparse.Action]]:
    """(command, option) for every option of every command that converts or restricts its value."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return [(name, action) for name, command in sorted(commands.items()) for action in command._actions
            if action.option_strings and (action.type is not None or action.choices is not None)]


OPTIONS = _options()


def test_every_command_has_options_under_test():
    commands = {name for name, _ in OPTIONS}
    assert {"train", "sample", "evaluate", "show", "serve", "distill", "ema", "export"} <= commands


@BOUNDED
@given(option=st.sampled_from(OPTIONS), text=TEXTS)
def test_any_option_value_is_taken_or_refused_in_one_line(option, text):
    """argparse turns a converter's ArgumentTypeError, ValueError or TypeError into a one-line
    error with exit 2; anything else would be a traceback. What is taken is finite."""
    _, action = option
    try:
        value = text if action.type is None else action.type(text)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
        assert "\n" not in str(error)
        return
    if action.choices is not None and value not in action.choices:
        return  # argparse refuses it: "invalid choice"
    if isinstance(value, float) and action.option_strings != ["--sigma-max"]:  # inf: start at t = 1
        assert math.isfinite(value), f"{action.option_strings[0]} took {text!r} as {value}"
    if isinstance(value, int) and not isinstance(value, bool):
        assert abs(value) < 2**63, f"{action.option_strings[0]} took {text!r} as {value}"


SCALARS = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=8)
           | st.sampled_from(["3e-4", "nan", "inf", "64", "-1", "1e999", "mnist", "cosine", "true"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                      max_leaves=8)
FIELDS = sorted(preset("mnist").to_dict())
KEYS = st.sampled_from(FIELDS) | st.sampled_from(["data", "loss", "network_options", "walk"]) | st.text(max_size=6)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


@BOUNDED
@given(content=st.dictionaries(KEYS, VALUES, max_size=4) | VALUES,
       flat=st.dictionaries(st.sampled_from(FIELDS), SCALARS.filter(lambda v: v is not None), max_size=4),
       toml=st.booleans())
def test_any_config_file_gives_a_config_or_one_line(tmp_path_factory, content, flat, toml):
    """Wrong types, quoted numbers, NaN and infinities, huge values, unknown keys, nesting."""
    folder = tmp_path_factory.mktemp("config")
    if toml:  # TOML of flat fields (a TOML file is a table by construction)
        path = folder / "config.toml"
        path.write_text("".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in flat.items()))
    else:
        path = folder / "config.json"
        path.write_text(json.dumps(content))
    try:
        config = apply_overrides(preset("mnist"), read_config_file(path))
    except ValueError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert config.lr > 0 and math.isfinite(config.lr)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000])
def test_a_deeply_nested_config_file_is_one_line(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="config file .* must be a table of config fields|nested too deeply"):
        apply_overrides(preset("mnist"), read_config_file(path))


def test_serve_refuses_a_port_out_of_range_or_taken_in_one_line(tmp_path):
    run = [sys.executable, "-m", "pixel_diffusion", "serve", "--runs", str(tmp_path), "--port"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for value, message in (("99999", "expected a port number from 1 to 65535"),
                               (str(port), f"cannot listen on 127.0.0.1:{port}")):
            result = subprocess.run([*run, value], capture_output=True, text=True, timeout=120)
            assert result.returncode == 2 and "Traceback" not in result.stderr
            assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
