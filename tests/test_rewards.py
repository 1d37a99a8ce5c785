"""Rewards: the GenEval-like toy detector (exact on ground truth, each corruption lowers exactly
its skill, invariant to what it should ignore), JPEG compressibility, aesthetic, registry."""

import pytest
import torch

from solrl.rewards import REWARDS, Reward, build_reward
from solrl.rewards.geneval import (
    SKILLS,
    GenEvalReward,
    colour_codes,
    connected_components,
    detect,
)
from solrl.toy import world

GEN = GenEvalReward()


def _skills(images, prompts):
    return GEN.score_skills(images, prompts)


def _assert_only(scores: dict, lowered: str, n: int):
    for s in SKILLS:
        if s == lowered:
            assert (scores[s] < 1).all(), (s, scores[s])
        else:
            assert (scores[s] == 1).all(), (s, scores[s])
    assert (scores["correct"] == 0).all()
    assert scores[lowered].shape == (n,)


def test_ground_truth_scores_one():
    prompts = world.sample_prompts(300, 11) + world.eval_prompts()
    images = world.render_prompts(prompts, 5)
    r = GEN.evaluate(images, prompts)
    for s in SKILLS:
        assert (getattr(r, s) == 1).all(), s
    assert (r.reward == 1).all() and (r.correct == 1).all()
    out = GEN(images, prompts)
    assert out.dtype == torch.float32 and out.shape == (len(prompts),)


def _replace(spec: world.SceneSpec, gi: int, **kw) -> str:
    groups = list(spec.groups)
    g = groups[gi]
    groups[gi] = world.ObjectGroup(kw.get("count", g.count), kw.get("colour", g.colour),
                                   kw.get("shape", g.shape))
    return world.SceneSpec(tuple(groups), kw.get("relation", spec.relation)).prompt()


def _corrupt(prompts, kind, rng):
    """(original prompts, prompts whose ground truth is the corruption) for those prompts
    where the corruption is possible."""
    orig, bad = [], []
    flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    for p in prompts:
        spec = world.parse_prompt(p)
        gi = rng.randrange(len(spec.groups))
        g = spec.groups[gi]
        total = sum(x.count for x in spec.groups)
        used_c = {x.colour for x in spec.groups}
        used_s = {x.shape for x in spec.groups}
        if kind == "count_more" and total < world.MAX_OBJECTS:
            q = _replace(spec, gi, count=g.count + 1)
        elif kind == "count_fewer" and g.count > 1:
            q = _replace(spec, gi, count=g.count - 1)
        elif kind == "colour":
            q = _replace(spec, gi, colour=rng.choice(sorted(set(world.COLOUR_NAMES) - used_c)))
        elif kind == "shape":
            q = _replace(spec, gi, shape=rng.choice(sorted(set(world.SHAPES) - used_s)))
        elif kind == "position" and spec.relation in flip:
            q = world.SceneSpec(spec.groups, flip[spec.relation]).prompt()
        else:
            continue
        orig.append(p)
        bad.append(q)
    return orig, bad


@pytest.mark.parametrize(
    "kind, skill",
    [
        pytest.param("count_more", "count", id="one-too-many"),
        pytest.param("count_fewer", "count", id="one-too-few"),
        pytest.param("colour", "colour", id="wrong-colour"),
        pytest.param("shape", "shape", id="wrong-shape"),
        pytest.param("position", "position", id="swapped-position"),
    ],
)
def test_corruption_lowers_exactly_its_skill(kind, skill):
    import random

    rng = random.Random(kind)
    prompts = world.sample_prompts(400, 21)
    orig, bad = _corrupt(prompts, kind, rng)
    assert len(orig) >= 40
    images = world.render_prompts(bad, 9)
    scores = _skills(images, orig)
    _assert_only(scores, skill, len(orig))
    assert (GEN(images, orig) < 1).all()
    # the corrupted images are right for their own prompts
    assert (GEN(images, bad) == 1).all()


