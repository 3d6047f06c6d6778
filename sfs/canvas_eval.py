"""Judging a canvas against its spec: the GenEval idea (Ghosh et al. 2023) with our own parts.

Book ch. 10, sec. "Judging a canvas". A text-to-image model is right when every clause of its
prompt holds in the picture. GenEval checks that with an object detector; our canvases are simple
enough for parts we build and ship ourselves, all offline:

1. find the objects: pixels whose brightest channel exceeds ``FOREGROUND`` (0.2 in [0, 1]),
   grown by one pixel and split into connected components (``find_objects``); components under
   ``MIN_AREA`` pixels are noise;
2. classify each crop with the shipped canvas-object classifier (``load_object_classifier``), a
   ``sfs.classifier.Classifier`` for the 15 canvas classes trained on crops made by
   ``object_crops`` (the same normalisation at training and at judging time);
3. read each object's colour: the intensity-weighted mean RGB of its pixels, divided by its
   largest channel, and the nearest palette colour;
4. its size: the longer side of its box against ``SIZE_THRESHOLD`` (digits and items differ,
   since a digit fills about 20 of its 28 pixels and an item all 28);
5. positions: GenEval's relative-position rule on the box centres (``sfs.canvas.relation_holds``,
   the rule the generator places by), and the centre's half of the canvas for regions.

``judge`` matches the spec's objects to the detections (the assignment that agrees best) and
reports, per canvas, the clauses object / colour / count / position / size and the whole prompt;
``score`` averages them. Calibration (ch. 10): the generator's own canvases score >= 98 %,
deliberately wrong specs (swapped colours, mirrored relations, wrong class) near 0 %.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from sfs.canvas import (COLOUR_RGB, NUM_CLASSES, RELATIONS, REGIONS, Canvases,
                        relation_holds)

FOREGROUND = 0.2  # brightest channel in [0, 1] above which a pixel is an object's
MIN_AREA = 6  # components of fewer pixels are noise
SIZE_THRESHOLD = {"digit": 13, "item": 18}  # longer box side (px) from which an object is "large"
CLASSIFIER_NAME = "canvas-object-classifier"
CROP = 28  # side of the classifier's input; the object is scaled to fit CROP - 8 pixels


def _check_images(images: torch.Tensor) -> None:
    if not torch.is_tensor(images) or not images.is_floating_point():
        raise TypeError("images must be a floating-point tensor (N, 3, H, W) in [-1, 1]")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images must be finite (no NaN or inf)")


def find_objects(images: torch.Tensor) -> list[list[dict]]:
    """Connected components of the foreground: images (N, 3, H, W) in [-1, 1] -> per image a list
    of objects {"box": (x0, y0, x1, y1) exclusive ends, "area": pixels, "mask": (H, W) bool}.

    Label propagation: every foreground pixel starts with its own label and takes the largest
    label of its 3x3 neighbourhood (within the grown foreground) until nothing changes.
    """
    _check_images(images)
    v = ((images.float() + 1) / 2).clamp(0, 1)
    on = v.amax(1) > FOREGROUND  # (N, H, W)
    grown = F.max_pool2d(on[:, None].float(), 3, 1, 1)[:, 0] > 0  # one pixel of dilation
    N, H, W = on.shape
    labels = torch.arange(1, H * W + 1, dtype=torch.float32).view(1, H, W).expand(N, H, W) * grown
    for _ in range(H * W):
        new = F.max_pool2d(labels[:, None], 3, 1, 1)[:, 0] * grown
        if torch.equal(new, labels):
            break
        labels = new
    result = []
    for n in range(N):
        masks = [(labels[n] == lab) & on[n] for lab in labels[n].unique() if lab != 0]
        masks = _merge_overlapping(masks)  # a bag's handle inside the bag's box is the bag
        objs = []
        for mask in masks:
            area = int(mask.sum())
            if area >= MIN_AREA:
                objs.append({"box": _box(mask), "area": area, "mask": mask})
        result.append(objs)
    return result


def _box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = mask.nonzero(as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _merge_overlapping(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Join components whose boxes intersect (the generator keeps objects' boxes GAP apart)."""
    masks = [m for m in masks if m.any()]
    merged = True
    while merged:
        merged = False
        for a, b in itertools.combinations(range(len(masks)), 2):
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = _box(masks[a]), _box(masks[b])
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                masks[a] = masks[a] | masks.pop(b)
                merged = True
                break
    return masks


