"""Captioned canvases: the data set of the book's tiny Stable Diffusion.

Book ch. 10, sec. "Captioned canvases". A canvas is an RGB image (3, 48, 48) in [-1, 1], black
background, holding one or two objects: MNIST digits or Fashion-MNIST items, resized to one of two
sizes, coloured from a palette of 8 named colours and placed by a region ("at the top") or by a
relation to the other object ("left of"). Every canvas has a caption in plain English, drawn from
several templates with synonyms and word orders, and its structured spec (class, colour, size and
box of each object, the relation or region), so that evaluation (``sfs.canvas_eval``) never parses
English:

    "a red 3 left of a blue 7"  ==  "a blue seven to the right of a red three"   (one scene)

Scenes are of three kinds: one object (optionally in a region), two objects in a relation, and a
count ("two green sneakers": two copies of one class and colour). Canvas ``i`` of a set is a
function of (seed, i) alone.

Held-out combinations (for measuring compositional generalisation, ch. 12): a fixed set of
(class, colour) pairs, one per class (``HELD_OUT_COLOUR``), and of (first class, second class,
axis) triples of two-object scenes (``is_held_out_triple``), where "first" is the left object of a
horizontal pair and the upper object of a vertical one ("a 3 left of a 7" and "a 7 right of a 3"
are the same triple). ``combos="seen"`` never draws one of them; ``combos="held_out"`` draws
scenes that contain at least one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sfs import data

# The objects: the 10 digits and the 5 Fashion-MNIST items that stay recognisable at 14 pixels
# (T-shirt, pullover, coat, shirt and sandal are left out: at that size a classifier confuses them,
# and the evaluator must be right about the real canvases at least 98 % of the time).
FASHION_ITEMS = (1, 3, 7, 8, 9)  # Trouser, Dress, Sneaker, Bag, Ankle boot (Fashion-MNIST labels)
CLASS_NAMES = [str(d) for d in range(10)] + ["trousers", "dress", "sneaker", "bag", "boot"]
NUM_CLASSES = len(CLASS_NAMES)  # 15: canvas class k < 10 is digit k, k >= 10 is FASHION_ITEMS[k-10]
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# How a caption names each class: (singular phrases, plural phrase).
NOUNS = {**{d: ([str(d), DIGIT_WORDS[d]], f"{DIGIT_WORDS[d]}s" if d != 6 else "sixes")
            for d in range(10)},
         10: (["pair of trousers"], "pairs of trousers"), 11: (["dress"], "dresses"),
         12: (["sneaker", "trainer"], "sneakers"), 13: (["bag", "handbag"], "bags"),
         14: (["boot", "ankle boot"], "boots")}

PALETTE = {  # RGB in [0, 1]; every colour's brightest channel is 1, so max over channels = shape
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0), "magenta": (1.0, 0.0, 1.0), "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0), "orange": (1.0, 0.5, 0.0),
}
COLOURS = list(PALETTE)
COLOUR_RGB = torch.tensor([PALETTE[c] for c in COLOURS])  # (8, 3)
SIZES = {"small": 14, "large": 22}  # side of the resized 28x28 source image, in pixels
SIZE_NAMES = list(SIZES)
SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big"]}
RELATIONS = ["left of", "right of", "above", "below"]  # object 0 <relation> object 1
RELATION_WORDS = {"left of": ["left of", "to the left of", "on the left of"],
                  "right of": ["right of", "to the right of", "on the right of"],
                  "above": ["above", "over"], "below": ["below", "under", "beneath"]}
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
REGIONS = ["left", "right", "top", "bottom"]  # the half of the canvas a single object lies in
REGION_WORDS = {"left": ["on the left", "in the left half"], "right": ["on the right", "in the right half"],
                "top": ["at the top", "in the top half"], "bottom": ["at the bottom", "in the bottom half"]}
KINDS = ["one", "two", "count"]
KIND_PROBS = (0.3, 0.5, 0.2)
GAP = 4  # empty pixels between the boxes of two objects: the evaluator merges fragments 2 apart

# Held out: one colour per class (class k never appears in colour HELD_OUT_COLOUR[k] in training).
HELD_OUT_COLOUR = [(3 * k + 1) % len(COLOURS) for k in range(NUM_CLASSES)]


def is_held_out_triple(first: int, second: int, axis: int) -> bool:
    """Whether the two-object layout (first class, second class, axis) is held out of training.

    axis 0: ``first`` is left of ``second``; axis 1: ``first`` is above ``second``. About one in
    nine of the 450 triples, with every class among the firsts and the seconds:
    (first + 2 * second + 4 * axis) % 9 == 0.
    """
    return (first + 2 * second + 4 * axis) % 9 == 0


POSITION_THRESHOLD = 0.1  # GenEval's: the centres' offset is reduced by this times the box sizes


def relation_holds(box_a, box_b, relation: str) -> bool:
    """Whether "a <relation> b" holds for two boxes (x0, y0, x1, y1), image y pointing down.

    The relative-position rule of GenEval (Ghosh et al. 2023): the offset of the centres,
    reduced in each axis by POSITION_THRESHOLD times the sum of the boxes' sizes in that axis,
    divided by the length of the offset; "left of" when its x part is below -0.5, and so on.
    The generator places objects only where this holds, and the evaluator judges by it.
    """
    ca = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    cb = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    dims = (box_a[2] - box_a[0] + box_b[2] - box_b[0], box_a[3] - box_a[1] + box_b[3] - box_b[1])
    offset = (ca[0] - cb[0], ca[1] - cb[1])
    revised = [max(abs(o) - POSITION_THRESHOLD * d, 0.0) * (1 if o > 0 else -1)
               for o, d in zip(offset, dims)]
    norm = (offset[0] ** 2 + offset[1] ** 2) ** 0.5
    if max(abs(r) for r in revised) < 1e-3:
        return False
    dx, dy = revised[0] / norm, revised[1] / norm
    return {"left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}[relation]


@dataclass
class Canvases:
    """A set of N captioned canvases.

    images: (N, 3, H, W) uint8 (``images_float()`` gives [-1, 1]); captions: N strings; and the
    spec, as arrays over (N, 2) object slots (slot 1 unused when ``count[i] == 1``):
    classes, colours (index into COLOURS), sizes (0 small, 1 large), boxes (N, 2, 4) as
    (x0, y0, x1, y1) of each object's pixels, exclusive ends; relation (N,) index into RELATIONS
    (-1 if none: object 0 <relation> object 1), region (N,) index into REGIONS (-1 if none);
    states_size (N,) whether the caption names the sizes; kind (N,) index into KINDS; meta: how
    they were made (split, seed, combos, image_size, and ``images_from``: full data or bundled samples).
    """

    images: torch.Tensor
    captions: list[str]
    classes: torch.Tensor
    colours: torch.Tensor
    sizes: torch.Tensor
    boxes: torch.Tensor
    count: torch.Tensor
    relation: torch.Tensor
    region: torch.Tensor
    states_size: torch.Tensor
    kind: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    def images_float(self, idx=slice(None)) -> torch.Tensor:
        """Canvases ``idx`` as float32 in [-1, 1]: (n, 3, H, W)."""
        return self.images[idx].float() / 127.5 - 1.0

    def spec(self, i: int) -> dict:
        """The structured description of canvas ``i`` (what the caption states, and the boxes)."""
        n = int(self.count[i])
        objects = [{"class": CLASS_NAMES[int(self.classes[i, j])], "colour": COLOURS[int(self.colours[i, j])],
                    "size": SIZE_NAMES[int(self.sizes[i, j])], "box": self.boxes[i, j].tolist()}
                   for j in range(n)]
        rel, reg = int(self.relation[i]), int(self.region[i])
        return {"caption": self.captions[i], "kind": KINDS[int(self.kind[i])], "objects": objects,
                "relation": RELATIONS[rel] if rel >= 0 else None,
                "region": REGIONS[reg] if reg >= 0 else None, "states_size": bool(self.states_size[i])}

    def subset(self, idx) -> "Canvases":
        """The canvases at ``idx`` (a slice, index tensor or boolean mask), as a new Canvases."""
        if isinstance(idx, slice):
            keep = list(range(len(self)))[idx]
        else:
            idx = torch.as_tensor(idx)
            keep = (idx.nonzero().flatten() if idx.dtype == torch.bool else idx).tolist()
        t = torch.as_tensor(keep, dtype=torch.long)
        return Canvases(self.images[t], [self.captions[k] for k in keep], self.classes[t],
                        self.colours[t], self.sizes[t], self.boxes[t], self.count[t], self.relation[t],
                        self.region[t], self.states_size[t], self.kind[t], dict(self.meta))


# ----------------------------------------------------------------------------------------------
# Source objects: the digit and item images, resized once to both sizes.

@dataclass
class _Sources:
    gray: dict  # size name -> (M, s, s) float32 numpy array in [0, 1]
    bbox: dict  # size name -> (M, 4) int (x0, y0, x1, y1) of the pixels above the threshold
    by_class: list  # class k -> numpy array of indices into the M source images
    description: str  # where the images came from, e.g. "full MNIST + Fashion-MNIST (60,000 + 24,000 train images)"


def _sources(split: str, data_dir: str | Path | None) -> _Sources:
    digits = data.load("mnist", split, data_dir)
    fashion = data.load("fashion-mnist", split, data_dir)
    keep = torch.isin(fashion.labels, torch.tensor(FASHION_ITEMS))
    images = torch.cat([digits.images, fashion.images[keep]])  # (M, 1, 28, 28) in [-1, 1]
    item_class = {item: 10 + j for j, item in enumerate(FASHION_ITEMS)}
    labels = torch.cat([digits.labels, torch.tensor([item_class[int(v)] for v in fashion.labels[keep]],
                                                    dtype=torch.long)])
    gray, bbox = {}, {}
    for name, s in SIZES.items():
        g = F.interpolate((images + 1) / 2, size=(s, s), mode="bilinear", antialias=True,
                          align_corners=False)[:, 0].clamp(0, 1)  # (M, s, s)
        gray[name] = g.numpy()
        on = g > FOREGROUND
        rows, cols = on.any(2), on.any(1)  # (M, s) each
        ar = torch.arange(s)
        x0 = torch.where(cols, ar, s).min(1).values
        x1 = torch.where(cols, ar + 1, 0).max(1).values
        y0 = torch.where(rows, ar, s).min(1).values
        y1 = torch.where(rows, ar + 1, 0).max(1).values
        bbox[name] = torch.stack([x0, y0, x1, y1], 1).numpy()
    by_class = [(labels == k).nonzero().flatten().numpy() for k in range(NUM_CLASSES)]
    return _Sources(gray, bbox, by_class, _describe(digits, fashion, int(keep.sum()), split))


def _describe(digits, fashion, n_items: int, split: str) -> str:
    """Which images the canvases' objects come from: the full data sets or the bundled samples."""
    kinds = {False: "full", True: "bundled sample of"}
    if digits.sample == fashion.sample:
        what = "bundled samples of MNIST + Fashion-MNIST" if digits.sample else "full MNIST + Fashion-MNIST"
    else:
        what = f"{kinds[digits.sample]} MNIST + {kinds[fashion.sample]} Fashion-MNIST"
    return f"{what} ({len(digits):,} + {n_items:,} {split} images)"


