import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# One thread count for every test and the commands they run, whatever the machine's load: lrcert's
# auto threads (lrcert.runtime.threads) would otherwise follow the load, and with it the last bits of
# float64 sums that some tests compare exactly (test_threads tests auto itself, without it).
# Converted networks cached for this session only (lrcert.models.cache), never in the user's cache.
if not os.environ.get("LRCERT_CACHE_DIR"):
    import atexit
    import shutil
    import tempfile

    os.environ["LRCERT_CACHE_DIR"] = tempfile.mkdtemp(prefix="lrcert-test-cache-")
    atexit.register(shutil.rmtree, os.environ["LRCERT_CACHE_DIR"], ignore_errors=True)
if not os.environ.get("OMP_NUM_THREADS"):
    import torch

    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())

#: Third-party models for tests; absent on machines without ../shared (tests then skip).
SHARED_MODELS = Path(os.environ.get("LRCERT_SHARED_MODELS", Path(__file__).resolve().parents[2] / "shared" / "models"))
PROJECT_MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture
def shared_models() -> Path:
    if not (SHARED_MODELS / "reference").is_dir():
        pytest.skip(f"third-party models not found at {SHARED_MODELS}")
    return SHARED_MODELS


@pytest.fixture(autouse=True)
def _same_random_state():
    """Every test starts from the same global random state, whatever ran before it or was selected:
    a draw a test does not seed itself is still the same draw on every run."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