def object_crops(image: torch.Tensor, objects: list[dict]) -> torch.Tensor:
    """The classifier's input for each object: the intensity (brightest channel) inside its box
    grown by one pixel, scaled so that the longer side is CROP - 8 and centred on a black
    CROP x CROP square.

    image (3, H, W) in [-1, 1] -> (K, 1, CROP, CROP) in [-1, 1].
    """
    v = ((image.float() + 1) / 2).clamp(0, 1).amax(0)  # (H, W)
    H, W = v.shape
    crops = []
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]  # one pixel more on each side keeps the faint, antialiased edge
        x0, y0, x1, y1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, W), min(y1 + 1, H)
        patch = v[y0:y1, x0:x1]  # other objects are at least GAP pixels away from the box
        h, w = patch.shape
        side = CROP - 8
        s = side / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        small = F.interpolate(patch[None, None], size=(nh, nw), mode="bilinear", antialias=True,
                              align_corners=False)[0, 0]
        out = torch.zeros(CROP, CROP)
        top, left = (CROP - nh) // 2, (CROP - nw) // 2
        out[top:top + nh, left:left + nw] = small.clamp(0, 1)
        crops.append(out)
    if not crops:
        return torch.zeros(0, 1, CROP, CROP)
    return torch.stack(crops)[:, None] * 2 - 1


def object_colour(image: torch.Tensor, obj: dict) -> int:
    """Index into COLOURS of the palette colour nearest to the object's intensity-weighted mean
    RGB, normalised by its largest channel. image (3, H, W) in [-1, 1]."""
    v = ((image.float() + 1) / 2).clamp(0, 1)
    px = v[:, obj["mask"]]  # (3, area)
    weight = px.amax(0)
    rgb = (px * weight).sum(1) / weight.sum().clamp_min(1e-8)
    rgb = rgb / rgb.max().clamp_min(1e-8)
    return int(((COLOUR_RGB - rgb) ** 2).sum(1).argmin())


def object_size(box: tuple, cls: int) -> int:
    """0 (small) or 1 (large) from the longer side of the box and the class's group."""
    side = max(box[2] - box[0], box[3] - box[1])
    return int(side >= SIZE_THRESHOLD["digit" if cls < 10 else "item"])


