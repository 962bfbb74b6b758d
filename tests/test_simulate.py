"""The multi-step simulator: limit exactness (T -> inf gives the ANN) and equality with the
plain per-step loop (the oracle)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnconv
from conftest import DEVICE
from nets import random_nets
from snnconv.simulation.executor import is_zero_pad
from snnconv.simulation.neuron import recording
from snnconv.simulation.workspace import pad_into

NETS = random_nets()


def l2_gains(ann):
    """G[node] = sum over paths node -> output of the product of the max row L2 norms of the
    weight ops on the path (pooling, reshape, add, clip: gain 1)."""
    modules = dict(ann.named_modules())
    nodes = list(ann.graph.nodes)
    gain = dict.fromkeys(nodes, 0.0)
    gain[nodes[-1].args[0]] = 1.0
    for n in reversed(nodes[:-1]):
        m = modules.get(n.target) if n.op == "call_module" else None
        w = (
            m.weight.detach().flatten(1).norm(dim=1).max().item()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
            else 1.0
        )
        for a in n.all_input_nodes:
            gain[a] += gain[n] * w
    return {n.name: g for n, g in gain.items()}


@pytest.mark.parametrize("name,model,shape", NETS, ids=[n[0] for n in NETS])
def test_limit_exactness(name, model, shape):
    """Tolerance: an IF layer's rate after T steps differs from its ANN activation by at most
    about V_th/T per neuron (the count is rounded, and the membrane keeps < V_th at the end for a
    neuron in range; clipped neurons are exact). Those per-neuron errors have independent signs,
    so through a weight map W they grow like the L2 norm of W's rows, not the L1 norm; summed over
    every layer and every path to the output (the depth), tol = sum_l G_l V_th,l / T, G_l from
    l2_gains. Measured here the error is 3-15 % of tol, and tol is ~1 % of the output scale at
    T = 2048, so a wrong threshold, amplitude, shift or wiring (errors of order V_th) fails."""
    x = (torch.rand(16, *shape) * 2 - 0.5).to(DEVICE)
    snn = snnconv.convert(model).to(DEVICE)
    ann = snn.ann(x)
    gain = l2_gains(snn.ann)
    errors = {}
    for steps in (64, 2048):
        out = snn(x, steps)
        assert out.shape == (steps, *ann.shape)
        errors[steps] = (out[-1] - ann).abs().max().item()
        tol = sum(gain[k] * v / steps for k, v in snn.thresholds.items())
        assert errors[steps] <= tol, (steps, errors[steps], tol)
    assert tol < 0.02 * ann.abs().max().item()
    assert errors[2048] < errors[64] / 8, "error must shrink about like 1/T"


@pytest.mark.parametrize("shift", ["bias", "membrane", "none"])
@pytest.mark.parametrize("name,model,shape", NETS, ids=[n[0] for n in NETS])
def test_multistep_equals_stepwise_oracle(name, model, shape, shift):
    """In float64 both paths compute the same sums up to ~1e-16, so no spike flips; 1e-5 relative
    leaves room only for summation order, not for a different spike train."""
    x = (torch.rand(6, *shape, dtype=torch.float64) * 2 - 0.5).to(DEVICE)
    snn = snnconv.convert(model, shift=shift).double().to(DEVICE)
    oracle = snn.stepwise(x, 48)
    scale = oracle.abs().max().item()
    for chunk_bytes in (1, 20_000, 1 << 30):  # chunks of 1 step, a few steps, all steps
        fast = snn(x, 48, max_chunk_bytes=chunk_bytes)
        assert (fast - oracle).abs().max().item() <= 1e-5 * scale
    counts_fast = {k: m.spike_count.clone() for k, m in snn.layers.items()}
    snn.stepwise(x, 48)
    for k, m in snn.layers.items():
        assert torch.equal(m.spike_count, counts_fast[k])


def test_spiking_readout_matches_oracle_and_counts():
    name, model, shape = NETS[0]
    calib = [torch.rand(32, *shape) * 2 - 0.5]
    snn = snnconv.convert(model, calibration=calib, readout="spikes").double()
    x = calib[0][:5].double()
    out = snn(x, 32)
    assert torch.allclose(out, snn.stepwise(x, 32), rtol=0, atol=1e-9)
    readout = snn.layers["readout"]
    v_th = readout.v_th.item()
    assert v_th == pytest.approx(snn.ann(calib[0].double()).max().item(), rel=1e-6)
    assert torch.allclose(out[-1], readout.spike_count * v_th / 32)  # readout = V_th * count / t


def test_readout_is_running_mean_of_last_layer_current():
    """out[t-1] = (1/t) sum_{s<=t} fc2(spikes[s]), spikes from one IF layer driven by the constant
    current fc1(x), built here by hand."""
    model = nn.Sequential(nn.Linear(4, 6), snnconv.ThresholdReLU(0.9), nn.Linear(6, 3)).double()
    snn = snnconv.convert(model)
    x = torch.randn(2, 4, dtype=torch.float64)
    layer = snnconv.IFNeurons(0.9, "bias")
    layer.reset(10)
    spikes = layer.scan(model[0](x).detach(), 10, constant=True)
    y = model[2](spikes).detach()
    want = y.cumsum(0) / torch.arange(1, 11).view(-1, 1, 1)
    assert torch.allclose(snn(x, 10), want, rtol=0, atol=1e-12)


def test_memory_follows_chunk_not_T():
    """Chunk length is chosen from the measured bytes of one step: with a small budget every chunk
    is one step, and results do not depend on it (checked in the oracle test)."""
    name, model, shape = NETS[1]
    snn = snnconv.convert(model)
    x = torch.rand(4, *shape)
    a = snn(x, 200, max_chunk_bytes=1)
    b = snn(x, 200)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.usefixtures("two_threads")  # the fused kernel takes the 4 samples
def test_a_step_is_charged_the_memory_it_writes(monkeypatch):
    """Chunks are sized by the bytes one step writes: a conv fused into its IF layer's update and
    a spike map that only its masks carry to the next conv are never written, so not charged;
    with the fused kernel declining (the conv, then the scan) both are written and charged.
    CPU: the lookup kernels."""
    from snnconv.simulation import executor
    from snnconv.simulation.neuron import IFNeurons

    cl = torch.channels_last
    conv = lambda: nn.Conv2d(16, 16, 3, padding=1)  # noqa: E731
    relu = lambda: snnconv.ThresholdReLU(1.0)  # noqa: E731
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), relu(), conv(), relu(), conv(), relu(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()  # fmt: skip
    snn = snnconv.convert(model.to(memory_format=cl))
    x = torch.rand(4, 3, 16, 16).contiguous(memory_format=cl)
    chunks, real = [], executor.run_chunk

    def run_chunk(ch, x):
        y = real(ch, x)
        chunks.append((ch.c, ch.step_bytes, [m.data.numel() for m, _, _ in ch.masks.values()]))
        return y

    monkeypatch.setattr(executor, "run_chunk", run_chunk)
    spike_map, head = 4 * 16 * 16 * 16 * 4, 4 * (16 + 16 + 10) * 4  # float32 bytes per step
    fused = snn(x, 8)
    (c1, first, masks), (c2, _, _) = chunks
    assert (c1, c2) == (1, 7) and len(masks) == 1, "the probe, then the rest; one hand-off"
    # written: the first layer's map (its scan), the last one's (the pooling reads it), the head
    # and the masks the middle layer hands to the last conv; not the two convs' outputs
    assert first == 2 * spike_map + head + masks[0]
    chunks.clear()
    snn(x, 8, max_chunk_bytes=3 * first)
    assert [c for c, _, _ in chunks] == [3, 3, 2], "chunks of the budget over the first charge"
    chunks.clear()
    monkeypatch.setattr(IFNeurons, "scan_conv", lambda self, *a, **k: None)
    torch.testing.assert_close(snn(x, 8, max_chunk_bytes=3 * first), fused, rtol=0, atol=1e-6)
    assert chunks[0][1] == 5 * spike_map + head, "three maps and two conv outputs written"
    # the kept charge was too low for this run: after its first chunk the rest are sized anew
    assert [c for c, _, _ in chunks] == [3, 1, 1, 1, 1, 1], "the larger charge: one step each"


def test_later_runs_size_their_chunks_from_the_first_ones_measure(monkeypatch):
    """The first run of a signature probes one step alone; later runs with it start with full
    chunks, and the same numbers (within float rounding: the dense ops run on differently shaped
    batches); a new batch size, a recording or changed weights probe again."""
    from snnconv.simulation import executor
    from snnconv.simulation.plan import plan_for

    name, model, shape = NETS[0]
    snn = snnconv.convert(model)
    x = torch.rand(5, *shape) * 2 - 0.5
    chunks, real = [], executor.run_chunk

    def run_chunk(ch, x):
        chunks.append(ch.c)
        return real(ch, x)

    def runs(*args) -> list[int]:
        chunks.clear()
        snn(*args)
        return list(chunks)

    monkeypatch.setattr(executor, "run_chunk", run_chunk)
    first = snn(x, 12)
    assert chunks == [1, 11]
    chunks.clear()
    torch.testing.assert_close(snn(x, 12), first, rtol=0, atol=1e-6)
    assert chunks == [12]
    assert runs(x[:3], 12) == [1, 11] and runs(x[:3], 12) == [12]  # another batch size
    with pytest.raises(snnconv.SimulationError, match="T=1000000000000 needs"):
        runs(x, 10**12)  # more readout than any machine here holds
    assert chunks == [], "refused before any chunk ran"
    with recording(snn.layers.values()):
        assert runs(x, 12) == [1, 11] and runs(x, 12) == [12]
    assert runs(x, 12) == [12]  # the signature without recording is still kept
    with torch.no_grad():
        next(snn.parameters()).mul_(1.0)  # a new version of a weight
    assert runs(x, 12) == [1, 11]
    memo = plan_for(snn.graph).probes
    for batch in range(1, 12):
        snn(x[:1].expand(batch, *shape), 2)
    assert len(memo) == executor.SIGNATURES_KEPT


def test_workspace_is_reused_and_never_goes_stale():
    """Output buffers kept between calls: a second call reuses them and gives the same result;
    a new batch size, a new dtype or a copy never reads a stale buffer (float64 result checked
    against the oracle, which uses no buffers)."""
    name, model, shape = NETS[0]
    snn = snnconv.convert(model)
    x = torch.rand(5, *shape) * 2 - 0.5
    first = snn(x, 20, max_chunk_bytes=20_000)
    kept = {k: v.data_ptr() for k, v in snn.workspace.items()}
    assert kept, "the IF layers' outputs stay in the workspace"
    assert torch.equal(snn(x, 20, max_chunk_bytes=20_000), first)
    assert {k: v.data_ptr() for k, v in snn.workspace.items()} == kept, "reused, not reallocated"
    torch.testing.assert_close(snn(x[:3], 20), first[:, :3], rtol=0, atol=1e-6)  # new batch
    snn.double()
    x64 = x.double()
    assert snn(x64, 20).dtype == torch.float64
    torch.testing.assert_close(snn(x64, 20), snn.stepwise(x64, 20), rtol=0, atol=1e-9)
    assert copy.deepcopy(snn).workspace == {} and snn.workspace


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided channels_last"])
def test_zero_pad_into_a_kept_buffer_equals_f_pad(layout):
    x = torch.randn(4, 6, 10, 10)
    if layout != "contiguous":
        x = x.contiguous(memory_format=torch.channels_last)
    if layout.startswith("strided"):
        x = x[:, :, ::2, ::2]  # ResNet's option-A shortcut
    pad = (0, 1, 2, 0, 3, 3)
    want = F.pad(x, pad)
    got = pad_into(x, pad, None)
    assert torch.equal(got, want) and got.stride() == want.stride()
    again = pad_into(-x, pad, got)
    assert again.data_ptr() == got.data_ptr() and torch.equal(again, F.pad(-x, pad))
    assert pad_into(x[:2], pad, got).data_ptr() != got.data_ptr()  # another shape: new memory


def test_only_zero_padding_takes_the_kept_buffer():
    gm = torch.fx.symbolic_trace(nn.Identity())
    node = next(iter(gm.graph.nodes))
    x = torch.randn(2, 3, 4, 4)
    pad_node = gm.graph.call_function(F.pad, (node, (1, 1)))
    assert is_zero_pad(pad_node, (x, (1, 1)), {})
    assert is_zero_pad(pad_node, (x, (1, 1)), {"mode": "constant", "value": 0.0})
    assert not is_zero_pad(pad_node, (x, (1, 1)), {"value": 1.0})
    assert not is_zero_pad(pad_node, (x, (1, 1)), {"mode": "reflect"})
    assert not is_zero_pad(pad_node, (x, (-1, 1)), {})


def test_readout_streams_chunks_and_equals_cumsum():
    """The readout is written chunk by chunk into one tensor, equal bit for bit to the mean of
    the whole sequence (y.cumsum(0) / t), whatever the chunking and the block size."""
    from snnconv.simulation.executor import Readout

    y = torch.randn(50, 3, 4) * 7
    want = y.cumsum(0) / torch.arange(1, 51, dtype=y.dtype).view(-1, 1, 1)
    for chunks, block in (([50], 1 << 20), ([1, 7, 42], 1 << 20), ([20, 30], 8 * 12 * 3)):
        r, done = Readout(50), 0
        r.BLOCK_BYTES = block  # 3 steps per block in the last case
        for c in chunks:
            r.add(y[done : done + c])
            done += c
        assert torch.equal(r.out, want)
