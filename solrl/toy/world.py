"""The toy world: procedural scenes of coloured shapes, their prompt grammar, and renderer.

A scene is one or two *groups* of identical objects ("two red circles"), optionally tied by
a spatial relation ("... left of a blue square"). Prompts follow one grammar::

    prompt   := group | group " and " group | group " " relation " " group
    group    := count " " colour " " shape ["s"]        (plural "s" when count > 1)
    count    := "a" | "one" | "two" | "three" | "four"
    relation := "left of" | "right of" | "above" | "below"

Images are RGB float32 in [0, 1], IMAGE_SIZE x IMAGE_SIZE, black background. Colours are
corners of the RGB cube (each channel exactly 0 or 1) so a detector separates them by
thresholding every channel at 0.5. Shapes are drawn hard-edged, sized 12-16 px, in the cells
of a 3x3 grid (at most one object per cell, >= 4 px between objects), so every object is one
4-connected component whose bounding-box fill ratio and top-half mass tell its shape:

    shape     fill = area / bbox area     top-half share of the area
    square    1.0                         0.5
    circle    ~0.78                       ~0.45-0.5
    diamond   ~0.5-0.58                   ~0.45-0.5
    triangle  ~0.55 (apex up)             ~0.33

Relations are defined on centroids: "A left of B" means the mean centroid of A's objects has a
smaller x than B's (by a margin, see solrl.rewards.geneval); the renderer puts A's objects in
grid columns strictly left of B's, so ground truth holds with a margin of about one cell.

Every possible prompt is enumerated once (:func:`prompt_table`, ~22.8k prompts); training
prompts are drawn from that table by category, which makes sampling, tokenization and
rendering batched tensor lookups (no per-sample Python in the pretraining loop).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import torch

IMAGE_SIZE = 64
GRID = 3
MAX_OBJECTS = 4
MIN_SIZE, MAX_SIZE = 12, 16
CELL_MARGIN = 2  # px between an object and its cell's border (>= 4 px between objects)

# name -> RGB, each channel 0 or 1 (pairwise L2 distance >= 1)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNT_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three", 4: "four"}
_WORD_COUNTS: dict[str, int] = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
# prompt categories (GenEval-like tasks); eval and training draw from each
CATEGORIES: tuple[str, ...] = ("single", "counting", "two_objects", "position", "composite")
TRAIN_CATEGORY_WEIGHTS: dict[str, float] = {
    "single": 0.15,
    "counting": 0.2,
    "two_objects": 0.2,
    "position": 0.25,
    "composite": 0.2,
}

# relation codes in tensors: 0 = single group, 1 = "and", 2.. = RELATIONS
REL_NONE, REL_AND = 0, 1
_REL_CODE = {None: REL_NONE, "and": REL_AND, **{r: i + 2 for i, r in enumerate(RELATIONS)}}
_REL_NAME = {v: k for k, v in _REL_CODE.items()}


@dataclass(frozen=True)
class ObjectGroup:
    """`count` identical objects: count in 1..4, colour in COLOURS, shape in SHAPES."""

    count: int
    colour: str
    shape: str

    def __post_init__(self):
        if self.count not in COUNT_WORDS:
            raise ValueError(f"count must be in 1..4, got {self.count!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; valid: {COLOUR_NAMES}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; valid: {SHAPES}")

    def text(self) -> str:
        noun = self.shape + ("s" if self.count > 1 else "")
        return f"{COUNT_WORDS[self.count]} {self.colour} {noun}"


@dataclass(frozen=True)
class SceneSpec:
    """What a prompt asks for: one or two groups; `relation` is None for one group, else
    "and" or one of RELATIONS (group 0 is the subject: "<g0> left of <g1>")."""

    groups: tuple[ObjectGroup, ...]
    relation: str | None = None

    def __post_init__(self):
        if len(self.groups) not in (1, 2):
            raise ValueError(f"a scene has 1 or 2 groups, got {len(self.groups)}")
        if len(self.groups) == 1 and self.relation is not None:
            raise ValueError(f"one group takes no relation, got {self.relation!r}")
        if len(self.groups) == 2:
            if self.relation not in _REL_CODE or self.relation is None:
                raise ValueError(
                    f"two groups need a relation in {('and', *RELATIONS)}, got {self.relation!r}"
                )
            a, b = self.groups
            if (a.colour, a.shape) == (b.colour, b.shape):
                raise ValueError(f"the two groups must differ in colour or shape, got {a} and {b}")
        total = sum(g.count for g in self.groups)
        if total > MAX_OBJECTS:
            raise ValueError(f"at most {MAX_OBJECTS} objects per scene, got {total}")

    @property
    def category(self) -> str:
        if len(self.groups) == 1:
            return "single" if self.groups[0].count == 1 else "counting"
        if any(g.count > 1 for g in self.groups):
            return "composite"
        return "two_objects" if self.relation == "and" else "position"

    def prompt(self) -> str:
        if len(self.groups) == 1:
            return self.groups[0].text()
        return f"{self.groups[0].text()} {self.relation} {self.groups[1].text()}"


def normalize_prompt(prompt: str) -> list[str]:
    """Lower-case words, punctuation dropped: "Two red circles." -> ["two", "red", "circles"]."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    cleaned = "".join(c if c.isalnum() or c.isspace() else " " for c in prompt.lower())
    return cleaned.split()


