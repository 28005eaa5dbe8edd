"""Whole-image and sliced (SAHI) prediction with a trained artifact."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .artifact import load_artifact, trained_slicing
from .config import ModelConfig
from .data import Category, load_image, resize_stretched, to_tensor
from .errors import DetectionError, SliceMismatch
from .model import PPYOLOE
from .nms import postprocess


@dataclass
class Detection:
    """One detected box in original-image pixels.

    ``second_score``: the best score among the other categories at the same box (the network's
    anchor it was kept from, or a box of another category that ``one_per_place`` dropped for
    it); ``score - second_score`` is how sure the detector is of the category. None where it is
    not known, and for a one-category detector.
    """

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    category_id: int
    category_name: str
    second_score: float | None = None

    @property
    def bbox_xywh(self) -> list[float]:
        """COCO-style [x, y, w, h]."""
        return [self.x1, self.y1, self.x2 - self.x1, self.y2 - self.y1]


def one_per_place(detections: list[Detection], iou: float = 0.7) -> list[Detection]:
    """One detection per place: of boxes overlapping by more than ``iou`` (intersection over
    union), whatever their categories, the best scored stays, sorted by score.

    Per-category NMS (PaddleDetection's, the two-stage detector's two categories per proposal)
    keeps a second box of another category on the same defect: right for mAP, where the second
    guess can only help, wrong for suggestions, where a reviewer would reject the copy by hand.
    The kept box's ``second_score`` becomes the best score of another category among the boxes
    it replaced (when higher), so the runner-up is still known. Boxes of neighbouring defects
    overlap far less than 0.7 and stay."""
    if len(detections) < 2:
        return list(detections)
    from torchvision.ops import box_iou, nms

    boxes = torch.tensor([[d.x1, d.y1, d.x2, d.y2] for d in detections], dtype=torch.float32)
    scores = torch.tensor([d.score for d in detections], dtype=torch.float32)
    keep = nms(boxes, scores, iou).tolist()
    overlaps = box_iou(boxes[keep], boxes) > iou
    # a dropped box belongs to the first kept box (by score) that overlaps it: the one that
    # dropped it, as greedy NMS goes; not to a later kept box it also overlaps
    claimed = torch.zeros(len(detections), dtype=torch.bool)
    claimed[keep] = True
    out = []
    for row, k in enumerate(keep):
        kept = detections[k]
        mine = overlaps[row] & ~claimed
        claimed |= mine
        others = [
            detections[j].score
            for j in torch.nonzero(mine).flatten().tolist()
            if detections[j].category_id != kept.category_id
        ]
        if others and (kept.second_score is None or max(others) > kept.second_score):
            kept = replace(kept, second_score=max(others))
        out.append(kept)
    return out


# (category id, score) -> second_score of the slices' detections while ``predict_sliced`` runs,
# with the detector that notes them: per thread (and asyncio task), so that one detector may
# predict in several threads at once, each call with its own table (not on the instance)
_SECOND_SCORES: ContextVar[tuple[Detector, dict[tuple[int, float], float]] | None] = ContextVar(
    "loupe_detection_second_scores", default=None
)


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Detector:
    """A loaded detector. Load once per worker process and reuse.

    ``predict`` runs whole images at the model's eval size (stretched, like PaddleDetection);
    ``predict_sliced`` tiles large images through SAHI. This class runs the network in torch
    (``runtime == "torch"``); :class:`RuntimeDetector` runs an exported copy of it with the same
    pre- and post-processing. :func:`workers.detection.load_detector` picks the faster one.

    A Siamese detector (``siamese`` True) takes each image's reference beside it
    (``reference=`` / ``references=``): the golden sample or "before" image already aligned to
    the image, at its size. Sliced prediction cuts both at the same windows.
    """

    runtime = "torch"
    precision = "fp32"  # "int8" for a checked quantized ONNX copy (see quantize.py)
    # artifact.trained_slicing of a detector trained on slices (None: whole images, or unknown)
    trained_on: dict | None = None
    #: How far a slice may scale objects beyond the training crops' range before it is refused.
    SCALE_TOLERANCE = 0.1

    def __init__(
        self,
        model: PPYOLOE,
        categories: list[Category],
        device: str | torch.device | None = None,
        eval_size: int | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.model: PPYOLOE | None = model.to(self.device).eval()
        self.model_config = model.cfg
        self.categories = categories
        self.eval_size = eval_size or model.cfg.eval_size
        if self.eval_size % 32:
            raise ValueError("eval_size must be a multiple of 32")

    @property
    def siamese(self) -> bool:
        """True when the network takes a reference image beside each image."""
        return self.model_config.siamese

    def forward(
        self, batch: torch.Tensor, references: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Network outputs for a float [N, 3, S, S] batch in [0, 1] (and, for a Siamese
        network, its references, same shape): scores [N, L, C] and boxes [N, L, 4] in input
        pixels (before NMS)."""
        if self.model is None:
            raise RuntimeError("this detector has no torch model")
        if references is None:
            return self.model(batch.to(self.device))
        return self.model(batch.to(self.device), references.to(self.device))

    def _check_references(
        self, images: list[np.ndarray], references: list[np.ndarray] | None
    ) -> None:
        if not self.siamese:
            if references is not None:
                raise DetectionError(
                    "this detector is a single-image model: it takes no reference image"
                )
            return
        if references is None or any(r is None for r in references):
            raise DetectionError(
                f"this detector is a {self.model_config.kind} model: pass each image's reference "
                "(aligned to the "
                "image, at its size) as reference=... / references=[...]"
            )
        if len(references) != len(images):
            raise DetectionError(f"{len(images)} images but {len(references)} references")
        for im, ref in zip(images, references, strict=True):
            if ref.shape[:2] != im.shape[:2]:
                raise DetectionError(
                    f"the reference is {ref.shape[1]}x{ref.shape[0]} px, its image "
                    f"{im.shape[1]}x{im.shape[0]}: warp the reference onto the image first"
                )

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        eval_size: int | None = None,
    ) -> Detector:
        """Load an artifact written by :func:`workers.detection.train`.

        ``eval_size`` overrides the network input size (default: the artifact's, 640); a slice
        is resized to it, so keep it equal to the slice size to keep pixel scale.
        """
        dev = torch.device(device) if device is not None else default_device()
        model, cats, metadata = load_artifact(path, dev)
        model.convert_to_deploy()  # RepVGG blocks become single convs: same outputs, faster
        detector = cls(model, cats, dev, eval_size=eval_size)
        detector.trained_on = trained_slicing(metadata, model.cfg.eval_size)
        return detector

    def slice_size_for(self, slice_size: int | None = None) -> int:
        """The slice size to predict with: ``slice_size`` if the detector was trained to see
        objects at the pixel scale it gives (slices resized to ``eval_size``), else
        :class:`SliceMismatch` naming the sizes that fit; None: the size it was trained on
        (kept in the artifact; 640 for a detector trained on whole images, whose scale the
        artifact does not know)."""
        t = self.trained_on
        if t is None:
            return slice_size or 640
        crop, (small, large) = t["crop"], t["sizes"]
        own = max(32, round(crop * self.eval_size / t["eval_size"]))  # the trained scale, here
        if slice_size is None:
            return own
        scale = self.eval_size / slice_size
        lo, hi = small / crop, large / crop
        if (1 - self.SCALE_TOLERANCE) * lo <= scale <= (1 + self.SCALE_TOLERANCE) * hi:
            return slice_size
        fits = (
            round(self.eval_size / ((1 + self.SCALE_TOLERANCE) * hi)),
            round(self.eval_size / ((1 - self.SCALE_TOLERANCE) * lo)),
        )
        raise SliceMismatch(
            f"this detector was trained on {crop} px slices at full resolution (resized to "
            f"{small}-{large} px inputs: objects at {lo:.2f}-{hi:.2f} times their size); "
            f"{slice_size} px slices into its {self.eval_size} px input show them at "
            f"{scale:.2f} times, which it never learnt. Predict with {own} px slices "
            f"(it takes {fits[0]} to {fits[1]} px)."
        )

    @torch.no_grad()
    def predict_batch(
        self,
        images: list[np.ndarray],
        score_threshold: float = 0.25,
        references: list[np.ndarray] | None = None,
    ) -> list[list[Detection]]:
        """Detections for RGB uint8 images of any size (each resized to eval_size); a Siamese
        detector needs ``references``, one per image and of its size."""
        self._check_references(images, references)
        if not images:
            return []
        size = self.eval_size
        batch = to_tensor([resize_stretched(im, size) for im in images])
        if references is None:
            scores, boxes = self.forward(batch)
        else:
            refs = to_tensor([resize_stretched(r, size) for r in references])
            scores, boxes = self.forward(batch, refs)
        dets = postprocess(scores, boxes, self.model_config, score_threshold, with_second=True)
        out = []
        for im, d in zip(images, dets, strict=True):
            h, w = im.shape[:2]
            scale = torch.tensor([w / size, h / size, w / size, h / size], device=d.device)
            d = d.clone()
            d[:, 2:6] = d[:, 2:6] * scale
            d[:, [2, 4]] = d[:, [2, 4]].clamp(0, w)
            d[:, [3, 5]] = d[:, [3, 5]].clamp(0, h)
            out.append(self._to_detections(d))
        return out

    def predict(
        self,
        image: np.ndarray | str | Path,
        score_threshold: float = 0.25,
        reference: np.ndarray | str | Path | None = None,
    ) -> list[Detection]:
        """Detections for one whole image (array or path); a Siamese detector needs its
        ``reference`` (array or path, aligned to the image, same size)."""
        if not isinstance(image, np.ndarray):
            image = load_image(image)
        if reference is None:
            return self.predict_batch([image], score_threshold)[0]
        if not isinstance(reference, np.ndarray):
            reference = load_image(reference)
        return self.predict_batch([image], score_threshold, references=[reference])[0]

    def predict_sliced(
        self,
        image: np.ndarray | str | Path,
        slice_size: int | None = None,
        overlap: float = 0.25,
        score_threshold: float = 0.25,
        batch_size: int = 4,
        postprocess_type: str = "NMS",
        match_metric: str = "IOS",
        match_threshold: float = 0.6,
        class_agnostic: bool = True,
        perform_standard_pred: bool = False,
        reference: np.ndarray | str | Path | None = None,
    ) -> list[Detection]:
        """SAHI sliced prediction on a large image; slices are run ``batch_size`` at a time.

        A Siamese detector needs the image's ``reference`` (array or path; aligned to the image,
        at its size): it is cut at the same windows as the image, and each slice is predicted
        with its reference slice. The windows and the merge are SAHI's, as for one image.

        Images no larger than one slice are predicted directly (one forward pass). Merging is
        class-agnostic by default: a defect cut by a slice border can be classified
        differently in that slice, and one defect must give one suggestion.

        The merge is NMS on intersection over the smaller box (PaddleDetection's sliced
        inference default): the piece of a defect seen cut at a slice border lies inside the
        whole box from the neighbouring slice and is dropped. SAHI's GREEDYNMM (union of the
        matched boxes) is not the default: at evaluation's 0.01 score it merged every faint box
        around a defect into one ever larger box (a DeepPCB model's slice mAP50 0.000 against
        0.33 with NMS; docs/benchmarks-detection.md).

        ``slice_size`` None: the slices the detector was trained on (:meth:`slice_size_for`;
        another size at a pixel scale it never learnt raises :class:`SliceMismatch`).
        """
        from sahi.predict import get_sliced_prediction

        from .sahi_model import LoupeSahiModel

        slice_size = self.slice_size_for(slice_size)

        if not isinstance(image, np.ndarray):
            image = load_image(image)
        if reference is not None and not isinstance(reference, np.ndarray):
            reference = load_image(reference)
        self._check_references([image], None if reference is None else [reference])
        h, w = image.shape[:2]
        if h <= slice_size and w <= slice_size:
            return self.predict(image, score_threshold, reference=reference)
        if reference is not None:
            with self._noting_second_scores() as seconds:
                predictions = self._sliced_pairs(
                    image,
                    reference,
                    slice_size=slice_size,
                    overlap=overlap,
                    score_threshold=score_threshold,
                    batch_size=batch_size,
                    postprocess_type=postprocess_type,
                    match_metric=match_metric,
                    match_threshold=match_threshold,
                    class_agnostic=class_agnostic,
                    perform_standard_pred=perform_standard_pred,
                )
            return self._from_object_predictions(predictions, seconds)
        sahi_model = LoupeSahiModel(detector=self, confidence_threshold=score_threshold)
        with self._noting_second_scores() as seconds:
            result = get_sliced_prediction(
                image,
                sahi_model,
                slice_height=slice_size,
                slice_width=slice_size,
                overlap_height_ratio=overlap,
                overlap_width_ratio=overlap,
                perform_standard_pred=perform_standard_pred,
                postprocess_type=postprocess_type,
                postprocess_match_metric=match_metric,
                postprocess_match_threshold=match_threshold,
                postprocess_class_agnostic=class_agnostic,
                verbose=0,
                batch_size=batch_size,
                force_postprocess_type=True,
            )
        return self._from_object_predictions(result.object_prediction_list, seconds)

    def _sliced_pairs(
        self,
        image: np.ndarray,
        reference: np.ndarray | None,
        *,
        slice_size: int,
        overlap: float,
        score_threshold: float,
        batch_size: int,
        postprocess_type: str,
        match_metric: str,
        match_threshold: float,
        class_agnostic: bool,
        perform_standard_pred: bool,
    ) -> list:
        """``sahi.predict.get_sliced_prediction`` for an image and its reference: SAHI's own
        windows (``get_slice_bboxes``), shifts and merge, each batch of image slices predicted
        with the reference slices at the same windows. (SAHI's function takes one image only.)
        With ``reference`` None it is the one-image path, which the tests compare with SAHI's."""
        from sahi.predict import POSTPROCESS_NAME_TO_CLASS
        from sahi.slicing import get_slice_bboxes

        from .sahi_model import LoupeSahiModel

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if postprocess_type not in POSTPROCESS_NAME_TO_CLASS:
            raise ValueError(
                f"postprocess_type should be one of {list(POSTPROCESS_NAME_TO_CLASS)} "
                f"but given as {postprocess_type}"
            )
        h, w = image.shape[:2]
        windows = get_slice_bboxes(
            image_height=h,
            image_width=w,
            slice_height=slice_size,
            slice_width=slice_size,
            auto_slice_resolution=True,
            overlap_height_ratio=overlap,
            overlap_width_ratio=overlap,
        )
        sahi_model = LoupeSahiModel(detector=self, confidence_threshold=score_threshold)
        merge = POSTPROCESS_NAME_TO_CLASS[postprocess_type](
            match_threshold=match_threshold,
            match_metric=match_metric,
            class_agnostic=class_agnostic,
        )
        predictions = []
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            crops = [np.ascontiguousarray(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in chunk]
            refs = None
            if reference is not None:
                refs = [np.ascontiguousarray(reference[y0:y1, x0:x1]) for x0, y0, x1, y1 in chunk]
            sahi_model.perform_batch_inference(crops, references=refs)
            sahi_model.convert_original_predictions(
                shift_amount=[[x0, y0] for x0, y0, _, _ in chunk], full_shape=[[h, w]] * len(chunk)
            )
            for per_image in sahi_model.object_prediction_list_per_image:
                predictions.extend(p.get_shifted_object_prediction() for p in per_image if p)
        if len(windows) > 1 and perform_standard_pred:
            refs = None if reference is None else [reference]
            sahi_model.perform_batch_inference([image], references=refs)
            sahi_model.convert_original_predictions(shift_amount=[[0, 0]], full_shape=[[h, w]])
            predictions.extend(sahi_model.object_prediction_list_per_image[0])
        if len(predictions) > 1:
            predictions = merge(predictions)
        return predictions

    @contextmanager
    def _noting_second_scores(self) -> Iterator[dict[tuple[int, float], float]]:
        """Note every detection's ``second_score`` by (category id, score) meanwhile: SAHI's
        merge keeps, or merges into, one slice's prediction with its category and score but
        drops any other field, so the sliced results find theirs there. The table is this
        call's (``_SECOND_SCORES``, per thread): calls in other threads keep their own."""
        seconds: dict[tuple[int, float], float] = {}
        token = _SECOND_SCORES.set((self, seconds))
        try:
            yield seconds
        finally:
            _SECOND_SCORES.reset(token)

    def _from_object_predictions(
        self, object_predictions: list, seconds: dict[tuple[int, float], float] | None = None
    ) -> list[Detection]:
        dets = []
        for op in object_predictions:
            x1, y1, x2, y2 = op.bbox.to_xyxy()
            score, category_id = float(op.score.value), int(op.category.id)
            dets.append(
                Detection(
                    float(x1),
                    float(y1),
                    float(x2),
                    float(y2),
                    score,
                    category_id,
                    str(op.category.name),
                    (seconds or {}).get((category_id, score)),
                )
            )
        dets.sort(key=lambda d: -d.score)
        return dets

    def _to_detections(self, dets: torch.Tensor) -> list[Detection]:
        noting = _SECOND_SCORES.get()
        seconds = noting[1] if noting is not None and noting[0] is self else None
        out = []
        for row in dets.cpu().tolist():
            cat = self.categories[int(row[0])]
            # one category: no second to hesitate with (None, not a margin equal to the score)
            second = row[6] if len(row) > 6 and len(self.categories) > 1 else None
            out.append(Detection(row[2], row[3], row[4], row[5], row[1], cat.id, cat.name, second))
            if seconds is not None and second is not None:
                key = (cat.id, row[1])  # the same score twice: the closer call
                seconds[key] = max(second, seconds.get(key, second))
        return out


NetworkFn = Callable[..., tuple[np.ndarray, np.ndarray]]


class RuntimeDetector(Detector):
    """A :class:`Detector` whose network is an exported copy run outside torch (ONNX Runtime,
    OpenVINO): the same resizing, NMS and SAHI merge, so the detections are the same up to
    float rounding. ``net`` maps a float32 [N, 3, S, S] array (and, for a Siamese network, the
    references' array of the same shape as a second argument) to (scores [N, L, C], boxes
    [N, L, 4]); ``eval_size`` is the fixed S it was exported at. CPU only; ``model`` is None.
    """

    def __init__(
        self,
        net: NetworkFn,
        categories: list[Category],
        model_config: ModelConfig,
        eval_size: int,
        runtime: str,
    ) -> None:
        self.device = torch.device("cpu")
        self.model = None
        self.net = net
        self.model_config = model_config
        self.categories = categories
        self.eval_size = eval_size
        self.runtime = runtime
        if self.eval_size % 32:
            raise ValueError("eval_size must be a multiple of 32")

    def forward(
        self, batch: torch.Tensor, references: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Network outputs, as :meth:`Detector.forward`."""
        arrays = [batch.numpy().astype(np.float32, copy=False)]
        if references is not None:
            arrays.append(references.numpy().astype(np.float32, copy=False))
        scores, boxes = self.net(*arrays)
        return torch.from_numpy(np.asarray(scores)), torch.from_numpy(np.asarray(boxes))
