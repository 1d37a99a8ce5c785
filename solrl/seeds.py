"""Counter-based noise (DESIGN §4 "Seeds"): the noise of (run seed, prompt, candidate, step) is a
pure function of those integers, never of batch size, batch position, thread count or device.

    noise = gaussian_noise(seed, prompt_ids, candidate_ids, step, shape=(C, H, W), device=dev)

How: Philox4x32-10 (Salmon et al., SC'11; the generator behind cuRAND and torch's CUDA RNG)
written in plain torch int64 arithmetic. The 128-bit counter is (element block j, step word,
candidate i, prompt id p) and the 64-bit key is the run seed; one call yields 4 uint32, i.e. the
uniforms of elements 4j..4j+3 of one sample. Every product is split into 16-bit limbs so no int64
ever overflows. The uniforms become normals through Wichura's AS241 inverse CDF (PPND16) in
float64, with a log evaluated by frexp + an atanh series: only +, -, *, /, sqrt, frexp — all
correctly rounded IEEE operations, so CPU and CUDA give the same bits in eager mode (do not
torch.compile these functions: fused multiply-adds would change the rounding).

Step words: ``step_word(stream, k)`` packs a stream tag (preview/regeneration share stream 0 so
stage two rebuilds stage one's initial latent; evaluation uses its own) and the sampler step k
(k = 0: the initial latent; k >= 1: the SDE noise of transition k - 1 -> k).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

U32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
PHILOX_ROUNDS = 10

STREAM_ROLLOUT = 0  # preview, regeneration, baselines: same initial latent per (prompt, candidate)
STREAM_EVAL = 1  # fixed evaluation prompts


def _as_u32_tensor(x: int | Sequence[int] | torch.Tensor, n: int, device) -> torch.Tensor:
    """int or [n] ints -> int64 [n] in [0, 2^32), checked."""
    t = torch.as_tensor(x, dtype=torch.int64, device=device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"expected a scalar or {n} values, got shape {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > U32):  # syncs: one input check per call
        lo, hi = int(t.min()), int(t.max())
        raise ValueError(f"counter words must lie in [0, 2^32), got min {lo} max {hi}")
    return t


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * m; a int64 in [0, 2^32), m a 32-bit constant.

    m = mh * 2^16 + ml, so a * m = t0 + t1 * 2^16 with t0, t1 < 2^48 (no int64 overflow):
    lo = (t0 + (t1 mod 2^16) * 2^16) mod 2^32;  hi = floor((floor(t0 / 2^16) + t1) / 2^16).
    """
    t0 = a * (m & 0xFFFF)
    t1 = a * (m >> 16)
    lo = (t0 + ((t1 & 0xFFFF) << 16)) & U32
    hi = ((t0 >> 16) + t1) >> 16
    return hi, lo


def philox4x32(
    counter: torch.Tensor, key: tuple[int, int], rounds: int = PHILOX_ROUNDS
) -> torch.Tensor:
    """Philox4x32-R. counter: int64 [..., 4], words in [0, 2^32); key: two 32-bit ints.

    Returns int64 [..., 4] with words in [0, 2^32). Matches Random123's known-answer vectors.
    """
    if counter.dtype != torch.int64 or counter.shape[-1] != 4:
        shape = tuple(counter.shape)
        raise ValueError(f"counter must be int64 [..., 4], got {counter.dtype} {shape}")
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key[0] & U32, key[1] & U32
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & U32, (k1 + PHILOX_W1) & U32
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack([c0, c1, c2, c3], dim=-1)


def _check_seed(seed: int) -> tuple[int, int]:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}")
    return seed & U32, seed >> 32


def step_word(stream: int, step: int) -> int:
    """Pack (stream < 2^16, sampler step < 2^16) into one 32-bit counter word."""
    if not (0 <= stream < 2**16 and 0 <= step < 2**16):
        raise ValueError(f"stream and step must lie in [0, 65536), got stream={stream} step={step}")
    return (stream << 16) | step


