"""A GenEval-like programmatic detector for the toy world (solrl.toy.world).

Pipeline (batched torch on any device; the per-image matching runs on CPU lists):
1. Colour segmentation: every channel thresholded at 0.5 -> a code 0..7 per pixel
   (0 = black background; the other 7 are the palette's cube corners).
2. Connected components: 4-connected runs of equal non-zero code, labelled by alternating
   row-run / column-run min-propagation until stable (:func:`connected_components`).
3. Objects: components with area >= MIN_AREA (smaller specks are noise); each gets its
   colour, centroid and a shape from two geometric features (:func:`classify_shapes`):
   top-half share of the area < 0.4 -> triangle (apex up); else fill ratio (area / bbox
   area) >= 0.9 -> square, >= 0.68 -> circle, else diamond.
4. Scoring against the parsed prompt (:meth:`GenEvalReward.evaluate`): the prompt's objects
   become slots; a detection matches a slot with score [colour ok] + [shape ok]; an optimal
   assignment (Hungarian) pairs slots and detections with score >= 1; unmatched detections
   with score >= 1 join their best group as extras (detections matching nothing are ignored).
   Per group g with expected count c_g, assigned detections n_g, matched detections m_g:
     count    = mean_g 1 / (1 + |n_g - c_g|)
     colour   = mean_g (#matched with the right colour / m_g), 0 if m_g = 0
     shape    = mean_g (#matched with the right shape / m_g), 0 if m_g = 0
     position = clamp(d / POSITION_MARGIN, 0, 1), d = signed distance in px between the two
                groups' mean centroids along the relation's axis (1 if the prompt has none;
                0 if a group has no detection)
   The reward is the mean of the applicable skills (position only for spatial prompts);
   "correct" (GenEval's binary score) = every applicable skill is exactly 1.

So ground-truth renders score exactly 1.0, a wrong count lowers only `count`, a wrong colour
only `colour` (when the new colour is not the other group's), a wrong shape only `shape`,
swapped positions only `position`; brightness/contrast changes that keep channels on their
side of 0.5, specks under MIN_AREA and moves that keep the relation change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..toy import world

SKILLS: tuple[str, ...] = ("count", "colour", "shape", "position")
MIN_AREA = 24  # px; the smallest ground-truth object (12 px triangle) has ~70
POSITION_MARGIN = 6.0  # px, about a tenth of the 64 px image side
TRIANGLE_MAX_TOP_SHARE = 0.4
SQUARE_MIN_FILL = 0.9
CIRCLE_MIN_FILL = 0.68

# palette index of each 3-bit code r*4 + g*2 + b (-1: background)
_CODE_TO_COLOUR = [-1] * 8
for _i, _rgb in enumerate(world.COLOURS.values()):
    _CODE_TO_COLOUR[int(_rgb[0]) * 4 + int(_rgb[1]) * 2 + int(_rgb[2])] = _i


def colour_codes(images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, H, W] float -> codes [B, H, W] uint8 in 0..7 (r*4 + g*2 + b, 0 = black)."""
    bits = (images > 0.5).to(torch.uint8)
    return bits[:, 0] * 4 + bits[:, 1] * 2 + bits[:, 2]


