"""Sibling NVFP4 layers reading one tensor quantize it once (solrl_kernels.gemm.activation_cache)."""

import gc
from unittest import mock

import pytest
import torch
from torch import nn

from solrl_kernels.gemm import activation_cache
from solrl_kernels.nn import NVFP4Linear


def _siblings(storage: str, device: str, K: int = 64, N: int = 48) -> list[NVFP4Linear]:
    torch.manual_seed(0)
    return [NVFP4Linear.from_linear(nn.Linear(K, N).to(device), weight_storage=storage,
                                    backend="triton") for _ in range(3)]


def _count_quantizations():
    """Patch the quantizer that the cache calls, counting its calls."""
    return mock.patch.object(activation_cache, "quantize_to_fp8",
                             side_effect=activation_cache.quantize_to_fp8)


@pytest.fixture(autouse=True)
def _reuse_on():
    activation_cache.set_activation_reuse(True)
    yield
    activation_cache.set_activation_reuse(True)


@pytest.mark.parametrize("storage", ["fp8", "packed"])
def test_siblings_quantize_once_and_match_separate_calls(storage, device):
    layers = _siblings(storage, device)
    x = torch.randn(2, 8, 64, device=device, dtype=torch.bfloat16)
    with _count_quantizations() as q:
        shared = [layer(x) for layer in layers]
    assert q.call_count == 1
    activation_cache.set_activation_reuse(False)
    with _count_quantizations() as q:
        separate = [layer(x) for layer in layers]
    assert q.call_count == 3
    for a, b in zip(shared, separate):
        assert torch.equal(a, b)


def test_inplace_write_or_another_tensor_quantizes_anew(device):
    layers = _siblings("fp8", device)
    x = torch.randn(16, 64, device=device, dtype=torch.bfloat16)
    with _count_quantizations() as q:
        layers[0](x)
        x.mul_(-2.0)  # bumps x._version: the cached container is stale
        after_write = layers[1](x)
        twin = x.clone()  # equal values, another tensor
        from_twin = layers[1](twin)
    assert q.call_count == 3
    activation_cache.set_activation_reuse(False)
    assert torch.equal(after_write, layers[1](x))
    assert torch.equal(from_twin, after_write)


def test_inference_tensors_are_not_cached(device):
    """Inference-mode tensors have no version counter: an in-place write would go unseen."""
    layers = _siblings("fp8", device)
    with torch.inference_mode(), _count_quantizations() as q:
        x = torch.randn(8, 64, device=device, dtype=torch.bfloat16)
        layers[0](x)
        layers[1](x)
    assert q.call_count == 2


def test_reuse_only_within_one_capture(device):
    """Entries are keyed by the stream-capture id (0 = eager): siblings share within one
    CUDA-graph capture; an eager warm-up's entry never enters a capture, nor a capture's
    entry another capture or a later eager call."""
    layers = _siblings("fp8", device)
    x = torch.randn(8, 64, device=device, dtype=torch.bfloat16)
    layers[0](x)  # eager warm-up: an entry for x with capture id 0
    with _count_quantizations() as q:
        with mock.patch.object(activation_cache, "_capture_id", return_value=7):
            layers[0](x)  # the capture must contain its own quantization
            layers[1](x)  # sibling in the same capture: shared
        with mock.patch.object(activation_cache, "_capture_id", return_value=8):
            layers[2](x)  # another capture
        layers[0](x)  # eager again
    assert q.call_count == 3  # capture 7 once, capture 8 once, eager once


def test_capture_without_id_quantizes_every_call(device):
    """Capturing without solrl_kernels._C (no capture id): nothing is reused or stored."""
    layers = _siblings("fp8", device)
    x = torch.randn(8, 64, device=device, dtype=torch.bfloat16)
    layers[0](x)
    with mock.patch.object(activation_cache, "_capture_id", return_value=None), \
            _count_quantizations() as q:
        entry = activation_cache._STATE.entry
        layers[1](x)
        layers[2](x)
        assert activation_cache._STATE.entry is entry
    assert q.call_count == 2


def test_entry_dies_with_its_tensor(device):
    layer = _siblings("fp8", device)[0]
    x = torch.randn(4, 64, device=device, dtype=torch.bfloat16)
    layer(x)
    assert activation_cache._STATE.entry is not None
    del x
    gc.collect()
    assert activation_cache._STATE.entry is None


def test_traced_graph_has_no_break(device):
    layers = _siblings("fp8", device)
    x = torch.randn(4, 64, device=device, dtype=torch.bfloat16)
    fn = torch.compile(lambda t: layers[0](t) + layers[1](t), backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(x), layers[0](x) + layers[1](x), rtol=0, atol=0)


@pytest.mark.gpu
def test_gpu_cuda_graph_replays_see_new_inputs():
    """Warm up, capture q/k/v-like siblings in a CUDA graph (they share one quantization when
    solrl_kernels._C can read the capture id), write a new input into the static buffer,
    replay: the outputs equal eager calls on the new input. A second graph on the same
    static input gets its own quantization and replays right too."""
    from solrl_kernels._backends import native_ops_available

    layers = _siblings("fp8", "cuda", K=256, N=128)
    static_x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            [layer(static_x) for layer in layers]
    torch.cuda.current_stream().wait_stream(stream)
    graph, graph2 = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with _count_quantizations() as q:
        with torch.cuda.graph(graph):
            static_out = [layer(static_x) for layer in layers]
    assert q.call_count == (1 if native_ops_available() else 3)
    with torch.cuda.graph(graph2):
        static_out2 = [layer(static_x) for layer in layers[::-1]]
    for replay, outs, order in ((graph.replay, static_out, layers),
                                (graph2.replay, static_out2, layers[::-1])):
        new = torch.randn_like(static_x)
        static_x.copy_(new)
        replay()
        for layer, out in zip(order, outs):
            assert torch.equal(out, layer(new))
