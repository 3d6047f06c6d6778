"""Captioned canvases: determinism, the spec matches the pixels, held-out combinations, bad input."""

import pytest
import torch

from sfs import canvas
from sfs.canvas import (CLASS_NAMES, COLOURS, HELD_OUT_COLOUR, RELATIONS, is_held_out_triple,
                        make_canvases)


@pytest.fixture(scope="module")
def seen():
    return make_canvases(600, "test", seed=3, combos="seen")


def test_same_seed_same_canvases_other_seed_other_canvases():
    a, b = make_canvases(50, seed=1), make_canvases(50, seed=1)
    c = make_canvases(50, seed=2)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)


def test_shapes_dtypes_and_range(seen):
    assert seen.images.shape == (600, 3, 48, 48) and seen.images.dtype == torch.uint8
    x = seen.images_float()
    assert x.min() >= -1 and x.max() <= 1 and x.dtype == torch.float32
    assert len(seen.captions) == 600
    big = make_canvases(10, seed=0, image_size=64)
    assert big.images.shape == (10, 3, 64, 64)


def test_each_object_lies_in_its_box_in_its_colour(seen):
    for i in range(100):
        img = seen.images[i].float() / 255
        mask = torch.zeros(48, 48, dtype=torch.bool)
        for j in range(int(seen.count[i])):
            x0, y0, x1, y1 = seen.boxes[i, j].tolist()
            patch = img[:, y0:y1, x0:x1]
            rgb = canvas.COLOUR_RGB[seen.colours[i, j]]
            on = patch.amax(0) > 0.3
            assert on.any()
            # every lit pixel of the box has the object's colour (up to 8-bit rounding)
            direction = patch[:, on] / patch[:, on].amax(0, keepdim=True)
            assert torch.allclose(direction, rgb[:, None].expand_as(direction), atol=0.03)
            mask[y0:y1, x0:x1] = True
        assert (img[:, ~mask] == 0).all()  # nothing outside the boxes


def test_relations_and_regions_hold_in_the_boxes(seen):
    def centre(b):
        return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    n_rel = 0
    for i in range(len(seen)):
        rel, reg = int(seen.relation[i]), int(seen.region[i])
        b0 = seen.boxes[i, 0].tolist()
        if rel >= 0:
            b1 = seen.boxes[i, 1].tolist()
            r = RELATIONS[rel]
            if r == "left of":
                assert b0[2] + canvas.GAP <= b1[0]
            elif r == "right of":
                assert b1[2] + canvas.GAP <= b0[0]
            elif r == "above":
                assert b0[3] + canvas.GAP <= b1[1]
            else:
                assert b1[3] + canvas.GAP <= b0[1]
            n_rel += 1
        if reg >= 0:
            x, y = centre(b0)
            side = canvas.REGIONS[reg]
            assert {"left": b0[2] <= 24, "right": b0[0] >= 24, "top": b0[3] <= 24,
                    "bottom": b0[1] >= 24}[side]
    assert n_rel > 100


def test_captions_say_what_the_spec_says(seen):
    for i in range(len(seen)):
        spec, cap = seen.spec(i), seen.captions[i]
        for obj in spec["objects"]:
            assert obj["colour"] in cap
        if spec["kind"] == "count":
            assert cap.startswith("two ")
        if spec["relation"] is not None:
            words = [w for r in RELATIONS for w in canvas.RELATION_WORDS[r]]
            assert any(f" {w} " in cap for w in words)


def test_both_word_orders_and_synonyms_occur():
    c = make_canvases(2000, seed=5)
    caps = " | ".join(c.captions)
    for phrase in ["left of", "right of", "above", "below", "three", " 3 ", "sneaker", "big", "small"]:
        assert phrase in caps, phrase
    # one scene, two word orders: object 0 is sometimes named second
    flipped = [i for i in range(len(c)) if c.relation[i] >= 0 and
               c.captions[i].find(COLOURS[int(c.colours[i, 0])]) > c.captions[i].find(COLOURS[int(c.colours[i, 1])])]
    assert len(flipped) > 100