def _parse_group(words: list[str], i: int, prompt: str) -> tuple[ObjectGroup, int]:
    if i + 3 > len(words):
        raise ValueError(f"cannot parse {prompt!r}: expected '<count> <colour> <shape>' at word {i}")
    count_w, colour, noun = words[i : i + 3]
    if count_w not in _WORD_COUNTS:
        raise ValueError(f"cannot parse {prompt!r}: {count_w!r} is not a count {list(_WORD_COUNTS)}")
    shape = noun[:-1] if noun.endswith("s") and noun[:-1] in SHAPES else noun
    try:
        return ObjectGroup(_WORD_COUNTS[count_w], colour, shape), i + 3
    except ValueError as e:
        raise ValueError(f"cannot parse {prompt!r}: {e}") from None


def parse_prompt(prompt: str) -> SceneSpec:
    """Prompt text -> SceneSpec. Raises ValueError (quoting the prompt) if it is not in the grammar."""
    words = normalize_prompt(prompt)
    g0, i = _parse_group(words, 0, prompt)
    if i == len(words):
        return SceneSpec((g0,))
    rest = words[i:]
    for rel in ("and", *RELATIONS):
        rw = rel.split()
        if rest[: len(rw)] == rw:
            g1, j = _parse_group(words, i + len(rw), prompt)
            if j != len(words):
                raise ValueError(f"cannot parse {prompt!r}: unexpected words {words[j:]}")
            return SceneSpec((g0, g1), rel)
    raise ValueError(
        f"cannot parse {prompt!r}: expected 'and' or a relation {RELATIONS} after {words[:i]}"
    )


# ----------------------------------------------------------------------------------------------
# The enumerated prompt table


@dataclass(frozen=True)
class PromptTable:
    """Every prompt of the grammar, in a fixed order, with its spec as tensors (CPU, int64).

    count, colour, shape: [N, 2] (group 1 is count 0 / colour 0 / shape 0 when absent);
    relation: [N] (0 single, 1 "and", 2+i RELATIONS[i]); category: [N] index into CATEGORIES.
    """

    prompts: tuple[str, ...]
    specs: tuple[SceneSpec, ...]
    count: torch.Tensor
    colour: torch.Tensor
    shape: torch.Tensor
    relation: torch.Tensor
    category: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)


