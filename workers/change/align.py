"""Aligning a reference image (golden sample, "before") onto an inspected image.

The result is a 3x3 homography that maps REFERENCE pixel coordinates to IMAGE pixel coordinates
at full resolution, with the figures that say how much to trust it. Steps, on copies downscaled
to ``max_side``:

1. Both images must show something: a blank (uniform) one is refused.
2. Same aspect ratio (usually the same size, a fixed camera or a scanner): ECC from the identity
   on an image pyramid (a rigid motion on every level, then an affine and a homography at the
   working level when they fit clearly better). It is cheap and sub-pixel on pairs that are
   already close; its correlation must reach ``ECC_MIN_CORRELATION``.
3. Otherwise, when ECC fails, or when the features disagree with it: ORB features (OpenCV 5
   moved AKAZE to contrib), Lowe's ratio test, ``cv2.findHomography`` (MAGSAC), then an ECC
   refinement started from that homography (kept when it raises the correlation). Of two
   candidates the one with the higher correlation of the aligned pair wins.
4. Refusals (``ok=False``, a sentence in ``reason``, the figures still filled in): too few
   features agree, the aligned pair does not look alike, the remaining displacement is too
   large, the homography folds, flips or reaches infinity inside the reference, or the warped
   reference covers too little of the image.

``inliers``/``matches`` are feature matches even for the ECC path (those within
``INLIER_PX`` of the ECC transform): they say how well the features confirm it, and 0 of 0 on a
featureless pair. ``residual_px`` is measured again around the agreeing matches by phase
correlation of small patches (ORB keypoints themselves are a pixel or so off, and would hide a
sub-pixel alignment). Pixel-centre conventions are exact (a pixel's centre is at integer
coordinates), so the matrix scaled back to full resolution keeps its sub-pixel accuracy.

Nothing here raises for a merely bad pair; :class:`AlignmentError` is for unusable input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

#: Feature matches that must agree with a feature homography for it to be accepted.
MIN_INLIERS = 25
#: RANSAC/agreement tolerance, in working-resolution pixels.
INLIER_PX = 3.0
#: Largest median remaining displacement after alignment, in working-resolution pixels.
MAX_RESIDUAL_PX = 2.0
#: Smallest share of the image the warped reference must cover.
MIN_OVERLAP = 0.3
#: ECC correlation (zero-mean, normalised; 1 = identical up to brightness) that accepts ECC alone.
ECC_MIN_CORRELATION = 0.75
#: Full-resolution corner displacement under which an ECC result is snapped to the identity
#: (no resampling: a warp by a fraction of a pixel only blurs the reference).
IDENTITY_PX = 0.3
#: Grey-level standard deviation below which an image counts as blank.
BLANK_STD = 2.0
#: Share of the misfit (1 - ECC correlation) an affine or homography must remove to replace the
#: simpler motion near the identity (model selection: more freedom must earn its keep).
MODEL_GAIN = 0.1
#: ECC pyramid: coarsest level's longer side.
ECC_COARSEST = 160
#: Most keypoints kept per image (strongest first).
MAX_KEYPOINTS = 5000
RATIO = 0.8
#: Side of the patches that measure the residual (working pixels).
RESIDUAL_PATCH = 32
#: Smallest correlation of the aligned pair for a feature homography (lower: not the same scene).
MIN_CORRELATION = 0.5


class AlignmentError(ValueError):
    """The input cannot be aligned at all (empty, wrong shape or type): not a bad pair."""


@dataclass(frozen=True)
class Alignment:
    """How a reference maps onto an image, and how far to trust it.

    ``matrix`` maps reference pixel coordinates to image pixel coordinates (full resolution,
    pixel centres at integers). ``method`` is ``"identity"``, ``"ecc"`` or ``"features"``.
    ``residual_px`` is the median remaining displacement around the agreeing feature matches in
    image pixels (0 when nothing could be measured); ``overlap`` the share of the image the
    warped reference covers. ``reason`` says in words why ``ok`` is False.
    """

    ok: bool
    matrix: list[list[float]]
    method: str
    inliers: int
    matches: int
    residual_px: float
    overlap: float
    reason: str = ""

    def to_dict(self) -> dict:
        """JSON-serialisable dict (plain floats, ints and lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Alignment:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["matrix"] = [[float(v) for v in row] for row in values["matrix"]]
        return cls(**values)

    @property
    def homography(self) -> np.ndarray:
        """``matrix`` as a float64 3x3 array."""
        return np.asarray(self.matrix, np.float64)


def _gray(array: np.ndarray, name: str) -> np.ndarray:
    """uint8 grey levels of an HxW or HxWxC (RGB/RGBA) image."""
    if not isinstance(array, np.ndarray):
        raise AlignmentError(f"the {name} is not an image array")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise AlignmentError(f"the {name} has an unsupported shape {array.shape}")
    if array.shape[0] < 8 or array.shape[1] < 8:
        raise AlignmentError(
            f"the {name} is empty or too small ({array.shape[1]}x{array.shape[0]})"
        )
    if array.dtype != np.uint8:
        if array.dtype == np.uint16:
            array = (array >> 8).astype(np.uint8)
        elif np.issubdtype(array.dtype, np.floating):
            array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            raise AlignmentError(f"the {name} has an unsupported pixel type {array.dtype}")
    if array.ndim == 3:
        array = cv2.cvtColor(np.ascontiguousarray(array[:, :, :3]), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(array)


def _scale_matrix(sx: float, sy: float) -> np.ndarray:
    """Full -> resized coordinates for a resize by (sx, sy) (pixel centres at integers)."""
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)


def _resize(gray: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(resized copy, full->resized matrix) for ``size`` = (width, height)."""
    h, w = gray.shape
    if (w, h) == size:
        return gray, np.eye(3)
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return small, _scale_matrix(size[0] / w, size[1] / h)


def _working_size(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    h, w = shape
    s = min(1.0, max_side / max(h, w))
    return max(8, round(w * s)), max(8, round(h * s))


def _project(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.c_[points, np.ones(len(points))] @ h.T
    return pts[:, :2] / pts[:, 2:3]


def _corners(width: int, height: int) -> np.ndarray:
    return np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)


def _degenerate(h: np.ndarray, ref_size: tuple[int, int]) -> str:
    """Why ``h`` (reference -> image) is not a plausible view change, or ""."""
    if not np.all(np.isfinite(h)) or abs(h[2, 2]) < 1e-12:
        return "the estimated transform is degenerate"
    w, hgt = ref_size
    corners = _corners(w, hgt)
    denom = np.c_[corners, np.ones(4)] @ h[2]
    if np.any(denom <= 1e-6):
        return "the estimated transform sends part of the reference to infinity"
    if np.linalg.det(h[:2, :2] / h[2, 2]) <= 0:
        return "the estimated transform mirrors the reference"
    quad = _project(h, corners)
    # a convex quadrilateral with the same winding at every corner: no fold, no flip
    edges = np.roll(quad, -1, axis=0) - quad
    cross = (
        edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1]
        - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    )
    if not (np.all(cross > 0) or np.all(cross < 0)):
        return "the estimated transform folds the reference over itself"
    singular = np.linalg.svd(h[:2, :2] / h[2, 2], compute_uv=False)
    if singular[1] <= 0 or singular[0] / singular[1] > 4.0:
        return "the estimated transform stretches the reference more than a view change can"
    return ""


def _overlap(h: np.ndarray, ref_size: tuple[int, int], image_size: tuple[int, int]) -> float:
    """Share of the image (width, height) covered by the warped reference (convex quad)."""
    quad = _project(h, _corners(*ref_size)).astype(np.float32)
    w, hgt = image_size
    rect = _corners(w, hgt).astype(np.float32)
    area, _ = cv2.intersectConvexConvex(quad, rect)
    return float(np.clip(area / max((w - 1) * (hgt - 1), 1), 0.0, 1.0))


def _ecc_step(
    image: np.ndarray, reference: np.ndarray, warp: np.ndarray, motion: int
) -> tuple[np.ndarray, float] | None:
    """One ECC run from ``warp`` (3x3, image -> reference); None when it does not converge."""
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-5)
    if motion == cv2.MOTION_HOMOGRAPHY:
        w = warp.astype(np.float32)
    else:
        w = (warp[:2] / warp[2, 2]).astype(np.float32)
    try:
        rho, w = cv2.findTransformECC(image, reference, w, motion, criteria, None, 5)
    except cv2.error:
        return None
    out = np.vstack([w, [0, 0, 1]]) if w.shape[0] == 2 else w.astype(np.float64)
    if not np.all(np.isfinite(out)) or abs(np.linalg.det(out)) < 1e-12:
        return None
    return out.astype(np.float64), float(rho)


def _ecc(
    image: np.ndarray, reference: np.ndarray, start: np.ndarray, pyramid: bool
) -> tuple[np.ndarray, float] | None:
    """Refine ``start`` (reference -> image, working coordinates) by ECC.

    ``pyramid`` (near-identity pairs): a rigid motion (rotation + shift) from a coarse level
    down to the working level, then an affine and a homography each kept only when it cuts the
    misfit (1 - correlation) by ``MODEL_GAIN``: where an image has structure in one corner only,
    the extra freedom of a homography is unconstrained elsewhere and would swing the reference
    away from the rest of the image for a negligible gain. Without ``pyramid``: one homography
    from ``start`` (a feature homography). Returns (matrix, correlation) or None.
    """
    images, references = [image], [reference]
    if pyramid:
        while max(images[-1].shape) > 2 * ECC_COARSEST and min(images[-1].shape) > 64:
            images.append(cv2.pyrDown(images[-1]))
            references.append(cv2.pyrDown(references[-1]))
    levels = len(images)
    down = np.diag([0.5, 0.5, 1.0])
    # ECC warps its input into the template's frame: template = image, input = reference, so
    # its warp maps image -> reference; we keep the inverse (reference -> image) outside.
    warp = np.linalg.inv(start)
    if not pyramid:
        found = _ecc_step(image, reference, warp, cv2.MOTION_HOMOGRAPHY)
    else:
        for _ in range(levels - 1):
            warp = down @ warp @ np.linalg.inv(down)
        found = None
        for level in range(levels - 1, -1, -1):
            found = _ecc_step(images[level], references[level], warp, cv2.MOTION_EUCLIDEAN)
            if found is None:
                return None
            warp = found[0]
            if level:
                warp = np.linalg.inv(down) @ warp @ down
        for motion in (cv2.MOTION_AFFINE, cv2.MOTION_HOMOGRAPHY):
            richer = _ecc_step(image, reference, found[0], motion)
            if richer is not None and 1.0 - richer[1] <= (1.0 - found[1]) * (1.0 - MODEL_GAIN):
                found = richer
    if found is None:
        return None
    result = np.linalg.inv(found[0])
    return result / result[2, 2], found[1]


def _features(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    detector = cv2.ORB_create(nfeatures=MAX_KEYPOINTS, fastThreshold=10)
    keypoints, descriptors = detector.detectAndCompute(gray, None)
    if descriptors is None or len(keypoints) < 4:
        return np.zeros((0, 2), np.float32), None
    if len(keypoints) > MAX_KEYPOINTS:
        order = np.argsort([-k.response for k in keypoints])[:MAX_KEYPOINTS]
        keypoints = [keypoints[i] for i in order]
        descriptors = descriptors[order]
    return np.array([k.pt for k in keypoints], np.float32), descriptors


def _match(image: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-tested matches: (reference points, image points), working coordinates."""
    pts_i, desc_i = _features(image)
    pts_r, desc_r = _features(reference)
    if desc_i is None or desc_r is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    pairs = matcher.knnMatch(desc_r, desc_i, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    ref_pts = np.array([pts_r[m.queryIdx] for m in good], np.float32).reshape(-1, 2)
    img_pts = np.array([pts_i[m.trainIdx] for m in good], np.float32).reshape(-1, 2)
    return ref_pts, img_pts


def _agreement(h: np.ndarray, ref_pts: np.ndarray, img_pts: np.ndarray) -> np.ndarray:
    """Image points of the matches within INLIER_PX of ``h`` (working coordinates)."""
    if len(ref_pts) == 0:
        return np.zeros((0, 2), np.float32)
    errors = np.linalg.norm(_project(h, ref_pts.astype(np.float64)) - img_pts, axis=1)
    return img_pts[errors <= INLIER_PX]


def _two_dimensional(patch: np.ndarray) -> bool:
    """Whether ``patch`` has structure in two directions (a corner, a blob), so that a shift
    can be measured along both; a straight edge only fixes the shift across it."""
    gx = cv2.Sobel(patch, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(patch, cv2.CV_32F, 0, 1)
    xx, yy, xy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
    root = np.sqrt(max((xx - yy) ** 2 / 4 + xy * xy, 0.0))
    high, low = (xx + yy) / 2 + root, (xx + yy) / 2 - root
    return high > 0 and low / high >= 0.15


def _residual(image: np.ndarray, reference: np.ndarray, h: np.ndarray, points: np.ndarray) -> float:
    """Median remaining displacement (working px) around ``points`` after warping by ``h``.

    Keypoints are found at pyramid levels, a pixel or two off; so each agreeing match is
    measured again by phase correlation of a small patch of the image against the warped
    reference around it (sub-pixel), on patches with structure in two directions. A pair with
    few agreeing matches is measured on a grid of such patches too. 0 when nothing can be
    measured.
    """
    hgt, wid = image.shape
    warped = cv2.warpPerspective(reference, h, (wid, hgt), flags=cv2.INTER_LINEAR)
    half = RESIDUAL_PATCH // 2
    if len(points) < 10:
        step = RESIDUAL_PATCH
        grid = np.mgrid[half : hgt - half : step, half : wid - half : step].reshape(2, -1).T
        points = np.concatenate([points.reshape(-1, 2), grid[:, ::-1].astype(np.float32)])
    if len(points) > 300:
        points = points[np.random.default_rng(0).choice(len(points), 300, replace=False)]
    window = cv2.createHanningWindow((RESIDUAL_PATCH, RESIDUAL_PATCH), cv2.CV_32F)
    shifts = []
    for x, y in np.round(points).astype(int):
        if not (half <= x < wid - half and half <= y < hgt - half):
            continue
        a = image[y - half : y + half, x - half : x + half].astype(np.float32)
        b = warped[y - half : y + half, x - half : x + half].astype(np.float32)
        if a.std() < 8 or b.std() < 8 or not _two_dimensional(a):
            continue
        (dx, dy), _ = cv2.phaseCorrelate(a, b, window)
        shifts.append(np.hypot(dx, dy))
    # a patch with a real change in it (a defect) gives any shift at all: like a feature match,
    # a patch counts when it agrees within INLIER_PX, and the residual is their median
    agreeing = [s for s in shifts if s <= INLIER_PX]
    return float(np.median(agreeing)) if agreeing else 0.0


def align(image: np.ndarray, reference: np.ndarray, *, max_side: int = 1600) -> Alignment:
    """Align ``reference`` onto ``image`` (uint8 HxW or HxWx3 RGB, full resolution).

    Works on copies whose longer side is at most ``max_side``; the returned matrix is for the
    full-resolution images. Returns ``ok=False`` with a reason for a pair that cannot be
    trusted; raises :class:`AlignmentError` only for unusable arrays.
    """
    img_full, ref_full = _gray(image, "image"), _gray(reference, "reference")
    (ih, iw), (rh, rw) = img_full.shape, ref_full.shape
    img, to_img = _resize(img_full, _working_size((ih, iw), max_side))
    ref, to_ref = _resize(ref_full, _working_size((rh, rw), max_side))
    from_img = np.linalg.inv(to_img)
    px = float(np.sqrt(abs(np.linalg.det(from_img[:2, :2]))))  # image px per working px

    def full(h_work: np.ndarray) -> np.ndarray:
        m = from_img @ h_work @ to_ref
        return m / m[2, 2]

    def refuse(
        reason: str,
        h_work: np.ndarray | None = None,
        inliers: int = 0,
        matches: int = 0,
        method: str = "features",
        residual: float = 0.0,
    ) -> Alignment:
        h = full(h_work) if h_work is not None else np.eye(3)
        overlap = _overlap(h, (rw, rh), (iw, ih)) if not _degenerate(h, (rw, rh)) else 0.0
        return Alignment(
            ok=False,
            matrix=h.tolist(),
            method=method if h_work is not None else "identity",
            inliers=int(inliers),
            matches=int(matches),
            residual_px=float(residual * px),
            overlap=overlap,
            reason=reason,
        )

    for name, gray in (("reference", ref), ("image", img)):
        if float(gray.std()) < BLANK_STD:
            return refuse(
                f"the {name} is blank (a single grey level): there is nothing to align on"
            )

    ref_pts, img_pts = _match(img, ref)
    matches = len(ref_pts)
    ref_size = (ref.shape[1], ref.shape[0])

    def accept(h_work: np.ndarray, method: str, agreeing: np.ndarray) -> Alignment:
        """The alignment by ``h_work``, refused when it fails a check."""
        h = full(h_work)
        figures = {"inliers": len(agreeing), "matches": matches, "method": method}
        why = _degenerate(h, (rw, rh))
        if why:
            return refuse(why + "; the images may not show the same part", h_work, **figures)
        overlap = _overlap(h, (rw, rh), (iw, ih))
        if overlap < MIN_OVERLAP:
            return refuse(
                f"the reference covers only {overlap:.0%} of the image (need {MIN_OVERLAP:.0%}); "
                "it may show another part or another area",
                h_work,
                **figures,
            )
        residual = _residual(img, ref, h_work, agreeing)
        if residual > MAX_RESIDUAL_PX:
            return refuse(
                f"after alignment the images still disagree by {residual * px:.1f} px (median; "
                f"at most {MAX_RESIDUAL_PX * px:.1f} allowed); the part may be bent or the views "
                "too different",
                h_work,
                residual=residual,
                **figures,
            )
        if method == "ecc" and (rw, rh) == (iw, ih):
            moved = np.abs(_project(h, _corners(rw, rh)) - _corners(rw, rh)).max()
            if moved < IDENTITY_PX:
                h, method, overlap = np.eye(3), "identity", 1.0
        return Alignment(
            ok=True,
            matrix=h.tolist(),
            method=method,
            inliers=len(agreeing),
            matches=matches,
            residual_px=float(residual * px),
            overlap=float(overlap),
        )

    # candidates: (correlation of the aligned pair, matrix, method, agreeing matches)
    candidates: list[tuple[float, np.ndarray, str, np.ndarray]] = []

    # 1. near-identity: same aspect ratio, ECC from the identity on a pyramid
    if abs(iw / ih - rw / rh) < 0.01 * (iw / ih):
        ref_same, to_same = _resize(ref, (img.shape[1], img.shape[0]))
        found = _ecc(img, ref_same, np.eye(3), pyramid=True)
        if found is not None and found[1] >= ECC_MIN_CORRELATION:
            h_work = found[0] @ to_same
            h_work /= h_work[2, 2]
            agreeing = _agreement(h_work, ref_pts, img_pts)
            if len(agreeing) >= MIN_INLIERS or len(agreeing) >= 0.5 * matches:
                result = accept(h_work, "ecc", agreeing)
                if result.ok:
                    return result
            # the features do not confirm ECC: ask them too; the better correlation wins
            candidates.append((_correlation(img, ref, h_work), h_work, "ecc", agreeing))

    # 2. features + RANSAC, refined by ECC
    best: tuple[np.ndarray, np.ndarray] | None = None
    if matches >= 4:
        h_feat, _ = cv2.findHomography(ref_pts, img_pts, cv2.USAC_MAGSAC, INLIER_PX)
        if h_feat is not None and abs(h_feat[2, 2]) > 1e-12:
            h_feat = h_feat / h_feat[2, 2]
            best = (h_feat, _agreement(h_feat, ref_pts, img_pts))
    if best is not None and len(best[1]) >= MIN_INLIERS:
        h_feat, agreeing = best
        if not _degenerate(h_feat, ref_size):
            rho = _correlation(img, ref, h_feat)
            refined = _ecc(img, ref, h_feat, pyramid=False)
            if refined is not None:
                r_agreeing = _agreement(refined[0], ref_pts, img_pts)
                r_rho = _correlation(img, ref, refined[0])
                if r_rho > rho and len(r_agreeing) >= 0.9 * len(agreeing):
                    h_feat, agreeing, rho = refined[0], r_agreeing, r_rho
            if rho >= MIN_CORRELATION:
                candidates.append((rho, h_feat, "features", agreeing))
            elif not candidates:
                return refuse(
                    f"{len(agreeing)} feature matches agree, but the aligned images do not look "
                    f"alike (correlation {rho:.2f}, need {MIN_CORRELATION:.2f}); they may not show "
                    "the same part",
                    h_feat,
                    len(agreeing),
                    matches,
                )
        elif not candidates:
            return accept(h_feat, "features", agreeing)  # refused: says how it degenerates

    results = [
        accept(h, method, agreeing)
        for _, h, method, agreeing in sorted(candidates, key=lambda c: -c[0])
    ]
    for result in results:
        if result.ok:
            return result
    if results:
        return results[0]
    inliers = len(best[1]) if best else 0
    return refuse(
        f"only {inliers} feature matches agree (need {MIN_INLIERS}); the images may not show "
        "the same part",
        best[0] if best else None,
        inliers,
        matches,
    )


def _correlation(image: np.ndarray, reference: np.ndarray, h: np.ndarray) -> float:
    """ECC's criterion for ``h`` (reference -> image): correlation inside the warped reference."""
    warped = cv2.warpPerspective(reference, h, (image.shape[1], image.shape[0]))
    valid = cv2.warpPerspective(np.ones_like(reference), h, (image.shape[1], image.shape[0])) > 0
    return float(cv2.computeECC(image, warped, valid.astype(np.uint8)))


def warp_reference(
    reference: np.ndarray, alignment: Alignment, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The reference in the image's frame, and where it is valid.

    ``size`` is the image's ``(height, width)``. Returns (warped reference: same dtype and
    channels as ``reference``; valid: bool HxW, False where the reference does not reach and on
    the one-pixel rim that interpolation mixes with the border).
    """
    height, width = size
    h = alignment.homography
    rh, rw = reference.shape[:2]
    if np.allclose(h, np.eye(3), atol=1e-9) and (rh, rw) == (height, width):
        return reference.copy(), np.ones((height, width), bool)
    warped = cv2.warpPerspective(
        reference, h, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    inside = cv2.warpPerspective(
        np.full((rh, rw), 255, np.uint8),
        h,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    valid = inside == 255
    return warped, valid


def difference_image(image: np.ndarray, warped: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 HxW absolute grey-level difference for display.

    The warped reference's brightness is matched to the image's (mean and standard deviation
    inside ``valid``), both are blurred lightly (JPEG noise, a fraction of a pixel of residual
    misalignment), and the difference is 0 outside ``valid``.
    """
    a = _gray(image, "image").astype(np.float32)
    b = _gray(warped, "reference").astype(np.float32)
    if a.shape != b.shape or valid.shape != a.shape:
        raise AlignmentError(
            f"image {a.shape}, warped reference {b.shape} and mask {valid.shape} differ in size"
        )
    b = match_brightness(a, b, valid)
    diff = np.abs(cv2.GaussianBlur(a, (0, 0), 1.0) - cv2.GaussianBlur(b, (0, 0), 1.0))
    diff[~valid] = 0
    return np.clip(diff + 0.5, 0, 255).astype(np.uint8)


def match_brightness(image: np.ndarray, warped: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``warped`` (float, HxW or HxWxC) scaled so its mean/std inside ``valid`` are the image's,
    per channel."""
    out = warped.astype(np.float32).copy()
    if not valid.any():
        return out
    a = image.reshape(image.shape[0], image.shape[1], -1)
    b = out.reshape(out.shape[0], out.shape[1], -1)
    for c in range(b.shape[2]):
        ai, bi = a[:, :, c][valid], b[:, :, c][valid]
        sa, sb = float(ai.std()), float(bi.std())
        gain = sa / sb if sb > 1e-6 else 1.0
        b[:, :, c] = (b[:, :, c] - float(bi.mean())) * gain + float(ai.mean())
    return b.reshape(out.shape)
