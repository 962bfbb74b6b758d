import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The simulator tests run here (default cpu); SNNCONV_TEST_DEVICE=cuda runs them on a GPU.
DEVICE = torch.device(os.environ.get("SNNCONV_TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