@functools.lru_cache(maxsize=1)
def prompt_table() -> PromptTable:
    specs: list[SceneSpec] = []
    kinds = [(c, s) for c in COLOUR_NAMES for s in SHAPES]
    for n in COUNT_WORDS:
        for c, s in kinds:
            specs.append(SceneSpec((ObjectGroup(n, c, s),)))
    count_pairs = [(a, b) for a in range(1, 4) for b in range(1, 4) if a + b <= MAX_OBJECTS]
    for rel in ("and", *RELATIONS):
        for na, nb in count_pairs:
            for ka in kinds:
                for kb in kinds:
                    if ka != kb:
                        specs.append(SceneSpec((ObjectGroup(na, *ka), ObjectGroup(nb, *kb)), rel))
    n = len(specs)
    count = torch.zeros(n, 2, dtype=torch.int64)
    colour = torch.zeros(n, 2, dtype=torch.int64)
    shape = torch.zeros(n, 2, dtype=torch.int64)
    for i, sp in enumerate(specs):
        for j, g in enumerate(sp.groups):
            count[i, j] = g.count
            colour[i, j] = COLOUR_NAMES.index(g.colour)
            shape[i, j] = SHAPES.index(g.shape)
    relation = torch.tensor([_REL_CODE[s.relation] for s in specs], dtype=torch.int64)
    category = torch.tensor([CATEGORIES.index(s.category) for s in specs], dtype=torch.int64)
    return PromptTable(
        tuple(s.prompt() for s in specs), tuple(specs), count, colour, shape, relation, category
    )


@functools.lru_cache(maxsize=1)
def _prompt_index() -> dict[str, int]:
    return {p: i for i, p in enumerate(prompt_table().prompts)}


def prompt_ids(prompts: list[str]) -> torch.Tensor:
    """Indices of prompts in prompt_table() ([B] int64); prompts are parsed, so any spelling
    the grammar accepts ("one red circle.") maps to its canonical row."""
    index = _prompt_index()
    return torch.tensor([index[parse_prompt(p).prompt()] for p in prompts], dtype=torch.int64)


def _as_generator(rng_or_seed: int | torch.Generator) -> torch.Generator:
    if isinstance(rng_or_seed, torch.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, bool) or not isinstance(rng_or_seed, int):
        raise TypeError(f"rng_or_seed must be an int or torch.Generator, got {rng_or_seed!r}")
    return torch.Generator().manual_seed(rng_or_seed)


