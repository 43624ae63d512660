"""The web page's API, through FastAPI's test client: every endpoint, its errors, the queue, and
images byte-identical to what `pixel-diffusion sample` writes."""

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixel_diffusion.checkpoints import run_lock
from pixel_diffusion.cli import main
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.presets import preset
from pixel_diffusion.training import train

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from pixel_diffusion.viz import PNG_KEY  # noqa: E402
from pixel_diffusion.web.server import MAX_UPLOAD_BYTES, create_app  # noqa: E402

TINY = ["data.source=digits", 'network_options={"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16}',
        "batch_size=32", "log_every=1", "progress=false", "precision=fp32", "lr_warmup=2"]


def make_runs(root: Path) -> Path:
    """A folder with two runs: one on 3 clusters (labels), one unconditional; both with previews."""
    runs = root / "runs"
    train(apply_overrides(apply_overrides(preset("mnist"), TINY), {"steps": 4, "checkpoint_every": 2, "preview_every": 2,
                                                                   "preview_images": 4, "clusters": 3}), runs / "digits")
    train(apply_overrides(apply_overrides(preset("mnist"), TINY), {"steps": 2, "checkpoint_every": 2, "preview_every": 2,
                                                                   "preview_images": 4, "clusters": 0}), runs / "plain")
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs)) as client:
        yield client


