"""The toy world: grammar, prompt table, tokenizer, layouts and renders."""

import pytest
import torch

from solrl.toy import world
from solrl.toy.text import ToyTokenizer, table_token_ids, vocabulary


@pytest.mark.parametrize(
    "prompt, groups, relation",
    [
        pytest.param("a red circle", [(1, "red", "circle")], None, id="single"),
        pytest.param("Four white diamonds.", [(4, "white", "diamond")], None, id="caps-punct"),
        pytest.param("one blue square", [(1, "blue", "square")], None, id="one"),
        pytest.param(
            "two red circles left of a blue square",
            [(2, "red", "circle"), (1, "blue", "square")], "left of", id="relation",
        ),
        pytest.param(
            "a cyan triangle and three magenta squares",
            [(1, "cyan", "triangle"), (3, "magenta", "square")], "and", id="and",
        ),
        pytest.param(
            "a green diamond below a green circle",
            [(1, "green", "diamond"), (1, "green", "circle")], "below", id="same-colour",
        ),
    ],
)
def test_parse_prompt(prompt, groups, relation):
    spec = world.parse_prompt(prompt)
    assert [(g.count, g.colour, g.shape) for g in spec.groups] == groups
    assert spec.relation == relation
    assert world.parse_prompt(spec.prompt()) == spec


@pytest.mark.parametrize(
    "prompt, match",
    [
        pytest.param("a purple circle", "unknown colour 'purple'", id="colour"),
        pytest.param("a red hexagon", "unknown shape 'hexagon'", id="shape"),
        pytest.param("five red circles", "'five' is not a count", id="count"),
        pytest.param("a red circle near a blue square", "expected 'and' or a relation", id="rel"),
        pytest.param("a red circle and", "expected '<count> <colour> <shape>'", id="truncated"),
        pytest.param("three red circles and two blue squares", "at most 4 objects", id="too-many"),
        pytest.param("a red circle and a red circle", "must differ", id="same-group"),
        pytest.param("", "expected '<count> <colour> <shape>'", id="empty"),
    ],
)
def test_parse_prompt_errors(prompt, match):
    with pytest.raises(ValueError, match=match):
        world.parse_prompt(prompt)


def test_prompt_table_complete_and_canonical():
    table = world.prompt_table()
    # 4 counts x 28 kinds singles; 6 count pairs x 28 x 27 ordered kind pairs x 5 relations
    assert len(table) == 4 * 28 + 6 * 28 * 27 * 5
    assert len(set(table.prompts)) == len(table)
    sizes = torch.bincount(table.category, minlength=len(world.CATEGORIES)).tolist()
    assert sizes == [28, 84, 756, 3024, 18900]
    for i in torch.randint(0, len(table), (200,), generator=torch.Generator().manual_seed(0)):
        spec = world.parse_prompt(table.prompts[i])
        assert spec == table.specs[i]
        assert world.CATEGORIES[int(table.category[i])] == spec.category
        assert int(table.count[i].sum()) == sum(g.count for g in spec.groups)


def test_sample_prompts_deterministic_and_mixed():
    a = world.sample_prompts(400, 7)
    assert a == world.sample_prompts(400, 7)
    assert a != world.sample_prompts(400, 8)
    assert world.sample_prompts(400, torch.Generator().manual_seed(7)) == a
    cats = [world.parse_prompt(p).category for p in a]
    for c, w in world.TRAIN_CATEGORY_WEIGHTS.items():
        assert abs(cats.count(c) / len(a) - w) < 0.08, (c, cats.count(c))
    with pytest.raises(TypeError, match="rng_or_seed"):
        world.sample_prompts(3, "seed")
    with pytest.raises(ValueError, match="unknown categories"):
        world.sample_prompt_ids(3, 0, {"nope": 1.0})


def test_eval_prompts_fixed():
    ev = world.eval_prompts()
    assert len(ev) == world.EVAL_PER_CATEGORY * len(world.CATEGORIES) == len(set(ev))
    cats = [world.parse_prompt(p).category for p in ev]
    for i, c in enumerate(world.CATEGORIES):
        assert cats[i * world.EVAL_PER_CATEGORY : (i + 1) * world.EVAL_PER_CATEGORY] == [c] * 24
    # pinned: the evaluation set must never change silently
    assert ev[0] == "a red circle"
    assert ev == world.eval_prompts()


def test_tokenizer():
    tok = ToyTokenizer()
    ids = tok(["two red circles left of a blue square", "a zebra"])
    assert ids.shape == (2, 16) and ids.dtype == torch.int64
    assert tok.decode(ids[0]) == "two red circles left of a blue square"
    assert ids[1, :5].tolist() == [tok.bos_id, tok.token_to_id["a"], tok.unk_id, tok.eos_id, 0]
    assert tok.vocab == vocabulary() and len(set(tok.vocab)) == len(tok)
    short = ToyTokenizer(max_length=4)(["two red circles left of"])
    assert short[0].tolist() == [tok.bos_id, tok.token_to_id["two"], tok.token_to_id["red"],
                                 tok.eos_id]
    with pytest.raises(TypeError, match="list of strings"):
        tok("a red circle")
    with pytest.raises(ValueError, match="max_length"):
        ToyTokenizer(2)


