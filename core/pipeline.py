"""Parallel input pipeline: files -> decoded, preprocessed, stacked batches -> predictions.

Decoding a JPEG and preprocessing it (head crop, intensity window, resize) costs far
more CPU than this network's forward pass, so a fast batch run keeps every core
decoding while the model runs. :func:`iter_batches` is a ``torch.utils.data.DataLoader``
over a list of files whose worker processes read, hash, decode and preprocess each file
and stack whole batches (the images travel once, through shared memory); with
``pin_memory`` on CUDA the batch is pinned by the loader, and :class:`DevicePrefetcher`
copies the next batch to the GPU on a side stream and standardises it there while the
current one runs. Memory is bounded: at most ``num_workers * prefetch_factor``
batches are in flight, whatever the number of files.

:func:`predict_files` puts it together (plus optional batched Grad-CAM) and is what
``python -m bench`` measures. Unreadable files come back as rows with ``error`` set;
they never stop a run. Decoded full-resolution pixels are dropped in the workers
(``keep_pixels=False``): predictions and CAM peaks need only the 160 px image and its
geometry, and shipping 1 MB per slice between processes would cost more than it saves.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.errors import ImageLoadError
from core.image_io import DEFAULT_LIMITS, DecodeLimits, decode_bytes, read_source_bytes
from core.preprocess import Preprocessed, PreprocessSpec, preprocess_decoded

_NO_PIXELS = np.zeros((0, 0), np.float32)


@dataclass
class Loaded:
    """One file's outcome. ``item`` is None when the file could not be read (``error`` says why)."""

    path: str
    sha256: str = ""
    item: Preprocessed | None = None
    error: str = ""
    seconds: dict = field(default_factory=dict)  # read / decode / preprocess, in the worker


@dataclass
class PipelineBatch:
    """Files of one batch in input order.

    ``images01``: float32 (n, S, S) in [0, 1], the readable rows' preprocessed images
    stacked in the worker (it travels through shared memory; each row's
    ``item.image`` is a view of it). ``tensor``: the standardised (n, C, S, S) model
    input, on the predictor's device once :class:`DevicePrefetcher` has moved it.
    """

    rows: list[Loaded]
    images01: torch.Tensor | None
    tensor: torch.Tensor | None = None

    @property
    def items(self) -> list[Preprocessed]:
        return [r.item for r in self.rows if r.item is not None]

    def pin_memory(self) -> "PipelineBatch":  # called by DataLoader(pin_memory=True)
        if self.images01 is not None:
            self.images01 = self.images01.pin_memory()
        return self

    def attach(self) -> "PipelineBatch":
        """Point each item's ``image`` at its row of ``images01`` (no copy)."""
        if self.images01 is not None:
            for item, img in zip(self.items, self.images01.numpy()):
                item.image = img
        return self


def load_file(path: str | Path, spec: PreprocessSpec, root: str | Path | None = None,
              limits: DecodeLimits = DEFAULT_LIMITS, keep_pixels: bool = False, hash_file: bool = True) -> Loaded:
    """Read, hash, decode and preprocess one file (the unit of work of a pipeline worker)."""
    path = Path(path)
    rel = path.relative_to(root).as_posix() if root is not None else str(path)
    out = Loaded(rel)
    t0 = time.perf_counter()
    try:
        data, _ = read_source_bytes(path, limits)
        if hash_file:
            out.sha256 = hashlib.sha256(data).hexdigest()
        t1 = time.perf_counter()
        decoded = decode_bytes(data, path.name, limits)
        t2 = time.perf_counter()
        pre = preprocess_decoded(decoded, spec)
        t3 = time.perf_counter()
        if not keep_pixels and pre.decoded is not None:
            pre.decoded = replace(pre.decoded, pixels=_NO_PIXELS)
        out.item = pre
        out.seconds = {"read": t1 - t0, "decode": t2 - t1, "preprocess": t3 - t2}
    except ImageLoadError as exc:
        out.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop the batch
        out.error = f"{path.name}: unexpected error ({type(exc).__name__}: {exc})"
    return out


class _Files(Dataset):
    def __init__(self, files: list[Path], spec: PreprocessSpec, root, limits, keep_pixels, hash_files):
        self.files, self.spec, self.root, self.limits = files, spec, root, limits
        self.keep_pixels, self.hash_files = keep_pixels, hash_files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Loaded:
        return load_file(self.files[i], self.spec, self.root, self.limits, self.keep_pixels, self.hash_files)