def finished(client, job: dict, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/api/jobs/{job['id']}").json()
        if state["state"] in ("done", "cancelled", "failed"):
            return state
        time.sleep(0.02)
    raise AssertionError(f"job {job['id']} did not finish")


def png_of(digit: int = 3, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    from pixel_diffusion.data import load_builtin

    Image.fromarray(load_builtin("digits")[0][digit][..., 0]).resize((size, size)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_runs_are_listed_with_their_summary_curves_and_preview(client, runs):
    listed = {run["name"]: run for run in client.get("/api/runs").json()["runs"]}
    assert set(listed) == {"digits", "plain"}
    digits = client.get("/api/runs/digits").json()
    assert digits["preset"] == "mnist" and digits["steps_trained"] == 4 and digits["classes"] == 3 and digits["on_clusters"]
    assert digits["checkpoints"][:2] == ["latest", "step-0000004"] and not digits["training"]
    assert digits["walk"]["sampler"] == "dpmpp-2m" and not digits["consistency"]  # the page starts from the run's own walk
    assert [step for step, _ in digits["curves"]["loss"]] == [1, 2, 3, 4] and digits["preview"] == "step-0000004"
    preview = client.get("/api/runs/digits/preview.png")
    assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).size[0] > 8
    names = [s["name"] for s in client.get("/api/samplers").json()["samplers"]]
    assert "dpmpp-2m" in names and "dpm-adaptive" in names
    assert client.get("/").status_code == 200 and "<title>pixel-diffusion</title>" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200
    with run_lock(runs / "plain"):
        assert client.get("/api/runs/plain").json()["training"]  # the page then refreshes its curves and preview
    assert not client.get("/api/runs/plain").json()["training"]


def test_generate_returns_the_bytes_sample_writes_for_the_same_request(client, runs, tmp_path):
    job = client.post("/api/generate", json={"run": "digits", "sampler": "ddim", "steps": 5, "seed": 11, "n": 3,
                                             "guidance": 2.0}).json()
    state = finished(client, job)
    assert state["state"] == "done" and state["step"] == 5 and len(state["images"]) == 3
    served = [client.get(url).content for url in state["images"]]
    assert main(["sample", "--run", str(runs / "digits"), "--sampler", "ddim", "--steps", "5", "--seed", "11", "--n", "3",
                 "--guidance", "2", "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    assert served == [(tmp_path / "cli" / f"{k:05d}.png").read_bytes() for k in range(3)]
    made = json.loads(Image.open(io.BytesIO(served[2])).text[PNG_KEY])
    assert (made["sampler"], made["steps"], made["seed"], made["index"], made["guidance"]) == ("ddim", 5, 11, 2, 2.0)


@pytest.mark.parametrize("body, status, says", [
    ({"run": "digits", "sampler": "nope"}, 400, "unknown sampler 'nope'; expected one of"),
    ({"run": "digits", "steps": 0}, 422, "steps: Input should be greater than or equal to 1"),
    ({"run": "digits", "spacing": "wavy"}, 400, "unknown spacing 'wavy'"),
    ({"run": "../digits"}, 400, "run must name a folder inside"),
    ({"run": "elsewhere"}, 404, "no run 'elsewhere' in"),
    ({"run": "digits", "label": 7}, 400, "--label must lie in 0..2; got 7"),
    ({"run": "plain", "label": 0}, 400, "this run was trained without labels"),
    ({"run": "digits", "checkpoint": "step-0000003"}, 400, "has no checkpoint at step 3"),
    ({"sampler": "ddim"}, 422, "run: Field required"),
])
def test_bad_values_get_their_status_and_one_line(client, body, status, says):
    response = client.post("/api/generate", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error and "\n" not in error and "Traceback" not in error


def test_uploads_are_limited_and_decoded_by_the_guarded_decoder(client):
    form = {"run": "digits", "strength": "0.5", "variations": "2", "steps": "4"}
    too_big = client.post("/api/restore", data=form, files={"image": ("big.png", b"\0" * (MAX_UPLOAD_BYTES + 1))})
    assert too_big.status_code == 413 and "larger than" in too_big.json()["error"]
    junk = client.post("/api/restore", data=form, files={"image": ("junk.png", b"this is not an image")})
    assert junk.status_code == 400 and junk.json()["error"].startswith("the image cannot be used:")
    strength = client.post("/api/restore", data={**form, "strength": "1.5"}, files={"image": ("d.png", png_of())})
    assert strength.status_code == 422 and strength.json()["error"].startswith("strength:")


def test_restore_and_inpaint_return_their_variations(client):
    restored = finished(client, client.post("/api/restore", data={"run": "digits", "strength": "0.6", "variations": "3",
                                                                 "steps": "10"}, files={"image": ("d.png", png_of())}).json())
    assert restored["state"] == "done" and len(restored["images"]) == 3 and restored["step"] == restored["total"] == 10
    mask = io.BytesIO()
    Image.fromarray(np.tile(np.array([0, 255], np.uint8).repeat(4), (8, 1))).save(mask, format="PNG")  # right half
    original = np.asarray(Image.open(io.BytesIO(png_of())).convert("L"))
    job = client.post("/api/inpaint", data={"run": "digits", "variations": "2", "steps": "6", "resample": "2"},
                      files={"image": ("d.png", png_of()), "mask": ("m.png", mask.getvalue())}).json()
    inpainted = finished(client, job)
    assert inpainted["state"] == "done" and len(inpainted["images"]) == 2
    for url in inpainted["images"]:
        image = np.asarray(Image.open(io.BytesIO(client.get(url).content)))
        assert np.abs(image[:, :4].astype(int) - original[:, :4]).max() <= 1  # the kept half is the input


def test_jobs_run_in_order_one_at_a_time_and_cancel(client):
    long = {"run": "digits", "sampler": "ddpm", "steps": 1000, "n": 64}
    first = client.post("/api/generate", json=long).json()
    second = client.post("/api/generate", json={**long, "steps": 3}).json()
    third = client.post("/api/generate", json={**long, "steps": 3}).json()
    assert (second["position"], third["position"]) == (1, 2)
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{first['id']}").json()["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    while client.get(f"/api/jobs/{first['id']}").json()["step"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.get(f"/api/jobs/{third['id']}").json()["position"] == 2
    assert client.post(f"/api/jobs/{second['id']}/cancel").json()["state"] == "cancelled"  # waiting: it leaves the queue
    assert client.get(f"/api/jobs/{third['id']}").json()["position"] == 1
    client.post(f"/api/jobs/{first['id']}/cancel")  # running: it stops at its next step
    assert finished(client, first)["state"] == "cancelled" and time.monotonic() - started < 30
    assert finished(client, third)["state"] == "done"
    assert client.get("/api/jobs/999999").status_code == 404


def test_progress_streams_as_server_sent_events(client):
    job = client.post("/api/generate", json={"run": "digits", "sampler": "ddim", "steps": 8, "n": 4}).json()
    seen = []
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
    assert seen[-1]["state"] == "done" and len(seen[-1]["images"]) == 4
    steps = [s["step"] for s in seen if s["state"] == "running"]
    assert steps == sorted(steps) and any(s.get("preview", "").startswith("data:image/png;base64,") for s in seen)