def test_wrong_count_is_dense():
    """One missing object costs less than two; a wrong colour in one of two groups costs
    less than in both."""
    img = world.render_prompts(["a red circle", "two red circles", "three red circles"], 0)
    r = GEN(img, ["three red circles"] * 3)
    assert r[0] < r[1] < r[2] == 1
    p = "a red circle and a blue square"
    img = world.render_prompts(["a green circle and a blue square",
                                "a green circle and a yellow square"], 0)
    c = GEN.score_skills(img, [p, p])["colour"]
    assert c.tolist() == [0.5, 0.0]


def _far_background(images: torch.Tensor, radius: int = 2) -> torch.Tensor:
    obj = (images.amax(1, keepdim=True) > 0.5).float()
    near = torch.nn.functional.max_pool2d(obj, 2 * radius + 1, stride=1, padding=radius)
    return near[:, 0] == 0  # [B, H, W]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda x, g: x * 0.8 + 0.1, id="contrast"),
        pytest.param(lambda x, g: (x + 0.07 * torch.randn(x.shape, generator=g)).clamp(0, 1),
                     id="gaussian-noise"),
        pytest.param(lambda x, g: torch.where(x > 0.5, x, torch.full_like(x, 0.3)),
                     id="grey-background"),
        pytest.param(lambda x, g: x.flip(0), id="batch-order"),
        pytest.param("specks", id="specks"),
        pytest.param("jitter", id="relayout-1px"),
    ],
)
def test_detector_invariances(change):
    g = torch.Generator().manual_seed(3)
    prompts = world.sample_prompts(96, 5)
    images = world.render_prompts(prompts, 1)
    if change == "specks":
        # up to 3-px specks of random palette colours, at least 2 px from any object
        free = _far_background(images)
        pal = world.palette()
        out = images.clone()
        for i in range(images.shape[0]):
            ys, xs = torch.nonzero(free[i], as_tuple=True)
            pick = torch.randperm(len(ys), generator=g)[:12]
            for y, x in zip(ys[pick].tolist(), xs[pick].tolist()):
                c = pal[int(torch.randint(0, len(pal), (1,), generator=g))]
                out[i, :, y : y + 1, x : x + 3] = c[:, None, None]
        changed, ps = out, prompts
    elif change == "jitter":
        # shift whole scenes by one pixel (objects keep >= 1 px margin to the border)
        changed = torch.roll(images, shifts=(1, -1), dims=(2, 3))
        ps = prompts
    else:
        changed = change(images, g)
        ps = prompts[::-1] if torch.equal(changed, images.flip(0)) else prompts
    assert not torch.equal(changed, images)
    ref = GEN.score_skills(images, prompts)
    got = GEN.score_skills(changed, ps)
    for k in ref:
        exp = ref[k].flip(0) if ps is not prompts else ref[k]
        assert torch.equal(got[k], exp), k


def test_batch_split_invariance_and_determinism():
    prompts = world.sample_prompts(40, 8)
    images = world.render_prompts(prompts, 2)
    images[::3] = world.render_prompts(world.sample_prompts(14, 9), 2)  # wrong ones too
    full = GEN(images, prompts)
    parts = torch.cat([GEN(images[i : i + 7], prompts[i : i + 7]) for i in range(0, 40, 7)])
    assert torch.equal(full, parts)
    assert torch.equal(full, GEN(images, prompts))
    assert (full < 1).any() and (full == 1).any()


def test_connected_components_against_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(6, 3, 37, 29, generator=g) > 0.35).float()  # awkward size, dense
    codes = colour_codes(images)
    labels = connected_components(codes)
    assert labels.shape == codes.shape
    assert ((labels == -1) == (codes == 0)).all()
    for i in range(codes.shape[0]):
        for c in range(1, 8):
            m = (codes[i] == c).numpy()
            ref, n = ndimage.label(m)  # 4-connectivity by default
            ours = labels[i].numpy()[m]
            pairs = set(zip(ours.tolist(), ref[m].tolist()))
            assert len(pairs) == n == len(set(ours.tolist()))


