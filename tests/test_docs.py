"""The documentation site builds in strict mode: every link between pages resolves, and every
reference the API pages make to the package names something that exists."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None,
                    reason="mkdocs is not installed (pip install 'pixel-diffusion[docs]')")
def test_the_documentation_and_api_reference_build_without_a_broken_reference(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    built = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    runs = (tmp_path / "site" / "api" / "runs" / "index.html").read_text()
    assert 'id="pixel_diffusion.runs.load_run"' in runs  # the docstrings were read, not just the pages copied


def test_every_module_of_the_package_is_on_an_api_page():
    pages = "".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    package = ROOT / "src" / "pixel_diffusion"
    public = {".".join(("pixel_diffusion", *p.relative_to(package).with_suffix("").parts)).removesuffix(".__init__")
              for p in package.rglob("*.py") if not p.name.startswith("_") or p.name == "__init__.py"}
    # A folder's package page covers its files (networks, features, presets), or its files have their own.
    inside = {m for m in public if any(m.startswith(f"{shown}.") for shown in ("pixel_diffusion.networks",
                                                                                "pixel_diffusion.features",
                                                                                "pixel_diffusion.presets"))}
    missing = sorted(m for m in public - inside if f"::: {m}\n" not in pages and f"::: {m}." not in pages)
    assert missing == [], f"modules without an API page: {missing}"