def sample_prompt_ids(
    n: int, rng_or_seed: int | torch.Generator, weights: dict[str, float] | None = None
) -> torch.Tensor:
    """n rows of prompt_table() ([n] int64, CPU): a category by `weights` (default
    TRAIN_CATEGORY_WEIGHTS), then a prompt uniformly within it. Deterministic in the seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    weights = TRAIN_CATEGORY_WEIGHTS if weights is None else weights
    unknown = set(weights) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; valid: {CATEGORIES}")
    gen = _as_generator(rng_or_seed)
    table = prompt_table()
    w = torch.tensor([float(weights.get(c, 0.0)) for c in CATEGORIES], dtype=torch.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"category weights must be >= 0 with a positive sum, got {weights}")
    cats = torch.multinomial(w, n, replacement=True, generator=gen)
    sizes = torch.bincount(table.category, minlength=len(CATEGORIES))
    order = torch.argsort(table.category, stable=True)  # row ids grouped by category, in order
    starts = torch.cumsum(sizes, 0) - sizes  # where each category begins in `order`
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    within = (u * sizes[cats]).long().clamp_max(sizes[cats] - 1)
    return order[starts[cats] + within]


def sample_prompts(n: int, rng_or_seed: int | torch.Generator) -> list[str]:
    """n training prompts (the TRAIN_CATEGORY_WEIGHTS mix), deterministic in the seed."""
    table = prompt_table()
    return [table.prompts[i] for i in sample_prompt_ids(n, rng_or_seed).tolist()]


EVAL_PER_CATEGORY = 24


@functools.lru_cache(maxsize=1)
def _eval_prompts() -> tuple[str, ...]:
    table = prompt_table()
    rng = random.Random(20240611)  # fixed forever: the evaluation set must never change
    out: list[str] = []
    for ci, _ in enumerate(CATEGORIES):
        rows = [i for i in range(len(table)) if int(table.category[i]) == ci]
        out.extend(table.prompts[i] for i in sorted(rng.sample(rows, EVAL_PER_CATEGORY)))
    return tuple(out)


def eval_prompts() -> list[str]:
    """The fixed evaluation set: EVAL_PER_CATEGORY prompts from each category (120 in all),
    in CATEGORIES order."""
    return list(_eval_prompts())


# ----------------------------------------------------------------------------------------------
# Layout and rendering (batched torch, any device)


@dataclass
class SceneObjects:
    """Up to MAX_OBJECTS objects per scene, as [B, K] tensors (K = MAX_OBJECTS), int64.

    valid: bool, slot holds an object; group: 0/1 (which prompt group it depicts);
    colour / shape: indices into COLOUR_NAMES / SHAPES; x0, y0: top-left pixel of its
    size x size bounding square (x right, y down).
    """

    valid: torch.Tensor
    group: torch.Tensor
    colour: torch.Tensor
    shape: torch.Tensor
    x0: torch.Tensor
    y0: torch.Tensor
    size: torch.Tensor


def _cell_bounds(device) -> tuple[torch.Tensor, torch.Tensor]:
    edges = torch.tensor([round(i * IMAGE_SIZE / GRID) for i in range(GRID + 1)], device=device)
    return edges[:-1], edges[1:] - edges[:-1]  # start, width per row/column


def layout(
    count: torch.Tensor,
    colour: torch.Tensor,
    shape: torch.Tensor,
    relation: torch.Tensor,
    generator: torch.Generator | None = None,
) -> SceneObjects:
    """Random object placements satisfying the specs.

    count, colour, shape: [B, 2] int64 (group 1 count 0 when absent); relation: [B] codes as in
    PromptTable. generator: on the tensors' device (None: the global RNG).
    Each object gets its own grid cell; for a spatial relation a split column (row) k in {1, 2}
    is drawn and group 0's cells lie on one side of it, group 1's on the other.
    """
    dev = count.device
    b = count.shape[0]
    if count.shape != (b, 2) or colour.shape != (b, 2) or shape.shape != (b, 2):
        raise ValueError(
            f"count/colour/shape must be [B, 2], got {tuple(count.shape)}, "
            f"{tuple(colour.shape)}, {tuple(shape.shape)}"
        )
    if (count.sum(1) > MAX_OBJECTS).any() or (count[:, 0] < 1).any():
        raise ValueError(f"counts must be >= 1 for group 0 and sum to <= {MAX_OBJECTS}")

    def rand(*shape_):
        return torch.rand(*shape_, generator=generator, device=dev)

    cells = torch.arange(GRID * GRID, device=dev)
    row, col = cells // GRID, cells % GRID  # [9]
    k = 1 + (rand(b) < 0.5).long()  # split line, 1 or 2
    coord = torch.where(relation[:, None] >= 4, row[None], col[None])  # rows for above/below
    before = coord < k[:, None]  # [B, 9] cells before the split line
    # group 0 goes before the split for "left of"(2) / "above"(4), after for "right of"/"below"
    rel = relation[:, None]
    first = (rel == 2) | (rel == 4)
    spatial = rel >= 2
    allow0 = torch.where(spatial, before == first, torch.ones_like(before))
    allow1 = torch.where(spatial, before != first, torch.ones_like(before))

    def pick(allow: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        # the n best-scored allowed cells; [B, 9] bool
        scores = torch.where(allow, rand(b, GRID * GRID), torch.full_like(allow, -1.0, dtype=torch.float))
        rank = torch.argsort(torch.argsort(scores, dim=1, descending=True), dim=1)
        return (rank < n[:, None]) & allow

    chosen0 = pick(allow0, count[:, 0])
    chosen1 = pick(allow1 & ~chosen0, count[:, 1])
    # slot order: group 0's cells, then group 1's, then unused; cell order random via scores
    key = torch.where(chosen0, 0, torch.where(chosen1, 1, 2)) * 16 + torch.argsort(
        rand(b, GRID * GRID), dim=1
    )
    slot_cells = torch.argsort(key, dim=1)[:, :MAX_OBJECTS]  # [B, K]
    kk = torch.arange(MAX_OBJECTS, device=dev)[None]
    n0, n1 = count[:, :1], count[:, 1:]
    valid = kk < n0 + n1
    group = (kk >= n0).long()
    obj_colour = torch.gather(colour, 1, group)
    obj_shape = torch.gather(shape, 1, group)
    size = MIN_SIZE + (rand(b, MAX_OBJECTS) * (MAX_SIZE - MIN_SIZE + 1)).long()
    start, width = _cell_bounds(dev)
    crow, ccol = slot_cells // GRID, slot_cells % GRID

    def place(c: torch.Tensor) -> torch.Tensor:
        room = width[c] - 2 * CELL_MARGIN - size  # >= 1 free offset
        return start[c] + CELL_MARGIN + (rand(b, MAX_OBJECTS) * (room + 1)).long().clamp_max(room)

    x0, y0 = place(ccol), place(crow)
    zero = torch.zeros_like(x0)
    return SceneObjects(
        valid=valid,
        group=torch.where(valid, group, zero),
        colour=torch.where(valid, obj_colour, zero),
        shape=torch.where(valid, obj_shape, zero),
        x0=torch.where(valid, x0, zero),
        y0=torch.where(valid, y0, zero),
        size=torch.where(valid, size, zero),
    )


def shape_masks(shape: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, size: torch.Tensor,
                image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Pixel masks of objects: all args [...] int64 -> bool [..., H, W] (pixel centres tested)."""
    dev = shape.device
    p = torch.arange(image_size, device=dev, dtype=torch.float32) + 0.5
    s = size[..., None, None].float()
    dx = p[None, :] - (x0[..., None, None].float() + s / 2)  # [..., 1, W]
    dy = p[:, None] - (y0[..., None, None].float() + s / 2)  # [..., H, 1]
    half = s / 2
    in_box = (dx.abs() < half) & (dy.abs() < half)
    sq = in_box
    circ = dx * dx + dy * dy <= half * half
    diam = dx.abs() + dy.abs() <= half
    tri = in_box & (dx.abs() <= (dy + half) / 2)  # apex up: half-width grows (y - y0) / 2
    sh = shape[..., None, None]
    return torch.where(
        sh == 0, circ, torch.where(sh == 1, sq, torch.where(sh == 2, tri, diam))
    ) & in_box


