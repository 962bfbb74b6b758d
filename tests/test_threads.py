"""One converted network called from several threads at once gives each caller its own answer."""

import threading

import pytest
import torch

import snnconv
from snnconv.zoo import models


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("fused", ["1", "0"])
def test_one_network_from_four_threads(channels_last, fused, monkeypatch):
    monkeypatch.setenv("SNNCONV_FUSED", fused)
    torch.manual_seed(0)
    snn = snnconv.convert(
        models.build("cnn", in_channels=3, image_size=16).eval(), shift="membrane"
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    snn = snn.to(memory_format=fmt)
    inputs = [torch.randn(8, 3, 16, 16).contiguous(memory_format=fmt) for _ in range(4)]
    want = [snn(x, 12) for x in inputs]  # one at a time
    got, errors = [None] * 4, []

    def call(i):
        try:
            for _ in range(3):
                got[i] = snn(inputs[i], 12)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_lock_survives_copy_and_pickle():
    import copy
    import pickle

    snn = snnconv.convert(models.build("cnn", in_channels=1, image_size=28).eval())
    for other in (copy.deepcopy(snn), pickle.loads(pickle.dumps(snn))):
        assert other.lock is not snn.lock
        with other.lock:
            other(torch.randn(2, 1, 28, 28), 3)  # re-entrant: the call takes it again
