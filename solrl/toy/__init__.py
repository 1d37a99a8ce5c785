"""The bundled toy world: procedural coloured-shape scenes, their prompt grammar, a tiny
text-to-image flow model (diffusers SD3Transformer2DModel) with weights shipped in the
package, pretraining and evaluation.

    from solrl.toy import load_pretrained
    from solrl.toy.world import sample_prompts, eval_prompts
    model = load_pretrained(device="cpu")          # no network; solrl/toy/weights/
    cond = model.encode_prompts(["two red circles left of a blue square"])

`python -m solrl.toy.pretrain --help`, `python -m solrl.toy.eval --help`.
"""

from .model import ToyModelConfig, ToyT2I, load_pretrained
from .world import eval_prompts, parse_prompt, sample_prompts

__all__ = [
    "ToyModelConfig",
    "ToyT2I",
    "eval_prompts",
    "load_pretrained",
    "parse_prompt",
    "sample_prompts",
]
