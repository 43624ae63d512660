"""One reader for every config section, network config, objective, walk and model description:
a value quoted or not reads the same, and a value that does not fit is one line naming its field."""

import tomllib
from dataclasses import dataclass, field

import pytest

from pixel_diffusion.cli import main
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.presets import preset
from pixel_diffusion.typed import convert, read


@pytest.mark.parametrize("quoted, plain", [
    ('lr = "3e-4"', "lr = 3e-4"),
    ('batch_size = "64"', "batch_size = 64"),
    ('minutes = "10"', "minutes = 10.0"),
    ('progress = "false"', "progress = false"),
    ('betas = ["0.9", "0.99"]', "betas = [0.9, 0.99]"),
    ('ema_profiles = ["0.05", 0.1]', "ema_profiles = [0.05, 0.1]"),
    ('[data]\nimage_size = "32"', "[data]\nimage_size = 32"),
    ('[loss]\nmin_snr_gamma = "5"', "[loss]\nmin_snr_gamma = 5.0"),
    ('walk = {steps = "5"}', "walk = {steps = 5}"),
    ('network_options = {widths = ["8", "16"], groups = "4"}', "network_options = {widths = [8, 16], groups = 4}"),
    ('schedule_options = {offset = "0.01"}', "schedule_options = {offset = 0.01}"),
])
def test_a_quoted_number_in_a_config_file_reads_as_the_number(quoted, plain):
    base = preset("mnist")
    assert apply_overrides(base, tomllib.loads(quoted)) == apply_overrides(base, tomllib.loads(plain))


@pytest.mark.parametrize("text, says", [
    ('lr = "fast"', "lr: expected a number, got 'fast'"),
    ("lr = true", "lr: expected a number, got True"),
    ("threads = 1.5", "threads: expected an integer or null, got 1.5"),
    ("progress = 1", "progress: expected true or false, got 1"),
    ('betas = [0.9, "x"]', "betas[1]: expected a number, got 'x'"),
    ("betas = [0.9]", "betas: expected a list of 2 numbers, got [0.9]"),
    ('ema_profiles = "0.1"', "ema_profiles: expected a list of numbers, got '0.1'"),
    ("preset = 4", "preset: expected a string, got 4"),
    ("colour = 1", "unknown config field 'colour'"),
    ('[data]\nimage_size = "big"', "data.image_size: expected an integer or null, got 'big'"),
    ("[loss]\nweighting = 3", "loss.weighting: expected a string, got 3"),
    ('walk = {steps = "many"}', "walk.steps: expected an integer, got 'many'"),
    ('walk = {sampler = "plms"}', "walk: unknown sampler 'plms'"),
    ('network_options = {widths = "wide"}', "network_options.widths: expected a list of integers, got 'wide'"),
    ("network_options = {depth = 3}", "unknown field network_options.depth; expected one of"),
    ("schedule_options = {wobble = 2}", "unknown option schedule_options.wobble; expected one of max_beta, num_steps"),
    ('schedule_options = {num_steps = "many"}', "schedule_options.num_steps: expected an integer, got 'many'"),
])
def test_a_value_that_does_not_fit_is_one_line_naming_its_field(text, says):
    with pytest.raises(ValueError) as caught:
        apply_overrides(preset("mnist"), tomllib.loads(text))
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_command_line_and_a_file_read_alike(tmp_path, capsys):
    from_line = apply_overrides(preset("mnist"), ["lr=3e-4", "betas=[0.9,0.99]", "grad_clip=null", "walk.steps=5",
                                                  "network_options.widths=[8,16]", "data.flip=true"])
    from_file = apply_overrides(preset("mnist"), tomllib.loads(
        'lr = 3e-4\nbetas = [0.9, 0.99]\nwalk = {steps = 5}\nnetwork_options = {widths = [8, 16]}\n[data]\nflip = true'))
    assert from_line == apply_overrides(from_file, ["grad_clip=null"])
    assert from_line.walk == {"steps": 5} and from_line.network_options == {"widths": (8, 16)}  # stored converted
    bad = tmp_path / "bad.toml"
    bad.write_text('lr = "fast"\n')
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "lr: expected a number, got 'fast'" in error[0]
    assert not (tmp_path / "run").exists()


@dataclass
class Inner:
    size: tuple[int, int] = (1, 1)
    scale: float | None = None


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    tags: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)


def test_nested_tables_fixed_and_open_lists_and_missing_fields():
    got = read(Outer, {"name": "x", "inner": {"size": ["2", 3], "scale": "null"}, "tags": ["a"], "options": '{"k": 1}'})
    assert got == Outer("x", Inner((2, 3), None), ("a",), {"k": 1})
    with pytest.raises(ValueError, match=r"^outer.inner.size\[1\]: expected an integer, got 'x'$"):
        read(Outer, {"name": "x", "inner": {"size": [2, "x"]}}, "outer")
    with pytest.raises(ValueError, match="^outer.name is missing$"):
        read(Outer, {}, "outer")
    with pytest.raises(ValueError, match="^outer must be a table of name, inner, tags, options; got list$"):
        read(Outer, [], "outer")
    assert convert("2.0", int, "n") == 2 and convert("inf", float | None, "s") == float("inf")
    with pytest.raises(ValueError, match="^n: expected an integer, got '2.5'$"):
        convert("2.5", int, "n")
