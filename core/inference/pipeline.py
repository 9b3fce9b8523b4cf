"""THE pipeline: files -> read, SHA-256, decode, preprocess, batch -> predictions (+ optional Grad-CAM).

:func:`stream` is the only path from files to predictions; every consumer (the batch CSV writer and the
dashboard's batch job via ``core.review.folder.run_batch``, the metrics of ``core.evaluation.evaluate``, the stress test
``tools.shift_eval``, ``bench`` and the Ray engine ``core.review.ray_engine``, which runs :func:`load_file` and
:func:`predict_batch` as its two stages) uses it or its two stages, so they cannot drift apart.

Decoding a JPEG and preprocessing it (head crop, intensity window, resize) costs far
more CPU than this network's forward pass, so a fast batch run keeps every core
decoding while the model runs. With ``num_workers > 0``, :func:`iter_batches` is a
``torch.utils.data.DataLoader`` whose worker processes read, hash, decode and preprocess
each file and stack whole batches (the images travel once, through shared memory); with
``pin_memory`` on CUDA the batch is pinned by the loader, and :class:`DevicePrefetcher`
copies the next batch to the GPU on a side stream and standardises it there while the
current one runs. With ``num_workers=0`` the same work runs in the calling process, lazily
over the input (a thread such as the dashboard's batch job). Memory is bounded either way:
a few batches are in flight, whatever the number of files.

Unreadable files come back as results with ``error`` set; they never stop a run. Decoded
full-resolution pixels are dropped after preprocessing (``keep_pixels=False``): predictions
and CAM peaks need only the 160 px image and its geometry, and shipping 1 MB per slice
between processes would cost more than it saves.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.errors import ImageLoadError
from core.io.files import is_uri, read_uri_bytes, uri_name
from core.io.decode import read_source_bytes
from core.io.types import DEFAULT_LIMITS, DecodeLimits, DecodedImage
from core.inference.predictor import Prediction
from core.preprocess import Preprocessed, PreprocessSpec, decode_for, preprocess, preprocess_decoded

_NO_PIXELS = np.zeros((0, 0), np.float32)


@dataclass
class InMemory:
    """An image that is already decoded (a volume slice): no file to read, nothing to hash."""

    name: str
    image: DecodedImage


Source = Union[str, Path, InMemory]  # a str may be a URI (core.io.files.is_uri), read through fsspec


class CamExplainer(Protocol):
    """What :func:`predict_batch` needs to add heatmaps: a ``core.explain.cam.Explainer``, passed in by the caller
    (inference never imports explain; explain builds on inference)."""

    def results(self, items: list[Preprocessed], batch: torch.Tensor, targets: list[int] | None,
                method: str = "gradcam") -> list[Any]:
        """One ``core.explain.cam.CamResult`` per item, for a standardised (N, C, S, S) batch."""


#: Applied to the decoded pixels (float32 (H, W) in [0, 1]) of the file at ``index`` in the input; returns an
#: array (any dtype, decoded again as an array) or encoded file bytes. Must be picklable for worker processes.
Transform = Callable[[np.ndarray, int], Union[np.ndarray, bytes]]


@dataclass
class Result:
    """One file's outcome, in input order (``index``: its position in the input).

    ``item`` (the preprocessed image) is None when the file could not be read (``error`` says why, and
    ``failed_at`` at which stage: read, decode, transform or preprocess); :func:`stream` also drops it once the
    file is predicted unless asked to keep it. ``prediction`` and ``cam`` are filled by :func:`stream`.
    """

    path: str
    index: int = 0
    sha256: str = ""
    item: Preprocessed | None = None
    error: str = ""
    failed_at: str = ""
    seconds: dict = field(default_factory=dict)  # read / decode / preprocess, in the worker
    prediction: Prediction | None = None
    cam: Any = None  # a core.explain.cam.CamResult (see CamExplainer), or None


@dataclass
class PipelineBatch:
    """Files of one batch in input order.

    ``images01``: float32 (n, S, S) in [0, 1], the readable rows' preprocessed images
    stacked in the worker (it travels through shared memory; each row's
    ``item.image`` is a view of it). ``tensor``: the standardised (n, C, S, S) model
    input, on the predictor's device once :class:`DevicePrefetcher` has moved it.
    """

    rows: list[Result]
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


def display_path(path: Path | str, root: str | Path | None) -> str:
    """``path`` relative to ``root`` (POSIX separators) when it lies below it, else as given (a URI as is)."""
    if is_uri(path):
        return str(path)
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:  # a list file may name files anywhere
            pass
    return str(path)


def load_file(source: Source, spec: PreprocessSpec, root: str | Path | None = None,
              limits: DecodeLimits = DEFAULT_LIMITS, keep_pixels: bool = False, hash_file: bool = True,
              transform: Transform | None = None, index: int = 0) -> Result:
    """Read, hash, decode, (transform) and preprocess one file: the unit of work of every engine.

    Never raises for a bad file: the :class:`Result` carries the error text (which names the file; the audit
    trail replaces the name, see :func:`core.review.audit_trail.prediction_record`).
    """
    uri = is_uri(source)  # a list file's URI entry: read through fsspec (core.io.files.read_uri_bytes)
    if isinstance(source, InMemory):
        out, name = Result(source.name, index), source.name
    elif uri:
        out, name = Result(str(source), index), uri_name(source)
    else:
        path = Path(source)
        name = path.name
        out = Result(display_path(path, root), index)
    stage = "read"
    t0 = time.perf_counter()
    try:
        if isinstance(source, InMemory):
            decoded = source.image
            t1 = t2 = time.perf_counter()
        else:
            data = read_uri_bytes(source, limits.max_bytes) if uri else read_source_bytes(path, limits)[0]
            if hash_file:  # kept on error rows too once the bytes are read (audit: which file failed)
                out.sha256 = hashlib.sha256(data).hexdigest()
            t1 = time.perf_counter()
            stage = "decode"
            # A fast spec decodes a JPEG at the size its crop needs, unless full pixels are wanted (issue 22).
            decoded = decode_for(data, name, spec, limits, full=keep_pixels or transform is not None)
            t2 = time.perf_counter()
        if transform is not None:
            stage = "transform"
            changed = transform(decoded.pixels, index)
            stage = "preprocess"
            pre = preprocess(changed, spec, limits)  # an array or encoded bytes, decoded like an upload
        else:
            stage = "preprocess"
            pre = preprocess_decoded(decoded, spec)
        t3 = time.perf_counter()
        if not keep_pixels and pre.decoded is not None:
            pre.decoded = replace(pre.decoded, pixels=_NO_PIXELS)
        out.item = pre
        out.seconds = {"read": t1 - t0, "decode": t2 - t1, "preprocess": t3 - t2}
    except ImageLoadError as exc:
        out.error, out.failed_at = str(exc), stage
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop the batch
        out.error, out.failed_at = f"{name}: unexpected error ({type(exc).__name__}: {exc})", stage
    return out


class _Files(Dataset):
    def __init__(self, files: list[Source], spec: PreprocessSpec, root, limits, keep_pixels, hash_files,
                 transform: Transform | None = None):
        self.files, self.spec, self.root, self.limits = files, spec, root, limits
        self.keep_pixels, self.hash_files, self.transform = keep_pixels, hash_files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Result:
        return load_file(self.files[i], self.spec, self.root, self.limits, self.keep_pixels, self.hash_files,
                         self.transform, i)


class _Collate:
    """Stacks a batch inside the worker (picklable for worker processes)."""

    def __call__(self, rows: list[Result]) -> PipelineBatch:
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


def _as_source(f: Source) -> Source:
    return f if isinstance(f, InMemory) or is_uri(f) else Path(f)


def iter_batches(files: Iterable[Source], spec: PreprocessSpec, *, batch_size: int = 64,
                 num_workers: int | None = None, device: torch.device | None = None,
                 root: str | Path | None = None, limits: DecodeLimits = DEFAULT_LIMITS,
                 keep_pixels: bool = False, hash_files: bool = True, prefetch_factor: int = 2,
                 transform: Transform | None = None,
                 cancel: threading.Event | None = None) -> Iterator[PipelineBatch]:
    """Batches of decoded + preprocessed files, in input order.

    ``num_workers=0`` decodes in the calling process and reads ``files`` lazily, one batch at a time (a folder
    walk of any size; ``cancel`` is checked before each file, so a set event ends the batch in hand). With
    workers (``None``: :func:`default_workers`), a ``DataLoader`` over ``files`` materialised as a list (about
    100 bytes per path) decodes in ``num_workers`` processes; at most ``num_workers * prefetch_factor``
    batches are in flight and ``cancel`` is checked between batches. ``device`` only decides pinning (CUDA);
    the caller moves batches (see :class:`DevicePrefetcher`). Images are never all held at once.
    """
    device = device or torch.device("cpu")
    workers = default_workers(device) if num_workers is None else max(0, int(num_workers))
    if workers == 0:
        return _inline_batches(files, spec, batch_size, root, limits, keep_pixels, hash_files, transform, cancel)
    sources = [_as_source(f) for f in files]
    if not sources:
        return iter(())
    loader = DataLoader(
        _Files(sources, spec, root, limits, keep_pixels, hash_files, transform), batch_size=batch_size,
        shuffle=False, num_workers=workers, collate_fn=_Collate(), pin_memory=device.type == "cuda",
        prefetch_factor=prefetch_factor, persistent_workers=False)
    return (b.attach() for b in loader if not (cancel is not None and cancel.is_set()))


def _inline_batches(files: Iterable[Source], spec, batch_size, root, limits, keep_pixels, hash_files, transform,
                    cancel) -> Iterator[PipelineBatch]:
    collate, rows = _Collate(), []
    for i, f in enumerate(files):
        if cancel is not None and cancel.is_set():
            break
        rows.append(load_file(_as_source(f), spec, root, limits, keep_pixels, hash_files, transform, i))
        if len(rows) >= batch_size:
            yield collate(rows).attach()
            rows = []
    if rows:
        yield collate(rows).attach()


class DevicePrefetcher:
    """Moves each batch's tensor to the predictor's device; on CUDA one batch ahead.

    On CUDA the host-to-device copy of batch k+1 runs on a side stream while batch k
    computes on the default stream; elsewhere it is a plain, in-order move (no look-ahead,
    so an in-process stream decodes nothing it does not yet need).
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
        if self.stream is None:
            for b in self.batches:
                yield self._move(b)
            return
        nxt = next(self.batches, None)
        nxt = self._move(nxt) if nxt is not None else None
        while nxt is not None:
            cur = nxt
            torch.cuda.current_stream(self.predictor.device).wait_stream(self.stream)
            if cur.tensor is not None:
                cur.tensor.record_stream(torch.cuda.current_stream(self.predictor.device))
            nxt = next(self.batches, None)
            nxt = self._move(nxt) if nxt is not None else None
            yield cur