def test_seen_canvases_hold_no_held_out_combination_and_held_out_ones_hold_one():
    s = make_canvases(1500, "train", seed=0, combos="seen")
    h = make_canvases(500, "test", seed=0, combos="held_out")

    def held(c, i):
        m = int(c.count[i])
        pair = any(int(c.colours[i, j]) == HELD_OUT_COLOUR[int(c.classes[i, j])] for j in range(m))
        rel = int(c.relation[i])
        if rel < 0:
            return pair
        first, second = (0, 1) if RELATIONS[rel] in ("left of", "above") else (1, 0)
        axis = 0 if RELATIONS[rel] in ("left of", "right of") else 1
        return pair or is_held_out_triple(int(c.classes[i, first]), int(c.classes[i, second]), axis)

    assert not any(held(s, i) for i in range(len(s)))
    assert all(held(h, i) for i in range(len(h)))


def test_the_held_out_sets_are_small_and_cover_every_class():
    assert len(set(HELD_OUT_COLOUR)) > 1 and len(HELD_OUT_COLOUR) == len(CLASS_NAMES)
    triples = [(a, b, x) for a in range(15) for b in range(15) for x in (0, 1)]
    frac = sum(is_held_out_triple(*t) for t in triples) / len(triples)
    assert 0.08 < frac < 0.15
    assert {t[0] for t in triples if is_held_out_triple(*t)} == set(range(15))


def test_single_object_mode():
    c = make_canvases(100, seed=0, max_objects=1)
    assert (c.count == 1).all()


def test_subset_keeps_everything_aligned(seen):
    sub = seen.subset(torch.tensor([5, 2]))
    assert sub.captions == [seen.captions[5], seen.captions[2]]
    assert torch.equal(sub.images[1], seen.images[2]) and sub.spec(0) == seen.spec(5)
    mask = seen.count == 1
    assert len(seen.subset(mask)) == int(mask.sum())


@pytest.mark.parametrize("kwargs, name", [
    ({"n": -1}, "n"), ({"n": 2.5}, "n"), ({"n": True}, "n"),
    ({"n": 4, "image_size": 30}, "image_size"), ({"n": 4, "image_size": 48.0}, "image_size"),
    ({"n": 4, "combos": "unseen"}, "combos"), ({"n": 4, "split": "val"}, "split"),
    ({"n": 4, "max_objects": 3}, "max_objects"),
])
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_canvases(**kwargs)


def test_canvases_say_whether_their_objects_come_from_the_full_data_or_the_samples(monkeypatch):
    """A model trained on canvases of the bundled samples once passed for a full-data one: the
    canvases carry where their images came from (cards record it)."""
    import dataclasses

    from sfs import data
    full = {"mnist": True, "fashion-mnist": True}

    def fake_load(name, split="train", data_dir=None):
        ds = data.load_sample(name)
        return dataclasses.replace(ds, sample=False) if full[name] else ds

    monkeypatch.setattr(canvas.data, "load", fake_load)
    expected = {(True, True): "full MNIST + Fashion-MNIST (",
                (False, False): "bundled samples of MNIST + Fashion-MNIST (1,000 + ",
                (True, False): "full MNIST + bundled sample of Fashion-MNIST (1,000 + "}
    for (digits, items), start in expected.items():
        full.update({"mnist": digits, "fashion-mnist": items})
        monkeypatch.setattr(canvas, "_SOURCES", {})
        c = canvas.make_canvases(4, "test", 0)
        assert c.meta["images_from"].startswith(start) and c.meta["images_from"].endswith(" test images)")
        assert c.subset([0, 1]).meta["images_from"] == c.meta["images_from"]
    assert data.load_sample("mnist").sample
