"""The HTTP API behind the page (`pixel-diffusion serve --runs runs/`); the page uses nothing else.

    GET  /api/runs                      every run (and diffusers folder) in --runs, with its summary
    GET  /api/runs/{run}                one run: summary, checkpoints, loss and KID curves, training?
    GET  /api/runs/{run}/preview.png    its newest preview grid
    GET  /api/samplers                  the sampler registry: names, spacings, defaults
    POST /api/generate                  JSON: run, checkpoint, sampler, steps, spacing, seed, n, label, guidance
    POST /api/restore, /api/inpaint     a form: the image (and mask), run, checkpoint, strength, ...
    GET  /api/jobs/{id}                 state, place in the queue, progress, images
    GET  /api/jobs/{id}/events          the same as server-sent events, until the job ends
    GET  /api/jobs/{id}/images/{k}.png  image k, carrying how it was made
    POST /api/jobs/{id}/cancel

A run is named by its folder inside --runs, never by a path. Bad values get the one-line
messages of the CLI as JSON {"error": ...} with status 400 (422 for a malformed request, 404 for
what does not exist, 413 for an upload too large), never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from .. import checkpoints, diffusers_io
from ..data import DataConfig, convert_channels, fit_image
from ..editing import REPAINT_WALK, inpaint, restore
from ..logbook import read_records
from ..runs import generation_parameters, load_run
from ..samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS
from ..schedules import SPACINGS
from ..sources import read_image_file
from ..viz import as_picture, image_grid, image_parameters, png_bytes
from .jobs import FINISHED, Job, JobQueue, one_line

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 8 << 20
MAX_UPLOAD_PIXELS = 4096 * 4096


class Problem(Exception):
    """A request that cannot be served: its status and one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Generate(BaseModel):
    run: str
    checkpoint: str = "latest"
    sampler: str | None = None  # None: the run's own walk's
    steps: int | None = Field(None, ge=1, le=1000)
    spacing: str | None = None
    seed: int = Field(0, ge=0, le=2**63 - 1)
    n: int = Field(16, ge=1, le=64)
    label: int | None = None
    guidance: float | None = Field(None, ge=0, le=20)  # None: the run's own
    precision: str = Field("fp32", pattern="^(fp32|bf16)$")


class Runs:
    """The runs of one folder, each loaded once per (run, checkpoint) and kept."""

    def __init__(self, root: Path, device: str):
        self.root, self.device, self.loaded = Path(root), device, {}

    def folder(self, name: str) -> Path:
        if not name or name in (".", "..") or any(c in name for c in "/\\") or name.startswith("."):
            raise Problem(400, f"run must name a folder inside {self.root}, not a path; got {name!r}")
        folder = self.root / name
        if not folder.is_dir() or not self.is_run(folder):
            raise Problem(404, f"no run {name!r} in {self.root}; it has {', '.join(self.names()) or 'none'}")
        return folder

    @staticmethod
    def is_run(folder: Path) -> bool:
        return (folder / "config.json").is_file() or diffusers_io.is_pipeline_folder(folder)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and self.is_run(p))

    def load(self, name: str, checkpoint: str):
        key = (name, checkpoint)
        if key not in self.loaded:
            if len(self.loaded) >= 4:  # a few models in memory at most
                self.loaded.pop(next(iter(self.loaded)))
            self.loaded[key] = load_run(self.folder(name), checkpoint=checkpoint, device=self.device)
        return self.loaded[key]

    def summary(self, name: str) -> dict:
        folder = self.folder(name)
        if diffusers_io.is_pipeline_folder(folder):
            return {"name": name, "kind": "diffusers", "checkpoints": ["latest"], "training": False}
        config = checkpoints.read_json(folder / "config.json")
        train, model = (config.get(k) or {} for k in ("train", "model")) if isinstance(config, dict) else ({}, {})
        kept = [p.name for p in checkpoints.list_checkpoints(folder)]
        latest = checkpoints.latest_checkpoint(folder)
        state = checkpoints.read_json(latest / "state.json") if latest else {}
        holder = folder / checkpoints.HOLDER
        return {"name": name, "kind": "run", "preset": train.get("preset"), "data": (train.get("data") or {}).get("source"),
                "steps_trained": state.get("step") if isinstance(state, dict) else None,
                "image_shape": [model.get("channels"), *(model.get("image_size") or [])],
                "classes": model.get("num_classes"), "class_names": model.get("class_names") or [],
                "on_clusters": bool(model.get("label_prior")), "guidance": model.get("guidance", 1.0),
                "walk": model.get("walk") or {}, "consistency": bool(model.get("distilled")),
                "checkpoints": ["latest"] + (["best"] if (folder / "checkpoints" / "best").is_dir() else []) + kept[::-1],
                "training": holder.is_file() and bool(holder.read_text().strip())}