FOREGROUND = 0.2  # a pixel whose brightest channel exceeds this (in [0, 1]) belongs to an object
_SOURCES: dict = {}


def _cached_sources(split: str, data_dir) -> _Sources:
    key = (split, str(data_dir) if data_dir else None, os.environ.get(data.ENV_VAR))
    if key not in _SOURCES:
        _SOURCES[key] = _sources(split, data_dir)
    return _SOURCES[key]


# ----------------------------------------------------------------------------------------------
# Captions.

class _Uniforms:
    """Random draws for the generator's Python loop: uniforms pre-drawn in blocks from a numpy
    Generator (one call per 64k draws, not one per choice), with ``integers`` and ``random``."""

    def __init__(self, rng: np.random.Generator, block: int = 1 << 16):
        self.rng, self.block = rng, block
        self.u, self.k = rng.random(block), 0

    def random(self) -> float:
        if self.k == self.block:
            self.u, self.k = self.rng.random(self.block), 0
        self.k += 1
        return float(self.u[self.k - 1])

    def integers(self, lo: int, hi: int | None = None) -> int:
        """An int in [lo, hi) (or [0, lo) when hi is None)."""
        lo, hi = (0, lo) if hi is None else (lo, hi)
        return lo + min(int(self.random() * (hi - lo)), hi - lo - 1)

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou8" or word in ("11", "18") else "a"


