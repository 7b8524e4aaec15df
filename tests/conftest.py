import pytest


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reaches a real account or the network: W&B offline, HF offline, no stray keys."""
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "WANDB_API_KEY", "KAGGLE_USERNAME", "KAGGLE_KEY",
                "KAGGLE_API_TOKEN", "DISTILL_TASKS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    yield
