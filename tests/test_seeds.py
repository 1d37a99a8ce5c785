"""Counter-based noise (solrl.seeds): Philox KATs, batch/order/device invariance, distribution."""

import pytest
import scipy.special
import scipy.stats
import torch

from solrl import seeds

U32 = 0xFFFFFFFF


@pytest.mark.parametrize(
    "ctr, key, expected",
    [  # Random123 kat_vectors, philox4x32_10
        pytest.param((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8), id="zeros"),
        pytest.param((U32,) * 4, (U32, U32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD), id="ones"),
        pytest.param(
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
            id="pi",
        ),
    ],
)
def test_philox_known_answers(ctr, key, expected):
    out = seeds.philox4x32(torch.tensor([ctr], dtype=torch.int64), key)
    assert out[0].tolist() == list(expected)


def test_mulhilo_matches_python_ints():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 2**32, (1000,), generator=g, dtype=torch.int64)
    a[:3] = torch.tensor([0, 1, U32])
    for m in (seeds.PHILOX_M0, seeds.PHILOX_M1):
        hi, lo = seeds._mulhilo(a, m)
        ref = [int(x) * m for x in a.tolist()]
        assert hi.tolist() == [r >> 32 for r in ref]
        assert lo.tolist() == [r & U32 for r in ref]


def _keys(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**32, (n,), generator=g), torch.randint(0, 96, (n,), generator=g)


@pytest.mark.parametrize("shape", [(3, 8, 8), (16, 5, 7), (1, 1, 3)], ids=["toy", "odd", "tiny"])
def test_noise_is_independent_of_batch_size_and_order(shape):
    uids, cands = _keys(13)
    word = seeds.step_word(seeds.STREAM_ROLLOUT, 0)
    full = seeds.gaussian_noise(12345, uids, cands, word, shape)
    assert full.shape == (13, *shape) and full.dtype == torch.float32
    # one at a time
    for i in range(13):
        one = seeds.gaussian_noise(12345, uids[i : i + 1], cands[i : i + 1], word, shape)
        assert torch.equal(one[0], full[i])
    # reversed and shuffled batches, in uneven chunks
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(3))
    parts = [seeds.gaussian_noise(12345, uids[p], cands[p], word, shape) for p in perm.split(5)]
    assert torch.equal(torch.cat(parts), full[perm])


def test_noise_depends_on_every_key_word():
    uids, cands = torch.tensor([7, 7, 7, 8, 7]), torch.tensor([3, 3, 4, 3, 3])
    steps = torch.tensor([0, 1, 0, 0, 0])
    z = seeds.gaussian_noise(42, uids, cands, steps, (4, 4))
    other_seed = seeds.gaussian_noise(43, uids[:1], cands[:1], 0, (4, 4))
    rows = [z[0], z[1], z[2], z[3], other_seed[0]]
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            assert not torch.equal(rows[i], rows[j]), (i, j)
    assert torch.equal(z[0], z[4])


def test_seed_above_32_bits_uses_high_word():
    a = seeds.gaussian_noise(5, [1], [1], 0, (8,))
    b = seeds.gaussian_noise(5 + 2**32, [1], [1], 0, (8,))
    assert not torch.equal(a, b)


def test_noise_is_standard_normal():
    uids, cands = torch.arange(64), torch.zeros(64, dtype=torch.int64)
    z = seeds.gaussian_noise(0, uids, cands, 0, (32, 32)).double().flatten()  # 65536 draws
    assert abs(float(z.mean())) < 0.02
    assert abs(float(z.std()) - 1) < 0.02
    ks = scipy.stats.kstest(z.numpy(), "norm")
    assert ks.pvalue > 1e-3, ks
    # neighbouring elements / samples are uncorrelated
    zz = z.view(64, -1)
    lag1 = torch.corrcoef(torch.stack([zz[:, :-1].flatten(), zz[:, 1:].flatten()]))[0, 1]
    across = torch.corrcoef(torch.stack([zz[:-1].flatten(), zz[1:].flatten()]))[0, 1]
    assert abs(float(lag1)) < 0.02 and abs(float(across)) < 0.02


def test_normal_icdf_matches_scipy_including_tails():
    u = torch.cat([
        torch.rand(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
        torch.tensor([2**-33, 1e-10, 1e-6, 0.0749, 0.075, 0.0751, 0.5, 0.925, 1 - 1e-6, 1 - 2**-33],
                     dtype=torch.float64),
        torch.tensor([1e-13, 1e-300], dtype=torch.float64),  # r > 5: the far-tail branch
    ]).clamp(1e-300, 1 - 2**-40)
    z = seeds.normal_icdf(u)
    ref = torch.from_numpy(scipy.special.ndtri(u.numpy()))
    err = (z - ref).abs() / ref.abs().clamp_min(1.0)
    assert float(err.max()) < 1e-13, u[err.argmax()]


def test_exact_log_matches_torch_log():
    x = torch.cat([torch.rand(10000, dtype=torch.float64), torch.tensor([1e-300, 2**-33, 0.5, 1.0],
                                                                        dtype=torch.float64)])
    x = x.clamp_min(1e-300)
    assert float((seeds.exact_log(x) - torch.log(x)).abs().max()) < 1e-13


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="seed"):
        seeds.gaussian_noise(-1, [0], [0], 0, (2,))
    with pytest.raises(ValueError, match=r"\[0, 2\^32\)"):
        seeds.gaussian_noise(0, [2**32], [0], 0, (2,))
    with pytest.raises(ValueError, match="expected a scalar or 2 values"):
        seeds.gaussian_noise(0, [0, 1], [0, 1, 2], 0, (2,))
    with pytest.raises(ValueError, match="stream and step"):
        seeds.step_word(1, 70000)
    with pytest.raises(TypeError, match="float64"):
        seeds.normal_icdf(torch.rand(3))


def test_derive_seed_is_deterministic_and_order_sensitive():
    a = seeds.derive_seed(42, 1, 7)
    assert a == seeds.derive_seed(42, 1, 7)
    assert 0 <= a < 2**63
    others = {seeds.derive_seed(42, 1, 8), seeds.derive_seed(42, 7, 1), seeds.derive_seed(42, 1),
              seeds.derive_seed(43, 1, 7), seeds.derive_seed(42, 1, 7, 0)}
    assert a not in others and len(others) == 5


@pytest.mark.gpu
def test_noise_is_bit_identical_on_cuda_and_cpu():
    uids, cands = _keys(37)
    for shape in [(16, 64, 64), (3, 33, 17)]:
        cpu = seeds.gaussian_noise(2**40 + 17, uids, cands, seeds.step_word(0, 3), shape)
        gpu = seeds.gaussian_noise(2**40 + 17, uids, cands, seeds.step_word(0, 3), shape, device="cuda")
        mismatch = (cpu != gpu.cpu()).sum().item()
        assert mismatch == 0, f"{mismatch} of {cpu.numel()} elements differ between CPU and CUDA"
