"""A tiny student checkpoint for tests that run ``neimsctl predict`` (seconds to build and load)."""

from __future__ import annotations

from pathlib import Path


def tiny_student_checkpoint(path: Path) -> Path:
    """Write a randomly initialised 2-expert-width student checkpoint to ``path``."""
    import torch

    from neimsctl.chem.featurize_run import run_settings
    from neimsctl.chem.rowbuild import RowOptions
    from neimsctl.models.student import StudentConfig, StudentModel
    from neimsctl.models.checkpoint import save_checkpoint

    tiny = StudentConfig(gate_hidden=(16,), expert_depth=1, expert_bottleneck=8, head_hidden=(32,),
                         hidden_dim=16)
    torch.manual_seed(0)
    save_checkpoint(path, model=StudentModel(tiny), config={"model": {"name": "student", **tiny.to_dict()}},
                    featurizer_hash=run_settings(RowOptions(mode="student"))[1])
    return path