def _foreground_components(codes: torch.Tensor, max_iters: int | None = None):
    """Sparse 4-connected labelling of equal non-zero codes.

    codes: [N, H, W] integer. Returns (pix, label), both [F] int64 over the F foreground
    pixels in row-major order: pix = flat index n * H * W + y * W + x, label = the smallest
    pix in the pixel's component. Alternates min-propagation over horizontal runs and over
    vertical runs until stable: each round crosses whole runs, so convex blobs settle in
    2-3 rounds (the cap H * W is never reached).
    """
    n, h, w = codes.shape
    flat = codes.flatten()
    fg = flat > 0
    pix = torch.nonzero(fg).flatten()  # [F], row-major
    code = flat[pix]
    x, y = pix % w, (pix // w) % h
    left = torch.where(x > 0, flat[(pix - 1).clamp_min(0)], 0)
    up = torch.where(y > 0, flat[(pix - w).clamp_min(0)], 0)
    # horizontal runs are contiguous in row-major order
    run_h = torch.cumsum(left != code, 0) - 1
    # vertical runs are contiguous in column-major order: list fg pixels that way (no sort:
    # nonzero of the transposed mask), mapped to their row-major positions
    pos = torch.empty(flat.numel(), dtype=torch.int64, device=flat.device)
    pos[pix] = torch.arange(pix.numel(), device=flat.device)
    fg_t = fg.view(n, h, w).transpose(1, 2).flatten()
    q = torch.nonzero(fg_t).flatten()  # n * H * W + x * H + y
    col_major = pos[q // (h * w) * (h * w) + (q % h) * w + (q // h) % w]
    run_v = torch.empty_like(run_h)
    run_v[col_major] = torch.cumsum((up != code)[col_major], 0) - 1
    n_h = int(run_h[-1]) + 1 if pix.numel() else 0
    n_v = int(run_v.max()) + 1 if pix.numel() else 0
    big = torch.iinfo(torch.int64).max
    label = pix.clone()
    for _ in range(max_iters or h * w):
        new = torch.full((n_h,), big, dtype=pix.dtype, device=pix.device)
        new = new.scatter_reduce_(0, run_h, label, reduce="amin")[run_h]
        m_v = torch.full((n_v,), big, dtype=pix.dtype, device=pix.device)
        new = m_v.scatter_reduce_(0, run_v, new, reduce="amin")[run_v]
        if torch.equal(new, label):  # syncs with the device once per round
            break
        label = new
    return pix, label


def connected_components(codes: torch.Tensor, max_iters: int | None = None) -> torch.Tensor:
    """4-connected components of equal non-zero code.

    codes: [N, H, W] integer (0 = background). Returns labels [N, H, W] int64: for a foreground
    pixel, the smallest flat index (y * W + x) in its component; -1 for background.
    """
    if codes.dim() != 3:
        raise ValueError(f"codes must be [N, H, W], got {tuple(codes.shape)}")
    n, h, w = codes.shape
    pix, label = _foreground_components(codes, max_iters)
    out = torch.full((n * h * w,), -1, dtype=torch.int64, device=codes.device)
    out[pix] = label % (h * w)
    return out.view(n, h, w)


@dataclass
class Components:
    """Detected objects of a batch, flattened: [M] tensors (CPU), sorted by (image, label).

    image: which image; colour: palette index; area: px; cx, cy: centroid (px, pixel centres);
    x0, y0, x1, y1: inclusive bbox; top_share: share of the area in the bbox's top half;
    fill: area / bbox area; shape: index into world.SHAPES.
    """

    image: torch.Tensor
    colour: torch.Tensor
    area: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    x0: torch.Tensor
    y0: torch.Tensor
    x1: torch.Tensor
    y1: torch.Tensor
    top_share: torch.Tensor
    fill: torch.Tensor
    shape: torch.Tensor


def classify_shapes(fill: torch.Tensor, top_share: torch.Tensor) -> torch.Tensor:
    """Shape index (world.SHAPES order: circle, square, triangle, diamond) from features."""
    circle, square, triangle, diamond = (world.SHAPES.index(s) for s in
                                         ("circle", "square", "triangle", "diamond"))
    out = torch.full_like(fill, diamond, dtype=torch.int64)
    out = torch.where(fill >= CIRCLE_MIN_FILL, circle, out)
    out = torch.where(fill >= SQUARE_MIN_FILL, square, out)
    return torch.where(top_share < TRIANGLE_MAX_TOP_SHARE, triangle, out)


def detect(images: torch.Tensor, min_area: int = MIN_AREA) -> Components:
    """images [B, 3, H, W] float in [0, 1] -> the objects found (see module docstring)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    b, _, h, w = images.shape
    codes = colour_codes(images.float())
    pix, lab = _foreground_components(codes)
    is_root = lab == pix  # one root (the label pixel) per component
    uniq = pix[is_root]  # [M] component labels, sorted by (image, label)
    m = uniq.numel()
    comp_of = torch.empty(codes.numel(), dtype=torch.int64, device=pix.device)
    comp_of[uniq] = torch.arange(m, device=pix.device)
    inv = comp_of[lab]  # [F] component of each foreground pixel
    ys, xs = (pix // w) % h, pix % w

    def reduce(v: torch.Tensor, how: str) -> torch.Tensor:
        init = {"sum": 0, "amin": h * w, "amax": -1}[how]
        out = torch.full((m,), init, dtype=v.dtype, device=v.device)
        return out.scatter_reduce_(0, inv, v, reduce=how)

    area = torch.bincount(inv, minlength=m)
    x0, x1, y0, y1 = reduce(xs, "amin"), reduce(xs, "amax"), reduce(ys, "amin"), reduce(ys, "amax")
    bh = y1 - y0 + 1
    top = reduce((2 * (ys - y0[inv]) < bh[inv]).long(), "sum")
    cx = reduce(xs.double(), "sum") / area + 0.5
    cy = reduce(ys.double(), "sum") / area + 0.5
    fill = area.double() / ((x1 - x0 + 1) * bh).double()
    top_share = top.double() / area.double()
    code = codes.flatten()[uniq].long()  # the code at each component's label pixel
    colour = torch.tensor(_CODE_TO_COLOUR, device=images.device)[code]
    keep = area >= min_area
    comps = Components(
        image=uniq // (h * w), colour=colour, area=area, cx=cx, cy=cy, x0=x0, y0=y0, x1=x1,
        y1=y1, top_share=top_share, fill=fill, shape=classify_shapes(fill, top_share),
    )
    return Components(**{k: v[keep].cpu() for k, v in vars(comps).items()})


@dataclass
class GenEvalResult:
    """Per image ([B] float32 tensors on the images' device): skill scores in [0, 1] (position
    is 1.0 where the prompt has no spatial relation), `position_applicable` (0/1), `reward`
    (mean of applicable skills) and `correct` (1.0 iff every applicable skill is 1)."""

    count: torch.Tensor
    colour: torch.Tensor
    shape: torch.Tensor
    position: torch.Tensor
    position_applicable: torch.Tensor
    reward: torch.Tensor
    correct: torch.Tensor
    category: list[str]


def _linear_sum_assignment(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(score, maximize=True)


def score_scene(spec: world.SceneSpec, det: list[tuple[int, int, float, float]]) -> dict[str, float]:
    """Skill scores of one image. det: detections (colour index, shape index, cx, cy)."""
    groups = spec.groups
    g_col = [world.COLOUR_NAMES.index(g.colour) for g in groups]
    g_shp = [world.SHAPES.index(g.shape) for g in groups]
    slots = [gi for gi, g in enumerate(groups) for _ in range(g.count)]
    match = np.array(
        [[(d[0] == g_col[gi]) + (d[1] == g_shp[gi]) for d in det] for gi in slots], dtype=np.int64
    ).reshape(len(slots), len(det))
    assigned: list[int | None] = [None] * len(det)  # group of each detection
    matched = [[] for _ in groups]  # detections matched to each group's slots
    if det:
        rows, cols = _linear_sum_assignment(match)
        for r, c in zip(rows.tolist(), cols.tolist()):
            if match[r, c] >= 1:
                assigned[c] = slots[r]
                matched[slots[r]].append(c)
        for c in range(len(det)):
            if assigned[c] is None:
                best = [int((det[c][0] == g_col[gi]) + (det[c][1] == g_shp[gi])) for gi in
                        range(len(groups))]
                if max(best) >= 1:
                    assigned[c] = int(np.argmax(best))  # ties -> the first group
    count = colour = shape = 0.0
    for gi, g in enumerate(groups):
        n = sum(1 for a in assigned if a == gi)
        count += 1.0 / (1 + abs(n - g.count))
        if matched[gi]:
            colour += sum(det[c][0] == g_col[gi] for c in matched[gi]) / len(matched[gi])
            shape += sum(det[c][1] == g_shp[gi] for c in matched[gi]) / len(matched[gi])
    ng = len(groups)
    out = {"count": count / ng, "colour": colour / ng, "shape": shape / ng, "position": 1.0}
    if spec.relation in world.RELATIONS:
        cents = []
        for gi in range(2):
            pts = [(det[c][2], det[c][3]) for c in range(len(det)) if assigned[c] == gi]
            cents.append(np.mean(pts, axis=0) if pts else None)
        if cents[0] is None or cents[1] is None:
            out["position"] = 0.0
        else:
            (ax, ay), (bx, by) = cents
            d = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[
                spec.relation
            ]
            out["position"] = float(min(max(d / POSITION_MARGIN, 0.0), 1.0))
    return out


class GenEvalReward:
    """The toy world's GenEval-like reward: images + prompts (toy grammar) -> [B] in [0, 1].

    Deterministic, batched; images on any device (segmentation and components run there,
    the small per-image assignment on CPU). Prompts outside the grammar raise ValueError.
    """

    name = "geneval"

    def __init__(self, min_area: int = MIN_AREA):
        if min_area < 1:
            raise ValueError(f"min_area must be >= 1, got {min_area}")
        self.min_area = min_area

    def _check(self, images: torch.Tensor, prompts: list[str]) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got {got}")
        if isinstance(prompts, str) or len(prompts) != images.shape[0]:
            raise ValueError(
                f"need one prompt per image: {images.shape[0]} images, "
                f"{'a str' if isinstance(prompts, str) else len(prompts)} prompts"
            )

    def evaluate(self, images: torch.Tensor, prompts: list[str]) -> GenEvalResult:
        self._check(images, prompts)
        specs = [world.parse_prompt(p) for p in prompts]
        comps = detect(images, self.min_area)
        per_image: list[list[tuple[int, int, float, float]]] = [[] for _ in prompts]
        for i, c, s, x, y in zip(comps.image.tolist(), comps.colour.tolist(),
                                 comps.shape.tolist(), comps.cx.tolist(), comps.cy.tolist()):
            per_image[i].append((c, s, x, y))
        rows = [score_scene(sp, det) for sp, det in zip(specs, per_image)]
        dev = images.device

        def col(key: str) -> torch.Tensor:
            return torch.tensor([r[key] for r in rows], dtype=torch.float32, device=dev)

        applicable = torch.tensor([sp.relation in world.RELATIONS for sp in specs], device=dev)
        skills = torch.stack([col(k) for k in SKILLS])  # [4, B]
        n_app = 3 + applicable.float()
        reward = (skills[:3].sum(0) + skills[3] * applicable) / n_app
        correct = (skills == 1).all(0).float()
        return GenEvalResult(
            count=skills[0], colour=skills[1], shape=skills[2], position=skills[3],
            position_applicable=applicable.float(), reward=reward.float(), correct=correct,
            category=[sp.category for sp in specs],
        )

    def score_skills(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per-skill scores, each [B] float32 on images' device: "count", "colour", "shape",
        "position" (1.0 where not applicable), "correct" (0/1, all skills right)."""
        r = self.evaluate(images, prompts)
        return {"count": r.count, "colour": r.colour, "shape": r.shape,
                "position": r.position, "correct": r.correct}

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.evaluate(images, prompts).reward