def region_holds(box: tuple, region: str, size: int) -> bool:
    """Whether the box's centre lies in the named half of a size x size canvas."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return {"left": cx < size / 2, "right": cx > size / 2, "top": cy < size / 2,
            "bottom": cy > size / 2}[region]


def load_object_classifier(name: str = CLASSIFIER_NAME, device: str | torch.device = "cpu"):
    """The shipped canvas-object classifier (15 classes, ``sfs.checkpoints.load_model``)."""
    from sfs.checkpoints import load_model
    return load_model(name, device=device, kind="classifier")


def judge(images: torch.Tensor, canvases: Canvases, classifier: nn.Module) -> dict[str, torch.Tensor]:
    """Judge each image against the spec of the same index in ``canvases``.

    images (N, 3, H, W) in [-1, 1]. Returns per-canvas bool tensors (N,) for the clauses
    "object", "colour", "count", "position", "size" and "prompt" (all clauses), and masks
    "has_position", "has_size" of the canvases whose caption states one (the others count as
    right for that clause). Book ch. 10, sec. "Judging a canvas".
    """
    _check_images(images)
    if len(images) != len(canvases):
        raise ValueError(f"images holds {len(images)} images but canvases {len(canvases)} specs")
    detections = find_objects(images)
    crops = [object_crops(img, objs) for img, objs in zip(images, detections)]
    flat = torch.cat(crops) if crops else torch.zeros(0, 1, CROP, CROP)
    with torch.no_grad():
        preds = classifier(flat).argmax(1).tolist() if len(flat) else []
    N, W = len(images), images.shape[-1]
    out = {k: torch.zeros(N, dtype=torch.bool) for k in
           ("object", "colour", "count", "position", "size", "prompt", "has_position", "has_size")}
    k = 0
    for n in range(N):
        objs = detections[n]
        for obj in objs:
            obj["class"] = preds[k]
            obj["colour"] = object_colour(images[n], obj)
            obj["size"] = object_size(obj["box"], obj["class"])
            k += 1
        m = int(canvases.count[n])
        want = [(int(canvases.classes[n, j]), int(canvases.colours[n, j]), int(canvases.sizes[n, j]))
                for j in range(m)]
        rel, reg = int(canvases.relation[n]), int(canvases.region[n])
        states_size = bool(canvases.states_size[n])
        best = None  # the assignment of detections to the spec's objects that agrees best
        for pick in itertools.permutations(range(len(objs)), min(m, len(objs))):
            got = [objs[p] for p in pick]
            cls_ok = len(got) == m and all(g["class"] == w[0] for g, w in zip(got, want))
            col_ok = len(got) == m and all(g["colour"] == w[1] for g, w in zip(got, want))
            size_ok = len(got) == m and all(g["size"] == w[2] for g, w in zip(got, want))
            pos_ok = len(got) == m
            if pos_ok and rel >= 0:
                pos_ok = relation_holds(got[0]["box"], got[1]["box"], RELATIONS[rel])
            elif pos_ok and reg >= 0:
                pos_ok = region_holds(got[0]["box"], REGIONS[reg], W)
            rank = (2 * cls_ok + col_ok + pos_ok + size_ok, cls_ok, col_ok)
            if best is None or rank > best[0]:
                best = (rank, cls_ok, col_ok, pos_ok, size_ok)
        _, cls_ok, col_ok, pos_ok, size_ok = best or ((0,), False, False, False, False)
        out["object"][n], out["colour"][n] = cls_ok, col_ok
        out["count"][n] = len(objs) == m
        out["has_position"][n], out["has_size"][n] = rel >= 0 or reg >= 0, states_size
        out["position"][n] = pos_ok if (rel >= 0 or reg >= 0) else True
        out["size"][n] = size_ok if states_size else True
        out["prompt"][n] = cls_ok and col_ok and out["count"][n] and out["position"][n] and out["size"][n]
    return out


def score(judged: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracies from ``judge``'s output: the fraction of canvases right on each clause (position
    and size over the canvases whose caption states them) and on the whole prompt."""
    res = {}
    for clause in ("object", "colour", "count", "position", "size", "prompt"):
        keep = judged.get(f"has_{clause}", torch.ones_like(judged[clause]))
        res[clause] = float(judged[clause][keep].float().mean()) if keep.any() else float("nan")
    res["n"] = int(len(judged["prompt"]))
    return res


def entropy_bits(values) -> float:
    """Shannon entropy in bits of the empirical distribution of ``values`` (ints >= 0).

    Book eq. (12.8): H = - sum_j p_j log2 p_j over the values j that occur; 0 for one value,
    log2(K) for K values equally often. NaN for no values.
    """
    values = torch.as_tensor(list(values), dtype=torch.long)
    if values.numel() == 0:
        return float("nan")
    if values.min() < 0:
        raise ValueError("values must be ints >= 0")
    p = torch.bincount(values).double() / values.numel()
    p = p[p > 0]
    return float(-(p * p.log2()).sum()) + 0.0  # + 0.0: one value gives 0.0, not -0.0