def predict_batch(predictor, batch: PipelineBatch, cam_method: str | None = None,
                  keep_items: bool = False, explainer: CamExplainer | None = None) -> list[Result]:
    """Fill ``prediction`` (and ``cam``: targets = the predicted classes) of a batch's readable rows.

    One forward pass (and, with ``cam_method``, one batched Grad-CAM pass through ``explainer``, the
    ``core.explain.cam.Explainer`` of ``predictor``) for the whole batch; ``batch.tensor`` is used when the
    caller already standardised it. Rows are returned in input order; unless ``keep_items``, the preprocessed
    images are dropped once predicted (a consumer holding results then holds a few hundred bytes each).
    """
    if cam_method and explainer is None:
        raise ValueError("cam_method needs an explainer: pass core.explain.cam.Explainer(predictor)")
    items = batch.items
    if items:
        tensor = batch.tensor if batch.tensor is not None else predictor.batch_tensor(items)
        preds = predictor.predict_preprocessed(items, batch=tensor)
        cams: list = [None] * len(items)
        if cam_method:
            cams = explainer.results(items, tensor, [p.index for p in preds], cam_method)
        it = iter(zip(preds, cams))
        for row in batch.rows:
            if row.item is not None:
                row.prediction, row.cam = next(it)
                if not keep_items:
                    row.item = None
    return batch.rows