def test_table_tokens_match_tokenizer():
    table = world.prompt_table()
    idx = torch.randint(0, len(table), (300,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(table_token_ids()[idx], ToyTokenizer()([table.prompts[i] for i in idx]))


def _objects_of(prompts, seed=0):
    ids = world.prompt_ids(prompts)
    t = world.prompt_table()
    gen = torch.Generator().manual_seed(seed)
    return world.layout(t.count[ids], t.colour[ids], t.shape[ids], t.relation[ids], gen)


def test_layout_respects_spec_and_relation():
    prompts = world.sample_prompts(600, 3)
    objs = _objects_of(prompts)
    for i, p in enumerate(prompts):
        spec = world.parse_prompt(p)
        valid = objs.valid[i]
        assert int(valid.sum()) == sum(g.count for g in spec.groups)
        cx = (objs.x0[i] + objs.size[i] / 2)[valid]
        cy = (objs.y0[i] + objs.size[i] / 2)[valid]
        grp = objs.group[i][valid]
        for gi, g in enumerate(spec.groups):
            sel = grp == gi
            assert int(sel.sum()) == g.count
            assert (objs.colour[i][valid][sel] == world.COLOUR_NAMES.index(g.colour)).all()
            assert (objs.shape[i][valid][sel] == world.SHAPES.index(g.shape)).all()
        if spec.relation in world.RELATIONS:
            a, b = grp == 0, grp == 1
            # every object of group 0 is on the relation's side of every object of group 1
            if spec.relation == "left of":
                assert cx[a].max() < cx[b].min()
            elif spec.relation == "right of":
                assert cx[a].min() > cx[b].max()
            elif spec.relation == "above":
                assert cy[a].max() < cy[b].min()
            else:
                assert cy[a].min() > cy[b].max()
        # objects are inside the image and >= 4 px apart (boxes never touch)
        x0, y0, s = objs.x0[i][valid], objs.y0[i][valid], objs.size[i][valid]
        assert (x0 >= 0).all() and (x0 + s <= world.IMAGE_SIZE).all()
        assert (y0 >= 0).all() and (y0 + s <= world.IMAGE_SIZE).all()
        assert ((s >= world.MIN_SIZE) & (s <= world.MAX_SIZE)).all()
        for j in range(len(s)):
            for k in range(j + 1, len(s)):
                gap_x = max(x0[j] - (x0[k] + s[k]), x0[k] - (x0[j] + s[j]))
                gap_y = max(y0[j] - (y0[k] + s[k]), y0[k] - (y0[j] + s[j]))
                assert max(gap_x, gap_y) >= 2 * world.CELL_MARGIN


def test_render_pixels():
    prompts = ["two red circles left of a blue square", "four white diamonds"]
    images = world.render_prompts(prompts, 3)
    assert images.shape == (2, 3, world.IMAGE_SIZE, world.IMAGE_SIZE)
    assert images.dtype == torch.float32
    assert set(images.unique().tolist()) == {0.0, 1.0}
    # image 0: only red and blue pixels; image 1: only white
    px0 = {tuple(v) for v in images[0].flatten(1).T.tolist()}
    assert px0 == {(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)}
    px1 = {tuple(v) for v in images[1].flatten(1).T.tolist()}
    assert px1 == {(0.0, 0.0, 0.0), (1.0, 1.0, 1.0)}
    # deterministic in the seed, different across seeds
    assert torch.equal(images, world.render_prompts(prompts, 3))
    assert not torch.equal(images, world.render_prompts(prompts, 4))


@pytest.mark.parametrize("size", range(world.MIN_SIZE, world.MAX_SIZE + 1))
def test_shape_masks_geometry(size):
    """Each shape's pixels: square fills its box, circle/diamond/triangle have the fill and
    top-half share the detector relies on (see world's docstring)."""
    shapes = torch.arange(len(world.SHAPES))
    z = torch.full_like(shapes, 20)
    masks = world.shape_masks(shapes, z, z, torch.full_like(shapes, size))
    for si, name in enumerate(world.SHAPES):
        m = masks[si]
        ys, xs = torch.nonzero(m, as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        fill = m.sum().item() / (h * w)
        top = (2 * (ys - ys.min()) < h).float().mean().item()
        assert xs.min() >= 20 and xs.max() < 20 + size and ys.max() < 20 + size
        if name == "square":
            assert fill == 1.0 and h == w == size
        elif name == "circle":
            assert 0.74 < fill < 0.85 and top >= 0.45
        elif name == "diamond":
            assert 0.45 < fill < 0.62 and top >= 0.45
        else:
            assert 0.45 < fill < 0.62 and top < 0.36


def test_layout_errors():
    c = torch.tensor([[3, 2]])
    with pytest.raises(ValueError, match="sum to <= 4"):
        world.layout(c, c, c, torch.tensor([1]))
    with pytest.raises(ValueError, match=r"must be \[B, 2\]"):
        world.layout(torch.tensor([1]), c, c, torch.tensor([1]))