def test_detect_features():
    images = world.render_prompts(["a red circle left of a blue square"], 0)
    comps = detect(images)
    assert comps.image.tolist() == [0, 0]
    by_colour = dict(zip(comps.colour.tolist(), comps.shape.tolist()))
    red, blue = world.COLOUR_NAMES.index("red"), world.COLOUR_NAMES.index("blue")
    assert by_colour == {red: world.SHAPES.index("circle"), blue: world.SHAPES.index("square")}
    # centroid of the square = centre of its box
    i = comps.colour.tolist().index(blue)
    assert comps.cx[i] == (comps.x0[i] + comps.x1[i] + 1) / 2
    assert comps.fill[i] == 1.0


def test_position_not_applicable_and_partial():
    p = ["a red circle and a blue square", "a red circle left of a blue square"]
    images = world.render_prompts(p, 0)
    r = GEN.evaluate(images, p)
    assert r.position_applicable.tolist() == [0.0, 1.0]
    assert r.position.tolist() == [1.0, 1.0]
    # missing second group: position 0 and count < 1
    only = world.render_prompts(["a red circle"], 0)
    s = GEN.score_skills(only, [p[1]])
    assert s["position"].item() == 0 and s["count"].item() < 1


def test_geneval_bad_input():
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match="one prompt per image"):
        GEN(images, ["a red circle"])
    with pytest.raises(ValueError, match="one prompt per image"):
        GEN(images, "a red circle")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        GEN(images[:, :2], ["a red circle"] * 2)
    with pytest.raises(ValueError, match="cannot parse 'a photo of a cat'"):
        GEN(images, ["a red circle", "a photo of a cat"])


def test_jpeg_compressibility():
    rew = build_reward("jpeg_compressibility")
    g = torch.Generator().manual_seed(0)
    flat = world.render_prompts(["a red circle"] * 2, 0)
    noise = torch.rand(2, 3, 64, 64, generator=g)
    r = rew(torch.cat([flat, noise]), ["x"] * 4)
    assert r.dtype == torch.float32 and r.shape == (4,)
    assert (r[:2] > r[2:]).all() and (r < 0).all()
    assert torch.equal(r, rew(torch.cat([flat, noise]), ["x"] * 4))
    with pytest.raises(ValueError, match="quality"):
        build_reward("jpeg_compressibility", quality=0)


def test_aesthetic():
    rew = build_reward("aesthetic")
    g = torch.Generator().manual_seed(0)
    crisp = world.render_prompts(["two red circles left of a blue square"] * 3, 1)
    blurred = torch.nn.functional.avg_pool2d(crisp, 5, stride=1, padding=2)
    grey_noise = (0.5 + 0.1 * torch.randn(3, 1, 64, 64, generator=g)).expand(3, 3, 64, 64)
    r = rew(torch.cat([crisp, blurred, grey_noise]), ["x"] * 9)
    assert r.dtype == torch.float32 and ((r >= 0) & (r <= 1)).all()
    assert (r[:3] > r[3:6]).all() and (r[3:6] > r[6:]).all()


def test_registry():
    assert set(REWARDS) == {"geneval", "jpeg_compressibility", "aesthetic"}
    for name in REWARDS:
        rew = build_reward(name)
        assert isinstance(rew, Reward) and rew.name == name
    assert isinstance(build_reward(), GenEvalReward)
    with pytest.raises(ValueError, match=r"unknown reward 'clip'.*aesthetic"):
        build_reward("clip")


@pytest.mark.gpu
def test_geneval_gpu_matches_cpu():
    prompts = world.sample_prompts(200, 4)
    images = world.render_prompts(prompts, 0)
    images = (images + 0.2 * torch.randn_like(images)).clamp(0, 1)  # not all-correct
    cpu = GEN.evaluate(images, prompts)
    gpu = GEN.evaluate(images.cuda(), prompts)
    for s in (*SKILLS, "reward", "correct"):
        assert getattr(gpu, s).device.type == "cuda"
        assert torch.equal(getattr(gpu, s).cpu(), getattr(cpu, s)), s