def _phrase(rng: _Uniforms, k: int, colour: str, size: str | None) -> str:
    noun = NOUNS[k][0][rng.integers(len(NOUNS[k][0]))]
    if noun.startswith("pair of"):  # "a red pair of trousers" reads oddly: "a pair of red trousers"
        words = ["pair of", *( [SIZE_WORDS[size][rng.integers(len(SIZE_WORDS[size]))]] if size else []),
                 colour, "trousers"]
        return "a " + " ".join(words)
    words = ([SIZE_WORDS[size][rng.integers(len(SIZE_WORDS[size]))]] if size else []) + [colour, noun]
    return f"{_article(words[0])} {' '.join(words)}"


def caption_for(rng: _Uniforms, kind: str, classes, colours, sizes, relation: str | None,
                region: str | None, states_size: bool) -> str:
    """One caption of a scene, with a template, synonyms and word order drawn from ``rng``.

    kind "one": "a small red 3 at the top"; "two": "a red 3 left of a blue 7" or the same scene
    from the other side, "a blue seven to the right of a red three"; "count": "two green sneakers".
    """
    size_of = (lambda j: SIZE_NAMES[sizes[j]]) if states_size else (lambda j: None)
    if kind == "one":
        text = _phrase(rng, classes[0], COLOURS[colours[0]], size_of(0))
        if region is not None:
            words = REGION_WORDS[region]
            text += " " + words[rng.integers(len(words))]
        return text
    if kind == "two":
        a, b, rel = 0, 1, relation
        if rng.random() < 0.5:  # say it from the other object's side
            a, b, rel = 1, 0, INVERSE[relation]
        words = RELATION_WORDS[rel]
        return (f"{_phrase(rng, classes[a], COLOURS[colours[a]], size_of(a))} "
                f"{words[rng.integers(len(words))]} "
                f"{_phrase(rng, classes[b], COLOURS[colours[b]], size_of(b))}")
    noun = NOUNS[classes[0]][1]
    size = size_of(0)
    if noun == "pairs of trousers":
        mid = " ".join(([SIZE_WORDS[size][rng.integers(len(SIZE_WORDS[size]))]] if size else [])
                       + [COLOURS[colours[0]], "trousers"])
        return f"two pairs of {mid}"
    adj = ([SIZE_WORDS[size][rng.integers(len(SIZE_WORDS[size]))]] if size else [])
    return " ".join(["two", *adj, COLOURS[colours[0]], noun])


