"""solrl: Sol-RL for text-to-image flow models (FP4 explore, BF16 train).

Run `python -m solrl.train --help`.
"""

__version__ = "0.1.0"