def stream(predictor, files: Iterable[Source], *, root: str | Path | None = None, cam_method: str | None = None,
           batch_size: int | None = None, num_workers: int | None = 0, limits: DecodeLimits = DEFAULT_LIMITS,
           transform: Transform | None = None, cancel: threading.Event | None = None, hash_files: bool = True,
           keep_items: bool = False, explainer: CamExplainer | None = None) -> Iterator[Result]:
    """THE path from files to predictions: one :class:`Result` per input, in input order.

    Every consumer goes through here: ``core.review.folder`` (CSV + audit trail), ``core.evaluation.evaluate`` (metrics),
    ``tools.shift_eval`` (with a ``transform``), the dashboard's batch job and ``bench``.

    Args:
        predictor: a :class:`core.inference.predictor.Predictor`.
        files: paths (relative names are taken against ``root`` when given) or :class:`InMemory` images.
        cam_method: also a batched Grad-CAM per file, for its predicted class (needs ``explainer``).
        explainer: the ``core.explain.cam.Explainer`` of ``predictor`` that computes those heatmaps.
        batch_size: files per forward pass (default: the predictor's).
        num_workers: 0 decodes in this process (lazy over ``files``: right for threads, e.g. the
            dashboard); N > 0 (or None: every core) decodes in worker processes, which is faster where
            decoding is the bottleneck (``python -m bench`` measures it).
        transform: applied to each file's decoded pixels before preprocessing (the stress test's shifts).
        cancel: once set, no further file is read; results already decoded are still yielded.
        hash_files: compute each file's SHA-256 (the audit trail's key).
        keep_items: keep ``Result.item`` (the preprocessed image) after prediction.

    Memory is bounded by the batches in flight, whatever the number of files.
    """
    bs = batch_size or predictor.batch_size
    batches = iter_batches(files, predictor.spec, batch_size=bs, num_workers=num_workers, device=predictor.device,
                           root=root, limits=limits, hash_files=hash_files, transform=transform, cancel=cancel)
    for b in DevicePrefetcher(batches, predictor):
        yield from predict_batch(predictor, b, cam_method, keep_items, explainer)