class Previews:
    """The callback of a walk: progress on every step, a PNG of the image estimate at most four
    times a second (encoding one each step would slow the walk)."""

    def __init__(self, job: Job, run, total: int | None):
        self.job, self.run, self.total, self.last = job, run, total, 0.0

    def __call__(self, i, x_t, image) -> None:
        now = time.monotonic()
        due = now - self.last >= 0.25 or (self.total is not None and i + 1 == self.total)
        self.last = now if due else self.last
        self.job.advance(i + 1, self.total, _picture_png(self.run, image) if due else None)


def _picture_png(run, image: torch.Tensor) -> bytes:
    """The image estimate of a walk, (B, C, H, W) in model range, as one PNG grid."""
    pixels = run.spec.normalisation.to_uint8(image.float().clamp(-10, 10))
    return png_bytes(image_grid(pixels, columns=int(np.ceil(np.sqrt(len(pixels)))), scale=max(1, 64 // pixels.shape[1])))


def _generate_work(run, folder: Path, request: Generate, labels, walk):
    """The job of a generate request: the images (and PNG bytes) `pixel-diffusion sample --run
    FOLDER` writes for the same values."""
    guidance = run.spec.guidance_for(walk.guidance, labels)
    total = None if walk.entry.adaptive else walk.steps

    def work(job: Job) -> list[bytes]:
        job.advance(0, total)
        images = run.sample(request.n, walk, seed=request.seed, labels=labels, guidance=guidance, batch_size=64,
                            precision=request.precision, progress=False, callback=Previews(job, run, total))
        made = generation_parameters(run, str(folder), walk, seed=request.seed, label=request.label, guidance=guidance,
                                     precision=request.precision)
        return [png_bytes(as_picture(image), image_parameters(made, k, labels)) for k, image in enumerate(images)]

    return work


async def _upload(file: UploadFile, run, what: str) -> np.ndarray:
    """An uploaded image, size-limited, decoded by the data loader's guarded decoder and fitted to
    the model's size and channels: uint8 (H, W, C)."""
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise Problem(413, f"the {what} is larger than {MAX_UPLOAD_BYTES >> 20} MB")
    with tempfile.NamedTemporaryFile(suffix=Path(file.filename or "upload").suffix) as saved:
        saved.write(data)
        saved.flush()
        try:
            array = read_image_file(Path(saved.name), "white", MAX_UPLOAD_PIXELS)
        except ValueError as error:
            raise Problem(400, f"the {what} cannot be used: {one_line(error)}") from None
    size = run.spec.image_size[0]
    return convert_channels(fit_image(array, DataConfig(image_size=size, fit="resize-crop", allow_upscale=True)), run.spec.channels)


def create_app(runs: Path, device: str = "cpu") -> FastAPI:
    """The app for every run in the folder `runs`, sampling on `device`."""
    app, folder, queue = FastAPI(title="pixel-diffusion"), Runs(runs, device), JobQueue()
    app.state.queue = queue

    @app.exception_handler(Problem)
    async def problem(request: Request, error: Problem):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(ValueError)  # the library's one-line messages: a bad value
    async def bad_value(request: Request, error: ValueError):
        return JSONResponse({"error": one_line(error)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=422)

    @app.get("/api/runs")
    def list_runs():
        listed = []
        for name in folder.names():
            try:
                listed.append(folder.summary(name))
            except ValueError as error:  # a damaged run is listed with why, and the others still are
                listed.append({"name": name, "kind": "run", "checkpoints": [], "training": False, "error": one_line(error)})
        return {"runs": listed}

    @app.get("/api/runs/{name}")
    def one_run(name: str):
        records = read_records(folder.folder(name)) if not diffusers_io.is_pipeline_folder(folder.folder(name)) else []
        curves = {key: [[r["step"], r[key]] for r in records if isinstance(r.get(key), (int, float))] for key in ("loss", "kid")}
        stride = max(1, len(curves["loss"]) // 500)
        curves["loss"] = curves["loss"][::stride]
        previews = sorted((folder.folder(name) / "samples").glob("step-*.png"))
        return {**folder.summary(name), "curves": curves, "preview": previews[-1].stem if previews else None}

    @app.get("/api/runs/{name}/preview.png")
    def preview(name: str):
        previews = sorted((folder.folder(name) / "samples").glob("step-*.png"))
        if not previews:
            raise Problem(404, f"run {name!r} has no preview yet")
        return FileResponse(previews[-1], media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/samplers")
    def samplers():
        return {"default": {"sampler": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS}, "spacings": list(SPACINGS),
                "samplers": [{"name": k, "description": e.description, "spacing": e.spacing, "adaptive": e.adaptive}
                             for k, e in SAMPLERS.items()]}

    _jobs_api(app, folder, queue)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    return app


def _job_state(queue: JobQueue, job: Job) -> dict:
    return {"id": job.id, "kind": job.kind, "state": job.state, "position": queue.position(job), "step": job.step,
            "total": job.total, "error": job.error, "images": [f"/api/jobs/{job.id}/images/{k}.png" for k in range(len(job.images))]}


def _jobs_api(app: FastAPI, runs: Runs, queue: JobQueue) -> None:
    def job_of(job_id: str) -> Job:
        if job_id not in queue.jobs:
            raise Problem(404, f"no job {job_id!r}")
        return queue.jobs[job_id]

    @app.post("/api/generate")
    def generate(request: Generate):
        run = runs.load(request.run, request.checkpoint)
        # The run's own walk with what the request changes, checked whole (a bad value: 400).
        walk = run.walk(sampler=request.sampler, steps=request.steps, spacing=request.spacing, guidance=request.guidance)
        labels = (run.spec.default_labels(request.n, request.seed) if request.label is None
                  else run.sample_labels(request.n, request.label))  # every class in turn, or clusters by their share
        job = queue.submit("generate", _generate_work(run, runs.folder(request.run), request, labels, walk))
        return _job_state(queue, job)

    _edit_api(app, runs, queue)

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str):
        return _job_state(queue, job_of(job_id))

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str):
        job = job_of(job_id)
        queue.cancel(job)
        return _job_state(queue, job)

    @app.get("/api/jobs/{job_id}/images/{k}.png")
    def image(job_id: str, k: int):
        job = job_of(job_id)
        if not 0 <= k < len(job.images):
            raise Problem(404, f"job {job_id} has {len(job.images)} images; no image {k}")
        return Response(job.images[k], media_type="image/png")

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str):
        job = job_of(job_id)

        async def stream():
            seen = -1
            while True:
                if job.version != seen:
                    seen = job.version
                    state = _job_state(queue, job)
                    if job.preview is not None:
                        state["preview"] = "data:image/png;base64," + base64.b64encode(job.preview).decode()
                    yield f"data: {json.dumps(state)}\n\n"
                    if job.state in FINISHED:
                        return
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def _edit_api(app: FastAPI, runs: Runs, queue: JobQueue) -> None:
    """Restore (SDEdit) and inpaint (RePaint) an uploaded image, as jobs."""

    @app.post("/api/restore")
    async def restore_job(image: UploadFile = File(...), run: str = Form(...), checkpoint: str = Form("latest"),
                          strength: float = Form(0.5, gt=0, le=1), variations: int = Form(4, ge=1, le=16),
                          steps: int = Form(50, ge=1, le=1000), seed: int = Form(0, ge=0)):
        loaded = runs.load(run, checkpoint)
        x = _model_input(loaded, await _upload(image, loaded, "image"))

        def work(job: Job) -> list[bytes]:
            job.advance(0, steps)
            out = restore(loaded.denoiser, x, loaded.walk(steps=steps), strength=strength, variations=variations, seed=seed,
                          data_range=loaded.spec.data_range(loaded.device), callback=Previews(job, loaded, steps))
            made = {"command": "restore", "run": run, "checkpoint": str(loaded.checkpoint), "strength": strength,
                    "steps": steps, "seed": seed}
            return [png_bytes(as_picture(img), {**made, "index": k}) for k, img in enumerate(loaded.spec.normalisation.to_uint8(out))]

        return _job_state(queue, queue.submit("restore", work))

    @app.post("/api/inpaint")
    async def inpaint_job(image: UploadFile = File(...), mask: UploadFile = File(...), run: str = Form(...),
                          checkpoint: str = Form("latest"), variations: int = Form(4, ge=1, le=16),
                          steps: int = Form(50, ge=1, le=1000), resample: int = Form(5, ge=1, le=20),
                          seed: int = Form(0, ge=0)):
        loaded = runs.load(run, checkpoint)
        x = _model_input(loaded, await _upload(image, loaded, "image"))
        area = (await _upload(mask, loaded, "mask")).mean(-1) > 127  # white = generate
        m = torch.from_numpy(area.astype(np.float32))[None, None].to(loaded.device)

        def work(job: Job) -> list[bytes]:
            job.advance(0, steps)
            out = inpaint(loaded.denoiser, x.repeat_interleave(variations, 0), m, REPAINT_WALK.replace(steps=steps),
                          resample=resample, seed=seed, data_range=loaded.spec.data_range(loaded.device),
                          callback=Previews(job, loaded, steps))
            made = {"command": "inpaint", "run": run, "checkpoint": str(loaded.checkpoint), "steps": steps,
                    "resample": resample, "seed": seed}
            return [png_bytes(as_picture(img), {**made, "index": k}) for k, img in enumerate(loaded.spec.normalisation.to_uint8(out))]

        return _job_state(queue, queue.submit("inpaint", work))


def _model_input(run, image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> (1, C, H, W) in model range on the run's device."""
    return run.spec.normalisation.to_model(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]).to(run.device)
