"""The canvas evaluator (book ch. 10 and eq. (12.7)): objects found, clauses judged, diversity in bits."""

import math

import pytest
import torch

from sfs import canvas_eval
from sfs.canvas import make_canvases
from sfs.canvas_eval import entropy_bits, find_objects, judge, open_diversity, score, wrong_specs


@pytest.fixture(scope="module")
def real():
    return make_canvases(120, "test", seed=3, combos="all")


@pytest.fixture(scope="module")
def clf():
    model, _ = canvas_eval.load_object_classifier()
    return model


def test_each_canvas_has_as_many_objects_as_its_spec(real):
    found = find_objects(real.images_float())
    counts = torch.tensor([len(f) for f in found])
    assert (counts == real.count).float().mean() > 0.97
    for objs, boxes, m in zip(found[:20], real.boxes[:20], real.count[:20]):  # boxes lie in the spec's
        for obj in objs:
            x0, y0, x1, y1 = obj["box"]
            assert any(x0 >= b[0] - 1 and y0 >= b[1] - 1 and x1 <= b[2] + 1 and y1 <= b[3] + 1
                       for b in boxes[:int(m)].tolist())


def test_real_canvases_score_high_and_wrong_specs_low(real, clf):
    right = score(judge(real.images_float(), real, clf))
    assert right["prompt"] > 0.9 and right["colour"] > 0.97 and right["position"] > 0.97
    for mistake, clause in (("colours", "colour"), ("mirror", "position"), ("class", "object")):
        bad = wrong_specs(real, mistake)
        assert len(bad) > 5
        s = score(judge(bad.images_float(), bad, clf))
        assert s[clause] < 0.1 and s["prompt"] < 0.1, (mistake, s)


def test_an_empty_canvas_fails_every_object_clause(real, clf):
    blank = -torch.ones(4, 3, 48, 48)
    s = score(judge(blank, real.subset(slice(0, 4)), clf))
    assert s["object"] == s["count"] == s["prompt"] == 0.0


@pytest.mark.parametrize("values, bits", [([3] * 10, 0.0), ([0, 1] * 5, 1.0), (list(range(9)) * 3, math.log2(9)),
                                          ([0, 0, 0, 1], -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))])
def test_entropy_in_bits(values, bits):
    assert entropy_bits(values) == pytest.approx(bits, abs=1e-12)
    assert entropy_bits([v + 5 for v in values]) == pytest.approx(bits, abs=1e-12)  # labels, not values


def test_entropy_edge_cases():
    assert math.isnan(entropy_bits([]))
    with pytest.raises(ValueError, match="values"):
        entropy_bits([0, -1])


def test_diversity_of_open_clauses():
    real = make_canvases(400, "test", seed=4, combos="seen")
    d = open_diversity(real.images_float(), real)
    assert d["n_position"] > 20 and d["n_size"] > 50
    assert 1.0 < d["position_entropy"] <= math.log2(9) and 0.5 < d["size_entropy"] <= 1.0
    one = real.subset(real.count == 1)  # every image the first one: all in one cell, one size
    same = one.images_float()[:1].expand(len(one), -1, -1, -1)
    one.classes = one.classes[:1].expand_as(one.classes).clone()  # size thresholds differ by class
    d0 = open_diversity(same, one)
    assert d0["position_entropy"] == 0.0 and d0["size_entropy"] == 0.0


@pytest.mark.parametrize("bad, err", [(torch.zeros(2, 1, 48, 48), ValueError), (torch.zeros(2, 3, 48, 48, dtype=torch.uint8), TypeError),
                                      (torch.full((1, 3, 8, 8), float("nan")), ValueError)])
def test_bad_images_are_refused(bad, err):
    with pytest.raises(err, match="images"):
        find_objects(bad)
