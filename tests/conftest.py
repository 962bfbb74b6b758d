import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The simulator tests run here (default cpu); SNNCONV_TEST_DEVICE=cuda runs them on a GPU.
DEVICE = torch.device(os.environ.get("SNNCONV_TEST_DEVICE", "cpu"))
# SNNCONV_TEST_THREADS=16 runs the suite with 16 PyTorch threads (a bigger machine's default),
# whatever the cores: the compiled kernels' choices depend on the thread count.
if os.environ.get("SNNCONV_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["SNNCONV_TEST_THREADS"]))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def two_threads():
    """Two PyTorch threads for the test, as on CI: the fused conv + IF kernel declines a batch
    with fewer samples per step than threads (``if_scan.scan_conv``), and the kernel tests use
    small batches, so on a machine with more threads they would test the fallback instead."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
