"""Built-in synthetic faces: procedural, deterministic by seed, any resolution.

Identities (face shape, feature spacing, skin tone, hair), the 7 basic expressions drawn
through brows, eyes and mouth with a random intensity, head pose (yaw/pitch bins, also the
pose label), roll, occlusions (glasses, a mask, random patches), lighting, blur and noise.
Every per-image quantity is drawn up front as arrays (vectorised); the loop only issues the
cv2 drawing calls (sub-pixel, anti-aliased), and lighting and noise are applied per chunk.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np

from .dataset import BASIC_CLASSES
from .errors import OutputExistsError, UserError, UserPathError

POSE_CLASSES: tuple[str, ...] = ("frontal", "left", "right", "up", "down")
# yaw / pitch ranges of each pose bin, degrees (positive yaw: the face turns to its left,
# i.e. towards the image's right; positive pitch: down)
_POSE_YAW = {"frontal": (-7, 7), "left": (-38, -18), "right": (18, 38), "up": (-7, 7), "down": (-7, 7)}
_POSE_PITCH = {"frontal": (-6, 6), "left": (-6, 6), "right": (-6, 6), "up": (-32, -16), "down": (16, 32)}

# Expression -> deltas at full intensity (neutral is all zero):
# brow raise, brow tilt (+: inner ends up), eye opening, mouth curve (+: corners up),
# mouth opening, mouth width, upper-lip asymmetry, nose wrinkle
_FIELDS = ("brow_raise", "brow_tilt", "eye_open", "curve", "open", "width", "asym", "wrinkle")
_EXPR = {
    "angry":    (-0.9, -1.0, -0.35, -0.25, 0.00, -0.15, 0.0, 0.3),
    "disgust":  (-0.4, -0.3, -0.30, -0.45, 0.10, -0.05, 1.0, 1.0),
    "fear":     (0.7, 0.8, 0.45, -0.35, 0.45, 0.25, 0.0, 0.0),
    "happy":    (0.1, 0.0, -0.30, 1.00, 0.25, 0.25, 0.0, 0.0),
    "sad":      (0.1, 1.0, -0.25, -0.80, 0.00, -0.10, 0.0, 0.0),
    "surprise": (1.0, 0.0, 0.60, 0.00, 1.00, -0.30, 0.0, 0.0),
    "neutral":  (0.0, 0.0, 0.00, 0.00, 0.00, 0.00, 0.0, 0.0),
}
_DELTAS = np.array([_EXPR[c] for c in BASIC_CLASSES], dtype=np.float64)  # (7, 8)

_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 128], [198, 134, 96],
                  [160, 100, 66], [120, 76, 46], [88, 56, 36]], dtype=np.float64)
_HAIR = np.array([[20, 16, 12], [60, 40, 25], [110, 75, 40], [190, 150, 90], [140, 60, 30],
                  [160, 160, 160], [40, 40, 40]], dtype=np.float64)
_SHIFT = 4          # cv2 drawing with 1/16 pixel precision
_ONE = 1 << _SHIFT


@dataclass
class SynthBatch:
    images: np.ndarray     # N x S x S x 3 uint8 RGB
    labels: np.ndarray     # N int64, index into BASIC_CLASSES
    poses: np.ndarray      # N int64, index into POSE_CLASSES
    subjects: np.ndarray   # N int64 identity ids
    classes: tuple = BASIC_CLASSES
    pose_classes: tuple = POSE_CLASSES


def default_num_subjects(n: int) -> int:
    return int(max(10, min(200, n // 50)))


def _u(rng, lo, hi, n):
    return rng.uniform(lo, hi, n)


def _fix(a: np.ndarray) -> np.ndarray:
    return np.round(a * _ONE).astype(np.int32)


def generate(n: int, size: int = 64, seed: int = 0, num_subjects: Optional[int] = None, *,
             occlusion: float = 0.45, noise: float = 1.0, chunk: int = 256) -> SynthBatch:
    """`n` faces of `size` x `size`; labels and poses balanced; image i of subject i//7 % subjects."""
    if n < 1 or size < 8:
        raise UserError(f"synthetic faces: n={n}, size={size}; expected n >= 1 and size >= 8")
    ns = int(num_subjects or default_num_subjects(n))
    if ns < 1:
        raise UserError(f"synthetic faces: num_subjects={num_subjects}; expected >= 1")
    rng = np.random.default_rng(seed)
    S = float(size)

    # --- identities ------------------------------------------------------------------
    idr = np.random.default_rng([seed, 7919])
    id_face_w = _u(idr, 0.27, 0.35, ns)
    id_face_h = id_face_w * _u(idr, 1.12, 1.38, ns)
    id_eye_dx = _u(idr, 0.32, 0.44, ns)          # in face half-widths
    id_eye_y = _u(idr, -0.22, -0.08, ns)         # in face half-heights
    id_eye_w = _u(idr, 0.15, 0.21, ns)
    id_eye_h = id_eye_w * _u(idr, 0.45, 0.65, ns)
    id_brow_gap = _u(idr, 0.13, 0.20, ns)
    id_mouth_y = _u(idr, 0.42, 0.56, ns)
    id_mouth_w = _u(idr, 0.30, 0.42, ns)
    id_nose = _u(idr, 0.20, 0.32, ns)
    tone = idr.uniform(0, len(_SKIN) - 1, ns)
    lo = np.floor(tone).astype(int)
    id_skin = _SKIN[lo] + (tone - lo)[:, None] * (_SKIN[np.minimum(lo + 1, len(_SKIN) - 1)] - _SKIN[lo])
    id_hair = _HAIR[idr.integers(0, len(_HAIR), ns)]
    id_hair_style = idr.integers(0, 3, ns)
    id_iris = _HAIR[idr.integers(0, 3, ns)] + idr.uniform(0, 40, (ns, 1))

    # --- per image -------------------------------------------------------------------
    i = np.arange(n)
    labels = (i % 7).astype(np.int64)
    subjects = ((i // 7) % ns).astype(np.int64)
    poses = rng.permutation(i % len(POSE_CLASSES)).astype(np.int64)
    pose_names = np.array(POSE_CLASSES)[poses]
    yaw_lo = np.array([_POSE_YAW[p][0] for p in pose_names]); yaw_hi = np.array([_POSE_YAW[p][1] for p in pose_names])
    pit_lo = np.array([_POSE_PITCH[p][0] for p in pose_names]); pit_hi = np.array([_POSE_PITCH[p][1] for p in pose_names])
    yaw = np.radians(rng.uniform(yaw_lo, yaw_hi))
    pitch = np.radians(rng.uniform(pit_lo, pit_hi))
    roll = rng.uniform(-12, 12, n)
    inten = rng.uniform(0.45, 1.0, n)
    expr = _DELTAS[labels] * inten[:, None] + rng.normal(0, 0.08, (n, len(_FIELDS)))
    brow_raise, brow_tilt, eye_open, curve, mopen, mwidth, asym, wrinkle = expr.T
    asym = asym * rng.choice([-1.0, 1.0], n)
    mopen = np.clip(mopen, 0, None)

    s = rng.uniform(0.85, 1.12, n)                      # scale jitter
    cx = S * (0.5 + rng.uniform(-0.07, 0.07, n))
    cy = S * (0.52 + rng.uniform(-0.07, 0.07, n))
    fw = S * id_face_w[subjects] * s * (0.88 + 0.12 * np.cos(yaw))
    fh = S * id_face_h[subjects] * s * (0.9 + 0.1 * np.cos(pitch))
    sy, cyaw, sp, cp = np.sin(yaw), np.cos(yaw), np.sin(pitch), np.cos(pitch)
    rr = np.radians(roll)
    cr, sr = np.cos(rr), np.sin(rr)

    def project(u, v, depth=1.0):
        """Face-local (u, v) in half-widths/heights -> image x, y (yaw, pitch, roll, pixels)."""
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        d = depth * np.sqrt(np.clip(1.0 - 0.6 * u * u - 0.4 * v * v, 0.05, None))
        bshape = (-1,) + (1,) * (max(u.ndim, v.ndim) - 1)
        rs = lambda a: a.reshape(bshape)  # noqa: E731
        x = u * rs(cyaw) + d * rs(sy) * 0.9
        y = v * rs(cp) + d * rs(sp) * 0.9
        x, y = x * rs(fw), y * rs(fh)
        xr = x * rs(cr) - y * rs(sr)
        yr = x * rs(sr) + y * rs(cr)
        return rs(cx) + xr, rs(cy) + yr

    sub = subjects
    eye_dx, eye_y = id_eye_dx[sub], id_eye_y[sub]
    # eyes: centres (n, 2 eyes), axes
    ex, ey = project(np.stack([-eye_dx, eye_dx], 1), np.stack([eye_y, eye_y], 1))
    eye_w = fw * id_eye_w[sub] * (0.75 + 0.25 * cyaw)
    eye_h = fh * id_eye_h[sub] * np.clip(1.0 + eye_open, 0.15, 2.0)
    iris_r = np.minimum(eye_h * 0.95, eye_w * 0.55)
    gaze = eye_w * 0.35 * sy
    # brows: 3 points each, outer -> inner, (n, 2, 3)
    bu = np.stack([np.stack([-eye_dx - 0.17, -eye_dx, -eye_dx + 0.15], 1),
                   np.stack([eye_dx + 0.17, eye_dx, eye_dx - 0.15], 1)], 1)
    base = (eye_y - id_brow_gap[sub] - 0.09 * brow_raise)[:, None, None]
    tilt = np.array([0.0, -0.01, 0.0])[None, None, :] + np.array([0.0, 0.0, -0.075])[None, None, :] * brow_tilt[:, None, None]
    arch = np.array([0.0, -0.025, 0.0])[None, None, :]
    bx, by = project(bu, base + tilt + arch)
    brow_th = max(1, int(round(S / 36)))
    # nose: bridge -> tip (tip sticks out: depth 1.35)
    nx0, ny0 = project(np.zeros(n), eye_y + 0.05)
    nx1, ny1 = project(np.zeros(n), eye_y + id_nose[sub] + 0.22, depth=1.35)
    # mouth: upper and lower contour, 7 points each
    t = np.linspace(-1, 1, 7)[None, :]
    mw = id_mouth_w[sub][:, None] * np.clip(1 + mwidth, 0.5, 1.6)[:, None]
    my = id_mouth_y[sub][:, None]
    upper = my - 0.16 * curve[:, None] * t * t - 0.12 * asym[:, None] * np.clip(t, 0, None) + 0.03 * curve[:, None]
    lower = upper + (0.035 + 0.30 * mopen[:, None]) * (1 - t * t) + 0.012
    mxu, myu = project(mw * t, upper)
    mxl, myl = project(mw * t[:, ::-1], lower[:, ::-1])
    mouth = np.stack([np.concatenate([mxu, mxl], 1), np.concatenate([myu, myl], 1)], 2)  # (n, 14, 2)
    mouth_fx = _fix(mouth)
    brow_fx = _fix(np.stack([bx, by], 3))        # (n, 2, 3, 2)
    # wrinkle lines between the brows (disgust, anger)
    wx, wy = project(np.stack([-0.08 * np.ones(n), 0.08 * np.ones(n)], 1), (eye_y + 0.02)[:, None] * np.ones((1, 2)))

    # nuisance
    bg = rng.uniform(30, 230, (n, 3))
    occ = rng.random(n)
    occ_kind = np.where(occ < occlusion * 0.35, 1, np.where(occ < occlusion * 0.6, 2,
                        np.where(occ < occlusion, 3, 0)))          # 1 glasses, 2 mask, 3 patch
    glass_color = rng.uniform(0, 70, (n, 3))
    mask_color = rng.uniform(120, 255, (n, 3))
    patch_color = rng.uniform(0, 255, (n, 3))
    patch_xy = rng.uniform(0.15, 0.85, (n, 2)) * S
    patch_wh = rng.uniform(0.12, 0.28, (n, 2)) * S
    light_a = rng.uniform(0, 2 * np.pi, n)
    light_k = rng.uniform(0.0, 0.45, n)
    bright = rng.uniform(0.75, 1.2, n)
    blur = rng.random(n) < 0.3
    noise_sd = rng.uniform(0, 9, n) * noise
    skin = np.clip(id_skin[sub] * rng.uniform(0.92, 1.08, (n, 1)), 0, 255)
    lip = np.clip(skin * np.array([0.62, 0.38, 0.38]), 0, 255)
    hair = id_hair[sub]
    hs = id_hair_style[sub]

    out = np.empty((n, size, size, 3), np.uint8)
    th = max(1, int(round(S / 64)))
    gth = max(1, int(round(S / 40)))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / S - 0.5
    aa = cv2.LINE_AA if size >= 24 else cv2.LINE_8
    # every drawing argument as plain Python numbers, prepared vectorised (the loop only draws)
    L = lambda a: _fix(np.asarray(a)).tolist()  # noqa: E731
    C = lambda a: np.asarray(a, dtype=np.float64).tolist()  # noqa: E731
    half = _ONE // 2
    face_c = L(np.stack([cx, cy], 1))
    face_ax = L(np.stack([fw, fh], 1))
    hair_c = L(np.stack([cx - sr * fh * 0.12, cy - cr * fh * 0.12], 1))
    hair_ax = L(np.stack([fw * 1.12, fh * np.where(hs == 0, 1.18, 1.35)], 1))
    eye_c = L(np.stack([ex, ey], 2))
    eye_ax = np.maximum(_fix(np.stack([eye_w, eye_h], 1)), half).tolist()
    iris_c = L(np.stack([ex + gaze[:, None], ey], 2))
    iris_rr = np.maximum(_fix(iris_r), half).tolist()
    nose = L(np.stack([nx0, ny0, nx1, ny1], 1))
    wr = L(np.stack([wx[:, 0], wy[:, 0], wx[:, 1], wy[:, 1]], 1))
    glass_ax = L(np.stack([eye_w * 1.5, eye_w * 1.0], 1))
    glass_fill = (occ < occlusion * 0.17).tolist()
    mask_poly = _fix(np.stack([
        np.stack([mouth[:, 0, 0] - fw * 0.25, ny1 - fh * 0.05], 1),
        np.stack([mouth[:, 6, 0] + fw * 0.25, ny1 - fh * 0.05], 1),
        np.stack([mouth[:, 6, 0] + fw * 0.1, cy + fh * 0.95], 1),
        np.stack([mouth[:, 0, 0] - fw * 0.1, cy + fh * 0.95], 1)], 1))
    p0 = (patch_xy - patch_wh / 2).astype(int).tolist()
    p1 = (patch_xy + patch_wh / 2).astype(int).tolist()
    col_bg = bg.astype(np.uint8)
    col_skin, col_hair, col_brow = C(skin), C(hair), C(hair * 0.8)
    col_nose, col_wr = C(skin * 0.6), C(skin * 0.55)
    col_lip = C(lip * np.where(mopen > 0.2, 0.45, 1.0)[:, None])
    col_lipline = C(lip * 0.7)
    col_iris = C(id_iris[sub])
    col_glass, col_mask, col_patch = C(glass_color), C(mask_color), C(patch_color)
    angs = roll.tolist()
    has_hair = (hs != 2).tolist()
    eyes_open = (eye_h > 0.0096 * S).tolist()
    wrinkled = (wrinkle > 0.35).tolist()
    kinds = occ_kind.tolist()
    blurs = blur.tolist()
    white, dark = (245, 245, 245), (30, 20, 20)
    ellipse, circle, polylines, line, fill = cv2.ellipse, cv2.circle, cv2.polylines, cv2.line, cv2.fillPoly
    for lo_i in range(0, n, chunk):
        hi_i = min(n, lo_i + chunk)
        out[lo_i:hi_i] = col_bg[lo_i:hi_i, None, None, :]
        for k in range(lo_i, hi_i):
            img = out[k]
            ang = angs[k]
            if has_hair[k]:     # hair behind the face (style 2: none)
                ellipse(img, hair_c[k], hair_ax[k], ang, 0, 360, col_hair[k], -1, aa, _SHIFT)
            ellipse(img, face_c[k], face_ax[k], ang, 0, 360, col_skin[k], -1, aa, _SHIFT)
            for e in (0, 1):
                ellipse(img, eye_c[k][e], eye_ax[k], ang, 0, 360, white, -1, aa, _SHIFT)
                if eyes_open[k]:
                    circle(img, iris_c[k][e], iris_rr[k], col_iris[k], -1, aa, _SHIFT)
                ellipse(img, eye_c[k][e], eye_ax[k], ang, 0, 360, dark, th, aa, _SHIFT)
            polylines(img, [brow_fx[k, 0], brow_fx[k, 1]], False, col_brow[k], brow_th, aa, _SHIFT)
            nk = nose[k]
            line(img, (nk[0], nk[1]), (nk[2], nk[3]), col_nose[k], th, aa, _SHIFT)
            if wrinkled[k]:
                w = wr[k]
                line(img, (w[0], w[1]), (w[2], w[3]), col_wr[k], th, aa, _SHIFT)
            fill(img, [mouth_fx[k]], col_lip[k], aa, _SHIFT)
            polylines(img, [mouth_fx[k]], True, col_lipline[k], th, aa, _SHIFT)
            kind = kinds[k]
            if kind == 1:       # glasses (some dark sunglasses)
                for e in (0, 1):
                    ellipse(img, eye_c[k][e], glass_ax[k], ang, 0, 360, col_glass[k],
                            -1 if glass_fill[k] else gth, aa, _SHIFT)
                line(img, eye_c[k][0], eye_c[k][1], col_glass[k], gth, aa, _SHIFT)
            elif kind == 2:     # mask over nose tip, mouth and chin
                fill(img, [mask_poly[k]], col_mask[k], aa, _SHIFT)
            elif kind == 3:     # random patch
                cv2.rectangle(img, p0[k], p1[k], col_patch[k], -1)
            if blurs[k]:
                cv2.GaussianBlur(img, (3, 3), 0, dst=img)
        # lighting (directional gradient, brightness) and sensor noise, per chunk, vectorised
        sl = slice(lo_i, hi_i)
        m = hi_i - lo_i
        gain = (bright[sl, None, None] * (1.0 + light_k[sl, None, None] *
                (np.cos(light_a[sl])[:, None, None] * xx + np.sin(light_a[sl])[:, None, None] * yy) * 2.0))
        block = out[sl].astype(np.float32)
        block *= gain[..., None].astype(np.float32)
        block += rng.standard_normal((m, size, size, 1), dtype=np.float32) * noise_sd[sl, None, None, None].astype(np.float32)
        np.clip(block, 0, 255, out=block)
        out[sl] = block.astype(np.uint8)
    return SynthBatch(images=out, labels=labels, poses=poses, subjects=subjects)


def write_imagefolder(out_dir: Union[str, Path], n: int, size: int = 64, seed: int = 0,
                      num_subjects: Optional[int] = None, val_fraction: float = 0.1,
                      test_fraction: float = 0.2) -> Path:
    """Write `n` faces as OUT/<class>/<id>.png plus OUT/manifest.csv (path,label,pose,subject,split;
    the split subject-independent). Returns the manifest path."""
    from .imageio import parallel_map
    from .splits import make_splits

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"output folder {out} exists and is not empty")
    batch = generate(n, size=size, seed=seed, num_subjects=num_subjects)
    subj = np.array([f"s{int(s):04d}" for s in batch.subjects], dtype=object)
    splits = make_splits(batch.labels, subjects=subj, seed=seed, val_fraction=val_fraction,
                         test_fraction=test_fraction, source=str(out))
    for c in BASIC_CLASSES:
        (out / c).mkdir(parents=True, exist_ok=True)
    rels = [f"{BASIC_CLASSES[int(y)]}/{subj[k]}_{k:06d}.png" for k, y in enumerate(batch.labels)]

    def save(k: int) -> None:
        ok = cv2.imwrite(str(out / rels[k]), cv2.cvtColor(batch.images[k], cv2.COLOR_RGB2BGR))
        if not ok:
            raise UserPathError(f"cannot write {out / rels[k]}")

    parallel_map(save, list(range(n)))
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "pose", "subject", "split"])
        for k in range(n):
            w.writerow([rels[k], BASIC_CLASSES[int(batch.labels[k])], POSE_CLASSES[int(batch.poses[k])],
                        subj[k], splits[k]])
    return manifest