# ----------------------------------------------------------------------------------------------
# The generator.

def _check_args(n, image_size, combos, split, max_objects) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 2 * SIZES["large"] + GAP:
        raise ValueError(f"image_size must be an int >= {2 * SIZES['large'] + GAP} (two large objects "
                         f"side by side), got {image_size!r}")
    if combos not in ("seen", "held_out", "all"):
        raise ValueError(f"combos must be 'seen', 'held_out' or 'all', got {combos!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if max_objects not in (1, 2):
        raise ValueError(f"max_objects must be 1 or 2, got {max_objects!r}")


def _held_out(classes, colours, count, relation) -> bool:
    if any(colours[j] == HELD_OUT_COLOUR[classes[j]] for j in range(count)):
        return True
    if count == 2 and relation is not None:
        first, second = (0, 1) if relation in ("left of", "above") else (1, 0)
        axis = 0 if relation in ("left of", "right of") else 1
        return is_held_out_triple(classes[first], classes[second], axis)
    return False


def _place(rng, W, boxes_wh, relation, region):
    """Top-left corners of the objects' pixel boxes (w, h each) for the relation or region."""
    if len(boxes_wh) == 1:
        w, h = boxes_wh[0]
        x_lo, x_hi, y_lo, y_hi = 0, W - w, 0, W - h
        if region == "left":
            x_hi = W // 2 - w
        elif region == "right":
            x_lo = (W + 1) // 2
        elif region == "top":
            y_hi = W // 2 - h
        elif region == "bottom":
            y_lo = (W + 1) // 2
        if x_hi < x_lo or y_hi < y_lo:
            return None
        return [(rng.integers(x_lo, x_hi + 1), rng.integers(y_lo, y_hi + 1))]
    (wa, ha), (wb, hb) = boxes_wh
    horizontal = relation in ("left of", "right of")
    first_is_0 = relation in ("left of", "above")
    (w1, h1), (w2, h2) = ((wa, ha), (wb, hb)) if first_is_0 else ((wb, hb), (wa, ha))
    if horizontal:
        slack = W - (w1 + w2 + GAP)
        if slack < 0:
            return None
        x1 = rng.integers(0, slack + 1)
        x2 = rng.integers(x1 + w1 + GAP, W - w2 + 1)
        y1, y2 = rng.integers(0, W - h1 + 1), rng.integers(0, W - h2 + 1)
    else:
        slack = W - (h1 + h2 + GAP)
        if slack < 0:
            return None
        y1 = rng.integers(0, slack + 1)
        y2 = rng.integers(y1 + h1 + GAP, W - h2 + 1)
        x1, x2 = rng.integers(0, W - w1 + 1), rng.integers(0, W - w2 + 1)
    first, second = (x1, y1), (x2, y2)
    return [first, second] if first_is_0 else [second, first]


def make_canvases(n: int, split: str = "train", seed: int = 0, combos: str = "seen",
                  image_size: int = 48, data_dir: str | Path | None = None,
                  max_objects: int = 2) -> Canvases:
    """Generate ``n`` captioned canvases (3, image_size, image_size), deterministic in ``seed``.

    split: "train" draws the objects from the MNIST / Fashion-MNIST train images, "test" from the
    test images (with ``data_dir`` or $SFS_DATA_DIR; offline both use the bundled 1,000-image
    samples of the test sets). combos: "seen" avoids every held-out combination, "held_out" draws
    only scenes with at least one, "all" draws freely. max_objects: 1 for single-object scenes only.
    Book ch. 10, sec. "Captioned canvases".
    """
    _check_args(n, image_size, combos, split, max_objects)
    src = _cached_sources(split, data_dir)
    W = image_size
    rng = _Uniforms(np.random.default_rng(
        [seed, {"train": 0, "test": 1}[split], {"seen": 0, "held_out": 1, "all": 2}[combos]]))
    out = np.zeros((n, 3, W, W), dtype=np.uint8)
    classes, colours, sizes = (np.zeros((n, 2), dtype=np.int64) for _ in range(3))
    boxes = np.zeros((n, 2, 4), dtype=np.int64)
    count, kinds = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    relation, region = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    states_size = np.zeros(n, dtype=bool)
    rgb = COLOUR_RGB.numpy()
    captions = []
    probs = (1.0, 0.0, 0.0) if max_objects == 1 else KIND_PROBS
    i = 0
    while i < n:
        u = rng.random()
        kind = "one" if u < probs[0] else "two" if u < probs[0] + probs[1] else "count"
        m = 1 if kind == "one" else 2
        copies = kind == "count"  # two copies of one class, colour and size
        cls = [rng.integers(NUM_CLASSES) for _ in range(1 if copies else m)]
        col = [rng.integers(len(COLOURS)) for _ in range(1 if copies else m)]
        siz = [rng.integers(2) for _ in range(1 if copies else m)]
        if copies:
            cls, col, siz = cls * 2, col * 2, siz * 2
        rel = RELATIONS[rng.integers(4)] if m == 2 else None
        reg = REGIONS[rng.integers(4)] if kind == "one" and rng.random() < 0.8 else None
        held = _held_out(cls, col, m, rel if kind == "two" else None)
        if (combos == "seen" and held) or (combos == "held_out" and not held):
            continue
        picks = [int(src.by_class[c][rng.integers(len(src.by_class[c]))]) for c in cls]
        bb = [src.bbox[SIZE_NAMES[s]][p].tolist() for s, p in zip(siz, picks)]
        wh = [(b[2] - b[0], b[3] - b[1]) for b in bb]
        corners = _place(rng, W, wh, rel, reg)
        if corners is None:
            continue
        if m == 2:  # every two-object layout reads unambiguously as its relation (GenEval's rule)
            b = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, wh)]
            if not relation_holds(b[0], b[1], rel):
                continue
        for j, (p, s, b, (x, y)) in enumerate(zip(picks, siz, bb, corners)):
            g = src.gray[SIZE_NAMES[s]][p, b[1]:b[3], b[0]:b[2]]  # the object's pixel box
            h, w = g.shape
            patch = (g[None] * rgb[col[j]][:, None, None] * 255 + 0.5).astype(np.uint8)  # (3, h, w)
            np.maximum(out[i, :, y:y + h, x:x + w], patch, out=out[i, :, y:y + h, x:x + w])
            boxes[i, j] = (x, y, x + w, y + h)
        classes[i, :m], colours[i, :m], sizes[i, :m] = cls, col, siz
        count[i] = m
        relation[i] = RELATIONS.index(rel) if kind == "two" else -1  # count: placement only
        region[i] = REGIONS.index(reg) if reg else -1
        stated = rng.random() < 0.5
        states_size[i] = stated
        kinds[i] = KINDS.index(kind)
        captions.append(caption_for(rng, kind, cls, col, siz, rel, reg, stated))
        i += 1
    t = torch.from_numpy
    return Canvases(t(out), captions, t(classes), t(colours), t(sizes), t(boxes), t(count),
                    t(relation), t(region), t(states_size), t(kinds), meta={"split": split, "seed": seed, "combos": combos,
                                              "image_size": W, "images_from": src.description})