def uniform_u32(
    seed: int,
    prompt_ids: torch.Tensor | Sequence[int],
    candidate_ids: torch.Tensor | Sequence[int],
    step: int | torch.Tensor | Sequence[int],
    numel: int,
    device=None,
) -> torch.Tensor:
    """Raw 32-bit draws: int64 [B, numel] in [0, 2^32); row b is keyed by
    (seed, prompt_ids[b], candidate_ids[b], step[b]) and element e by counter block e // 4."""
    key = _check_seed(seed)
    pid = torch.as_tensor(prompt_ids, dtype=torch.int64, device=device)
    if pid.ndim != 1:
        raise ValueError(f"prompt_ids must be 1-D, got shape {tuple(pid.shape)}")
    b = pid.shape[0]
    pid = _as_u32_tensor(pid, b, device)
    cid = _as_u32_tensor(candidate_ids, b, device)
    stp = _as_u32_tensor(step, b, device)
    blocks = -(-numel // 4)
    j = torch.arange(blocks, dtype=torch.int64, device=device)
    if blocks > U32:
        raise ValueError(f"numel {numel} too large for a 32-bit block counter")
    counter = torch.stack(
        [
            j.expand(b, blocks),
            stp[:, None].expand(b, blocks),
            cid[:, None].expand(b, blocks),
            pid[:, None].expand(b, blocks),
        ],
        dim=-1,
    )  # [B, blocks, 4]
    return philox4x32(counter, key).reshape(b, blocks * 4)[:, :numel]


# --- normal inverse CDF (Wichura 1988, AS241 PPND16; relative accuracy ~1e-16) ---------------
_A = (3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3,
      1.3731693765509461125e4, 4.5921953931549871457e4, 6.7265770927008700853e4,
      3.3430575583588128105e4, 2.5090809287301226727e3)  # fmt: skip
_B = (1.0, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
      2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4,
      5.2264952788528545610e3)  # fmt: skip
_C = (1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
      3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
      2.27238449892691845833e-2, 7.74545014278341407640e-4)  # fmt: skip
_D = (1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
      1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
      1.05075007164441684324e-9)  # fmt: skip
_E = (6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
      2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
      2.71155556874348757815e-5, 2.01033439929228813265e-7)  # fmt: skip
_F = (1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
      7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
      2.04426310338993978564e-15)  # fmt: skip
_LN2 = math.log(2.0)
_ATANH_TERMS = 12  # |s| <= 0.1716 -> s^(2*12) / 25 < 1e-19


def _poly(coeffs: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """sum_k coeffs[k] * x^k by Horner, separate mul and add (no fma)."""
    acc = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * x + c
    return acc


def exact_log(x: torch.Tensor) -> torch.Tensor:
    """Natural log of float64 x > 0 from correctly rounded operations only (same bits anywhere).

    x = m * 2^e with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m - 1) / (m + 1).
    Absolute error < 1e-15 for x in (0, 1].
    """
    if x.dtype != torch.float64:
        raise TypeError(f"exact_log needs float64, got {x.dtype}")
    m, e = torch.frexp(x)  # m in [0.5, 1)
    small = m < math.sqrt(0.5)
    m = torch.where(small, m * 2.0, m)
    e = (e - small.to(e.dtype)).to(torch.float64)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    series = _poly(tuple(1.0 / (2 * k + 1) for k in range(_ATANH_TERMS)), s2)
    return e * _LN2 + 2.0 * s * series


def normal_icdf(u: torch.Tensor) -> torch.Tensor:
    """Phi^-1(u) for float64 u in (0, 1) (AS241 PPND16), device-independent bits."""
    if u.dtype != torch.float64:
        raise TypeError(f"normal_icdf needs float64, got {u.dtype}")
    q = u - 0.5
    # central region |q| <= 0.425 (85% of draws)
    r = 0.180625 - q * q
    z = q * _poly(_A, r) / _poly(_B, r)
    # tails: r = sqrt(-log(min(u, 1 - u))), computed on the tail elements only (elementwise, so
    # which elements share a call never changes a value)
    tail = q.abs() > 0.425
    if bool(tail.any()):  # syncs on GPU: one flag per call
        qt = q[tail]
        r = torch.sqrt(-exact_log(torch.minimum(u[tail], 1.0 - u[tail])))
        zt = _poly(_C, r - 1.6) / _poly(_D, r - 1.6)
        far = r > 5.0  # u < 1.4e-11: only reachable with finer uniforms than 32 bits
        if bool(far.any()):
            zt[far] = _poly(_E, r[far] - 5.0) / _poly(_F, r[far] - 5.0)
        z[tail] = torch.where(qt < 0, -zt, zt)
    return z


def gaussian_noise(
    seed: int,
    prompt_ids: torch.Tensor | Sequence[int],
    candidate_ids: torch.Tensor | Sequence[int],
    step: int | torch.Tensor | Sequence[int],
    shape: Sequence[int],
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise [B, *shape] where row b depends only on
    (seed, prompt_ids[b], candidate_ids[b], step[b]) — bit-identical for any batching or device.

    prompt_ids, candidate_ids: B ints in [0, 2^32) (tensors or lists); step: one int or B ints,
    usually ``step_word(stream, k)``. Values are float32 rounded from float64, then cast to dtype.
    |z| <= 6.3 (uniforms are (n + 0.5) / 2^32).
    """
    numel = math.prod(shape)
    bits = uniform_u32(seed, prompt_ids, candidate_ids, step, numel, device=device)
    u = (bits.to(torch.float64) + 0.5) * 2.0**-32  # exact: < 34 significant bits
    z = normal_icdf(u).to(torch.float32)
    return z.reshape(bits.shape[0], *shape).to(dtype)


def derive_seed(*words: int) -> int:
    """A 63-bit seed from a tuple of ints in [0, 2^64) (e.g. (run seed, tag, iteration)), for
    torch.Generator streams that need only be reproducible, not batch-invariant.

    A Philox sponge: each word is a counter under a key that is the previous output."""
    if not words:
        raise ValueError("derive_seed needs at least one int")
    ws = [int(w) for w in words]
    if any(w < 0 or w >= 2**64 for w in ws):
        raise ValueError(f"derive_seed words must lie in [0, 2^64), got {ws}")
    k0, k1 = 0x5EED, len(ws)
    for i, w in enumerate(ws):
        ctr = torch.tensor([[w & U32, w >> 32, i, 0x0DE7]], dtype=torch.int64)
        out = philox4x32(ctr, (k0, k1))[0].tolist()
        k0, k1 = out[0], out[1]
    return ((k0 << 32) | k1) & (2**63 - 1)
