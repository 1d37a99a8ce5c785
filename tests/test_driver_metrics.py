"""solrl.metrics: sample-grid titles and labels, checkpoint file modes."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from solrl.metrics import RunLogger, grid_title, prompt_label, save_checkpoint

LONG_PROMPT = "three green diamonds above a red circle on a white background, flat vector art"


# --- sample grids -------------------------------------------------------------------------------


def test_grid_title_says_what_is_shown():
    assert grid_title(7, fp4=True, bf16=True) == \
        "iteration 7: FP4 preview vs BF16 regeneration (same seeds)"
    assert grid_title(7, fp4=True, bf16=False) == "iteration 7: FP4 rollouts"
    assert grid_title(7, fp4=False, bf16=True) == "iteration 7: BF16 rollouts"
    with pytest.raises(ValueError):
        grid_title(7, fp4=False, bf16=False)


def test_prompt_label_wraps_at_words_and_marks_a_cut():
    assert prompt_label("a cat") == "a cat"
    lines = prompt_label("three green diamonds above a red circle", width=24).split("\n")
    assert lines == ["three green diamonds", "above a red circle"]
    lines = prompt_label(LONG_PROMPT, width=24, max_lines=3).split("\n")
    assert len(lines) == 3 and all(len(ln) <= 24 for ln in lines)
    assert lines[-1].endswith(" \u2026")
    words = LONG_PROMPT.replace(",", "").split()
    shown = " ".join(lines)[: -len(" \u2026")].replace(",", "").split()
    assert shown == words[: len(shown)]  # whole words only, in order: no "diamon"


@pytest.fixture
def kept_figures(monkeypatch):
    """The figures sample_grid closes, kept for inspection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs, close = [], plt.close

    def keep(fig=None):
        figs.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return figs


@pytest.mark.parametrize("cols", [2, 8])
@pytest.mark.parametrize("shown", ["both", "fp4", "bf16"])
def test_sample_grid_title_and_labels_fit(tmp_path, kept_figures, shown, cols):
    """sol_rl (both rows), naive_fp4 (FP4 only), bf16 (BF16 only): the PNG is written, its
    title names what is shown, and title and prompt labels lie inside the figure, even with
    two columns (rollout.select=2)."""
    g = torch.Generator().manual_seed(0)
    prompts = [LONG_PROMPT, "a cat"]

    def images():
        return torch.rand(len(prompts), cols, 3, 8, 8, generator=g)

    def rewards():
        return torch.rand(len(prompts), cols, generator=g)

    fp4, bf16 = (images() if shown in ("both", kind) else None for kind in ("fp4", "bf16"))
    logger = RunLogger(tmp_path, tensorboard=False)
    path = logger.sample_grid(3, prompts, fp4, bf16, None if fp4 is None else rewards(),
                              None if bf16 is None else rewards())
    assert path == tmp_path / "samples" / "iter_000003.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (fig,) = kept_figures
    title = fig.get_suptitle()
    assert " ".join(title.split()) == grid_title(3, fp4 is not None, bf16 is not None)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # plt.close detached the figure's canvas
    width = fig.bbox.width
    (title_text,) = [t for t in fig.texts if t.get_text() == title]
    box = title_text.get_window_extent(renderer)
    assert 0 <= box.x0 and box.x1 <= width, (box, width)
    labels = [ax.yaxis.label for ax in fig.axes if ax.get_ylabel()]
    assert [lb.get_text() for lb in labels] == [prompt_label(p) for p in prompts]
    for lb in labels:
        assert lb.get_window_extent(renderer).x0 >= 0


# --- checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o027])
def test_checkpoint_files_get_the_mode_open_gives(tmp_path, umask):
    """Every checkpoint file (policy.safetensors too, which safetensors writes through a 0600
    temp file) has the mode a file made by open() has under the same umask."""
    old = os.umask(umask)
    try:
        with open(tmp_path / "reference.txt", "w") as f:
            f.write("x")
        ckpt = save_checkpoint(tmp_path / "run", 5, {"w": torch.ones(4)}, {"state": {}},
                               {"next_iteration": 6}, keep=2)
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "reference.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == ["optimizer.pt", "policy.safetensors", "state.json"]
    modes = {name: oct(stat.S_IMODE((ckpt / name).stat().st_mode)) for name in files}
    assert modes == dict.fromkeys(files, oct(expected))