def palette(device=None) -> torch.Tensor:
    """[len(COLOURS), 3] float32 RGB."""
    return torch.tensor(list(COLOURS.values()), dtype=torch.float32, device=device)


def render(objects: SceneObjects, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """SceneObjects -> images [B, 3, H, W] float32 in {0, 1}, black background."""
    masks = shape_masks(objects.shape, objects.x0, objects.y0, objects.size, image_size)
    masks = masks & objects.valid[..., None, None]  # [B, K, H, W]
    rgb = palette(objects.colour.device)[objects.colour]  # [B, K, 3]
    img = torch.einsum("bkhw,bkc->bchw", masks.float(), rgb)
    return img.clamp_(0, 1)  # objects never overlap; clamp only guards misuse


def render_prompts(
    prompts: list[str], rng_or_seed: int | torch.Generator = 0, device=None
) -> torch.Tensor:
    """Ground-truth images [B, 3, H, W] for prompts (a fresh random layout each)."""
    ids = prompt_ids(prompts)
    return render_ids(ids, rng_or_seed, device)


def render_ids(
    ids: torch.Tensor, rng_or_seed: int | torch.Generator = 0, device=None
) -> torch.Tensor:
    """Ground-truth images [B, 3, H, W] for rows `ids` of prompt_table()."""
    table = prompt_table()
    dev = torch.device(device) if device is not None else ids.device
    if isinstance(rng_or_seed, torch.Generator):
        gen = rng_or_seed
    else:
        gen = torch.Generator(device=dev).manual_seed(int(rng_or_seed))
    ids = ids.cpu()
    objs = layout(
        table.count[ids].to(dev),
        table.colour[ids].to(dev),
        table.shape[ids].to(dev),
        table.relation[ids].to(dev),
        generator=gen,
    )
    return render(objs)