class _Collate:
    """Stacks a batch inside the worker (picklable for worker processes)."""

    def __call__(self, rows: list[Loaded]) -> PipelineBatch:
        items = [r.item for r in rows if r.item is not None]
        images01 = torch.from_numpy(np.stack([it.image for it in items])) if items else None
        for it in items:  # sent once, in images01; attach() restores the per-item views
            it.image = _NO_PIXELS
        return PipelineBatch(rows, images01)


def default_workers(device: torch.device) -> int:
    """Decode processes: every core this process may use (the forward pass is the minor cost)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 32 if device.type == "cuda" else cores))


def iter_batches(files: Iterable[str | Path], spec: PreprocessSpec, *, batch_size: int = 64,
                 num_workers: int | None = None, device: torch.device | None = None,
                 root: str | Path | None = None, limits: DecodeLimits = DEFAULT_LIMITS,
                 keep_pixels: bool = False, hash_files: bool = True, prefetch_factor: int = 2) -> Iterator[PipelineBatch]:
    """Batches of decoded + preprocessed files, in input order, made by ``num_workers`` processes.

    ``device`` only decides pinning (CUDA); the caller moves batches (see :class:`DevicePrefetcher`).
    ``num_workers=0`` decodes in the calling process. ``files`` is materialised as a list
    (about 100 bytes per path); images are never all held at once.
    """
    device = device or torch.device("cpu")
    files = [Path(f) for f in files]
    if not files:
        return iter(())
    workers = default_workers(device) if num_workers is None else max(0, int(num_workers))
    loader = DataLoader(
        _Files(files, spec, root, limits, keep_pixels, hash_files), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=_Collate(), pin_memory=device.type == "cuda",
        prefetch_factor=prefetch_factor if workers else None, persistent_workers=False)
    return (b.attach() for b in loader)


class DevicePrefetcher:
    """Moves each batch's tensor to the predictor's device one batch ahead.

    On CUDA the host-to-device copy of batch k+1 runs on a side stream while batch k
    computes on the default stream; elsewhere it is a plain, in-order move.
    """

    def __init__(self, batches: Iterator[PipelineBatch], predictor):
        self.batches, self.predictor = iter(batches), predictor
        dev = predictor.device
        self.stream = torch.cuda.Stream(device=dev) if dev.type == "cuda" else None

    def _move(self, b: PipelineBatch) -> PipelineBatch:
        if b.images01 is not None:
            if self.stream is not None:
                with torch.cuda.stream(self.stream):
                    b.tensor = self.predictor.standardise(b.images01)
            else:
                b.tensor = self.predictor.standardise(b.images01)
        return b

    def __iter__(self) -> Iterator[PipelineBatch]:
        nxt = next(self.batches, None)
        nxt = self._move(nxt) if nxt is not None else None
        while nxt is not None:
            cur = nxt
            if self.stream is not None:
                torch.cuda.current_stream(self.predictor.device).wait_stream(self.stream)
                if cur.tensor is not None:
                    cur.tensor.record_stream(torch.cuda.current_stream(self.predictor.device))
            nxt = next(self.batches, None)
            nxt = self._move(nxt) if nxt is not None else None
            yield cur


def predict_files(predictor, files: Iterable[str | Path], *, batch_size: int | None = None,
                  num_workers: int | None = None, root: str | Path | None = None, cam_method: str | None = None,
                  limits: DecodeLimits = DEFAULT_LIMITS, hash_files: bool = True) -> Iterator[tuple]:
    """Yield ``(Loaded, Prediction | None, CamResult | None)`` per file, in input order.

    Batched end to end: workers decode, one forward pass per batch, and with
    ``cam_method`` one batched Grad-CAM pass (targets = the predicted classes).
    """
    bs = batch_size or predictor.batch_size
    batches = iter_batches(files, predictor.spec, batch_size=bs, num_workers=num_workers, device=predictor.device,
                           root=root, limits=limits, hash_files=hash_files)
    for b in DevicePrefetcher(batches, predictor):
        items = b.items
        preds = predictor.predict_preprocessed(items, batch=b.tensor) if items else []
        cams: list = [None] * len(items)
        if cam_method and items:
            from core.cam import cam_results  # grad-cam is only imported when CAMs are asked for

            cams = cam_results(predictor, items, b.tensor, [p.index for p in preds], cam_method)
        it = iter(zip(preds, cams))
        for row in b.rows:
            if row.item is None:
                yield row, None, None
            else:
                p, c = next(it)
                yield row, p, c