POSITION_CELLS = 3  # the position grid of ``open_diversity``: 3 x 3 cells


def open_diversity(images: torch.Tensor, canvases: Canvases) -> dict[str, float]:
    """How varied the images are where their captions leave a choice open, in bits (eq. (12.8)).

    Over the images with one object in the spec and exactly one detected: the entropy of the
    object's centre cell on a 3 x 3 grid, for captions that name no region, and of its size
    (small or large), for captions that name no size. A model that always draws the object in the
    middle scores 0 bits of position; real canvases score what their generator's placement gives.
    images (N, 3, H, W) in [-1, 1]. Returns position_entropy, size_entropy, n_position, n_size.
    """
    _check_images(images)
    W, k = images.shape[-1], POSITION_CELLS
    cells, sizes = [], []
    for n, objs in enumerate(find_objects(images)):
        if int(canvases.count[n]) != 1 or len(objs) != 1:
            continue
        x0, y0, x1, y1 = objs[0]["box"]
        if int(canvases.region[n]) < 0:
            cx, cy = (min(k - 1, int((a + b) / 2 / W * k)) for a, b in ((x0, x1), (y0, y1)))
            cells.append(cy * k + cx)
        if not bool(canvases.states_size[n]):
            sizes.append(object_size(objs[0]["box"], int(canvases.classes[n, 0])))
    return {"position_entropy": entropy_bits(cells), "size_entropy": entropy_bits(sizes),
            "n_position": len(cells), "n_size": len(sizes)}


def make_crop_dataset(canvases: Canvases) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops and labels for training the object classifier: single-object canvases, each found
    by ``find_objects`` exactly as at judging time. (N', 1, CROP, CROP) in [-1, 1], (N',) int64;
    canvases whose detection is not exactly one object are skipped."""
    single = canvases.subset(canvases.count == 1)
    images = single.images_float()
    xs, ys = [], []
    for i in range(0, len(images), 1000):
        chunk = images[i:i + 1000]
        for j, objs in enumerate(find_objects(chunk)):
            if len(objs) == 1:
                xs.append(object_crops(chunk[j], objs))
                ys.append(int(single.classes[i + j, 0]))
    return torch.cat(xs), torch.tensor(ys, dtype=torch.long)


def wrong_specs(canvases: Canvases, mistake: str) -> Canvases:
    """A copy of ``canvases`` whose specs are deliberately wrong, for calibrating ``judge``:
    "colours" swaps the two objects' colours (two-object scenes of two colours only), "mirror"
    inverts the relation or region (left <-> right, above <-> below), "class" changes object 0's
    class to the next one. Canvases the mistake cannot apply to are left out."""
    c = canvases.subset(slice(None))
    if mistake == "colours":
        keep = (c.count == 2) & (c.colours[:, 0] != c.colours[:, 1])
        c = c.subset(keep)
        c.colours = c.colours.flip(1)
    elif mistake == "mirror":
        keep = (c.relation >= 0) | (c.region >= 0)
        c = c.subset(keep)
        inv_rel = torch.tensor([RELATIONS.index(r) for r in ("right of", "left of", "below", "above")])
        inv_reg = torch.tensor([REGIONS.index(r) for r in ("right", "left", "bottom", "top")])
        c.relation = torch.where(c.relation >= 0, inv_rel[c.relation.clamp_min(0)], c.relation)
        c.region = torch.where(c.region >= 0, inv_reg[c.region.clamp_min(0)], c.region)
    elif mistake == "class":
        c.classes = c.classes.clone()
        c.classes[:, 0] = (c.classes[:, 0] + 1) % NUM_CLASSES
        two_same = c.count == 2
        c.classes[two_same & (c.kind == 2), 1] = c.classes[two_same & (c.kind == 2), 0]
    else:
        raise ValueError(f"mistake must be 'colours', 'mirror' or 'class', got {mistake!r}")
    return c



