import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

#: Third-party models for tests; absent on machines without ../shared (tests then skip).
SHARED_MODELS = Path(os.environ.get("LRCERT_SHARED_MODELS", Path(__file__).resolve().parents[2] / "shared" / "models"))
PROJECT_MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture
def shared_models() -> Path:
    if not (SHARED_MODELS / "reference").is_dir():
        pytest.skip(f"third-party models not found at {SHARED_MODELS}")
    return SHARED_MODELS
