"""Teacher soft labels for distillation (SPEC.md "Training", step 3).

:func:`run_softlabel` runs a finetuned teacher with MC dropout over teacher-mode feature shards
and writes, per row, the id, the MC-dropout mean spectrum and per-bin variance (linear, base
peak 1: the normalisation of :meth:`TeacherModel.mc_predict`) and the teacher's penultimate
representation (512) into a ``neimsctl.softlabel/1`` shard (formats/softlabel-shard.v1.md),
aligned with student shards by ``id``.

Choices:

- **Representation** ``hidden`` = the mean over the same MC samples as the spectrum (no extra
  pass; it is the expectation the MC mean spectrum also estimates).
- **Determinism and resume.** Before batch ``b`` (rows ``b*batch_size ...``) the torch RNG is
  seeded with ``seed * 1_000_003 + b``, so every batch's dropout masks depend only on the
  settings; a resumed run (``resume=True``: keep the rows of the finished batches in
  ``OUT.partial``, continue after them) writes exactly what an uninterrupted run writes.
- **Rejects**: a row whose id was seen before (alignment needs unique ids) or whose prediction
  is not finite is not written and is reported (``duplicate_id``, ``nonfinite_prediction``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np
import torch

from neimsctl.data.dataset import TeacherDataset
from neimsctl.data.shards import hash_matches, shard_settings, shown
from neimsctl.data.split import DEFAULT_FRACTIONS, SPLIT_SEED
from neimsctl.errors import CheckpointError, ConfigError, FormatError
from neimsctl.io.rejects import Reject, Tally
from neimsctl.io.softlabel_shard import SoftLabelWriter
from neimsctl.nn.modes import only_training
from neimsctl.models.checkpoint import load_checkpoint, model_state, require_spectrum_model
from neimsctl.train.config import resolve_device

__all__ = ["SoftLabelSettings", "mc_soft_labels", "load_teacher", "run_softlabel"]

Teachers = str | Path | Sequence[str | Path]


@dataclass
class SoftLabelSettings:
    """What determines a soft-label file's content (stored in its ``settings`` attribute)."""

    samples: int = 30
    seed: int = 0
    batch_size: int = 64
    hidden: str = "mc_mean"
    part: str = "all"                 # all | train (the compound-grouped split's train part)
    split_seed: int = SPLIT_SEED
    split: tuple[float, float, float] = DEFAULT_FRACTIONS

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise ConfigError(f"--samples: MC dropout needs >= 2 samples for a variance, got {self.samples}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size: must be >= 1, got {self.batch_size}")
        if self.part not in ("all", "train"):
            raise ConfigError(f"part: 'all' or 'train', got {self.part!r}")


@torch.no_grad()
def mc_soft_labels(model: torch.nn.Module | Sequence[torch.nn.Module], batch: Any, n_samples: int = 30,
                   eligible: np.ndarray | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MC-dropout mean spectrum, per-bin variance and mean hidden representation.

    Each sample is made linear and max-normalised; the mean is max-normalised again (base peak
    1) and the variance rescaled by the same factor squared (as :meth:`TeacherModel.mc_predict`).
    ``model`` may be several teachers (an ensemble): each draws ``n_samples``, the mean and
    variance are over all of them (so the variance includes the teachers' disagreement), and
    the hidden representation is the first teacher's (representations of separately trained
    networks live in different bases; averaging them would mean nothing).

    ``eligible`` (``(n_models, B)`` bool; out-of-fold labelling, :func:`eligible_members`)
    restricts each row's mean and variance to the samples of the models marked for it; a model
    marked for no row of the batch is not run (except the first, for the hidden vectors).

    Returns
    -------
    tuple of Tensor
        ``mean (B, n_bins)``, ``var (B, n_bins)`` (unbiased, ``n_samples - 1``), ``hidden
        (B, D)``, all float32.
    """
    models = [model] if isinstance(model, torch.nn.Module) else list(model)
    hiddens: list[torch.Tensor] = []
    sum1 = sum2 = None
    count = None
    for k, m in enumerate(models):
        use = None if eligible is None else torch.as_tensor(eligible[k])
        if use is not None and k > 0 and not bool(use.any()):
            continue
        with m.mc_dropout(True):
            for _ in range(n_samples):
                pred, hidden = m(batch, return_hidden=True)
                lin = m.to_linear(pred)
                x = (lin / lin.amax(dim=-1, keepdim=True).clamp_min(1e-12)).double()
                if k == 0:
                    hiddens.append(hidden.float())
                w = torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device) if use is None \
                    else use.to(x.device, torch.float64).unsqueeze(1)
                sum1 = x * w if sum1 is None else sum1 + x * w
                sum2 = x * x * w if sum2 is None else sum2 + x * x * w
                count = w if count is None else count + w
    assert sum1 is not None and sum2 is not None and count is not None
    mean = sum1 / count.clamp_min(1)
    var = (sum2 - count * mean * mean).clamp_min(0) / (count - 1).clamp_min(1)
    scale = 1.0 / mean.amax(dim=-1, keepdim=True).clamp_min(1e-12)
    return ((mean * scale).float(), (var * scale.square()).float(),
            torch.stack(hiddens).mean(0))


def member_fold(ckpt: dict[str, Any]) -> tuple[tuple[int, int] | None, tuple[float, ...], int]:
    """``(fold, split fractions, split seed)`` a member was trained with (its config's
    ``data.fold``, ``data.split``, ``data.split_seed``; defaults when not recorded)."""
    from neimsctl.data.split import parse_fold

    data = (ckpt.get("config") or {}).get("data") or {}
    return (parse_fold(data.get("fold")), tuple(data.get("split") or DEFAULT_FRACTIONS),
            int(data.get("split_seed", SPLIT_SEED)))


def eligible_members(ds: TeacherDataset, positions: np.ndarray,
                     folds: Sequence[tuple[tuple[int, int] | None, tuple[float, ...], int]]
                     ) -> np.ndarray | None:
    """Which members may label each row out of fold: ``(n_models, len(positions))`` bool, or
    ``None`` when no member was trained on a fold (every member labels every row).

    A member trained with ``data.fold = k/K`` saw the training-part compounds of every fold
    but k; one without a fold saw the whole training part. A row is labelled only by the
    members that never trained on it (the compounds of the val and test parts, and molecules
    outside the library, by all). A row no member held out is labelled by all members
    (in fold): :func:`run_softlabel` reports how many.
    """
    from neimsctl.data.split import split_indices, train_positions

    if all(f[0] is None for f in folds):
        return None
    blocks, ids = ds.blocks[positions], ds.ids[positions]
    out = np.ones((len(folds), len(positions)), dtype=bool)
    for k, (fold, split, seed) in enumerate(folds):
        train = split_indices(blocks, ids=ids, seed=seed, fractions=split).train
        out[k, train_positions(train, blocks, fold, seed=seed, ids=ids)] = False
    return out


class FingerprintMember(torch.nn.Module):
    """A student checkpoint as an ensemble member over teacher batches.

    Teacher batches carry the student's inputs (``ecfp`` bits and ``log1p`` atom-pair
    ``counts``, :mod:`neimsctl.data.dataset`), so a fingerprint student predicts the same
    compounds as the GNN teachers it is pooled with. :meth:`mc_dropout` switches on only its
    dropout layers (the gate's training noise stays off).
    """

    def __init__(self, student: torch.nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, batch: Any, return_hidden: bool = False) -> Any:
        parts = [batch.ecfp, batch.counts]
        if self.student.config.fragments:
            frags = getattr(batch, "frags", None)
            if frags is None:
                raise FormatError("a fingerprint member reads fragment masses, which these "
                                  "teacher shards (made by neimsctl 0.1) lack: featurize again")
            parts.append(frags)
        out = self.student(torch.cat(parts, dim=1), batch.mw)
        return (out.pred, out.hidden) if return_hidden else out.pred

    def to_linear(self, pred: torch.Tensor) -> torch.Tensor:
        return self.student.to_linear(pred)

    def mc_dropout(self, enabled: bool = True) -> contextlib.AbstractContextManager[torch.nn.Module]:
        dropout = [m for m in self.modules() if isinstance(m, torch.nn.Dropout)]
        return only_training(self, dropout if enabled else ())


def load_teacher(path: str | Path, *, featurizer_hash: str | frozenset[str] | None = None,
                 allow_student: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A teacher with the weights of checkpoint ``path`` (eval mode) and the checkpoint dict.

    ``allow_student``: a student checkpoint is accepted too and returned as a
    :class:`FingerprintMember` (for ensembles; its features are the student's, so the teacher
    shards' featurizer hash is not compared).

    Raises
    ------
    CheckpointError
        Unreadable file, not a teacher (nor an allowed student), or trained on features with
        another settings hash.
    """
    ckpt = load_checkpoint(path)
    return teacher_from(ckpt, path, featurizer_hash=featurizer_hash,
                        allow_student=allow_student), ckpt


def teacher_from(ckpt: dict[str, Any], path: str | Path, *, featurizer_hash: str | frozenset[str] | None = None,
                 allow_student: bool = False) -> torch.nn.Module:
    """The model of a loaded checkpoint dict (see :func:`load_teacher`; ``path`` names it in
    messages, ``FILE#k`` for the k-th member of an ensemble file)."""
    from neimsctl.train.finetune import build_teacher

    require_spectrum_model(ckpt, path)
    model_cfg = (ckpt.get("config") or {}).get("model") or {}
    state = model_state(ckpt)
    if allow_student and model_cfg.get("name") == "student":
        from neimsctl.predict.model import build_model

        try:
            student, _ = build_model(model_cfg)
            student.load_state_dict(state)
        except (ConfigError, CheckpointError, RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{path}: not a usable student checkpoint: {exc}") from exc
        return FingerprintMember(student).eval()
    if model_cfg.get("name") == "student":
        raise CheckpointError(f"{path}: a student checkpoint where a GNN teacher is needed (the "
                              "first --teacher; students may follow it in an ensemble)")
    if model_cfg.get("name") not in (None, "teacher"):
        raise CheckpointError(f"{path}: a {model_cfg.get('name')!r} model cannot label: soft "
                              "labels come from GNN teachers and fingerprint students")
    have = ckpt.get("featurizer_hash")
    if featurizer_hash is not None and have is not None and not hash_matches(have, featurizer_hash):
        raise CheckpointError(f"{path}: featurizer mismatch: the teacher was trained on features "
                              f"with settings hash {have}, these shards have {shown(featurizer_hash)}")
    try:
        model = build_teacher(model_cfg)
        model.load_state_dict(state)
    except (ConfigError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a usable teacher checkpoint: {exc}") from exc
    return model.eval()


def teacher_sources(paths: Sequence[Path]) -> list[tuple[str, dict[str, Any], str]]:
    """``(where, checkpoint, sha256)`` of every model the ``--teacher`` files hold.

    An ensemble file (``neimsctl ensemble``) stands for its members (``where`` =
    ``FILE#k``). The first model must be a GNN teacher (its hidden representation is the one
    the soft labels carry, :func:`mc_soft_labels`): when the first file is an ensemble, its
    first teacher member is put in front of its other members.
    """
    from neimsctl.models.checkpoint import is_ensemble
    from neimsctl.predict.model import file_sha

    out: list[tuple[str, dict[str, Any], str]] = []
    for p in paths:
        ckpt = load_checkpoint(p, ensemble=True)
        sha = file_sha(Path(p), full=True)
        if not is_ensemble(ckpt):
            out.append((str(p), ckpt, sha))
            continue
        members = [(f"{p}#{i}", m, f"{sha}#{i}") for i, m in enumerate(ckpt["members"], 1)]
        if not out:
            t = next((k for k, (_, c, _) in enumerate(members)
                      if ((c.get("config") or {}).get("model") or {}).get("name") == "teacher"), 0)
            members = [members[t]] + members[:t] + members[t + 1:]
        out += members
    return out


def run_softlabel(teacher: Teachers, shards: Sequence[str | Path], out: str | Path, *,
                  settings: SoftLabelSettings | None = None, device: str = "auto",
                  resume: bool = False, rejects: Any = None, attrs: dict[str, Any] | None = None,
                  log: TextIO | None = None) -> Tally:
    """Write the soft labels of every row (or every train-part row) of ``shards`` to ``out``.

    Parameters
    ----------
    teacher
        Finetuned teacher checkpoint (``neimsctl finetune``), or several: an ensemble whose
        soft labels pool every teacher's MC samples (:func:`mc_soft_labels`).
    shards
        Teacher-mode feature shards (rows with and without spectra are labelled).
    out
        Output file; written as ``out.partial`` and renamed when complete.
    settings
        :class:`SoftLabelSettings` (samples, seed, batch size, part).
    resume
        Continue ``out.partial`` of an interrupted run with the same settings.
    rejects
        Binary stream for the rejects report (JSONL), or ``None``.
    attrs
        Extra root attributes (provenance).

    Returns
    -------
    Tally
        Rows read / written / rejected.
    """
    from neimsctl.evaluate.validation import dataset_split

    log = sys.stderr if log is None else log
    s = settings or SoftLabelSettings()
    found = shard_settings(shards, ("teacher",), stage="softlabel")
    fhash = found.settings_hash
    paths = [Path(teacher)] if isinstance(teacher, (str, Path)) else [Path(t) for t in teacher]
    if not paths:
        raise ConfigError("softlabel needs at least one teacher checkpoint")
    dev = resolve_device(device)
    sources = teacher_sources(paths)
    models = [teacher_from(c, where, featurizer_hash=found.accepts, allow_student=k > 0).to(dev)
              for k, (where, c, _) in enumerate(sources)]
    model = models[0]
    frags = any(m.student.config.fragments if isinstance(m, FingerprintMember)
                else getattr(m.config, "fragments", False) for m in models)
    ds = TeacherDataset(list(shards), require_spectrum=False, fragments=frags)
    positions = np.arange(len(ds), dtype=np.int64)
    if s.part == "train":
        positions = dataset_split(ds, seed=s.split_seed, fractions=s.split).train
    folds = []
    for where, c, _ in sources:
        try:
            folds.append(member_fold(c))
        except (ConfigError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: the split it was trained on: {exc}") from None
    eligible = eligible_members(ds, positions, folds)
    if eligible is not None:
        nobody = ~eligible.any(axis=0)
        none = int(nobody.sum())
        eligible[:, nobody] = True
        # rows with the same members next to each other: a batch runs only its rows' members
        # (and the first, for the hidden vectors) instead of all of them. The output's row
        # order changes, not its content: soft labels are aligned by id.
        pattern = np.packbits(eligible, axis=0, bitorder="little")
        order = np.lexsort(pattern[::-1])
        positions, eligible = positions[order], eligible[:, order]
        print(f"neimsctl: softlabel: out of fold: each row labelled by the members that never "
              f"trained on it ({', '.join(f'{f[0][0]}/{f[0][1]}' if f[0] else 'all' for f in folds)});"
              f" {none} rows held out by no member are labelled by all", file=log, flush=True)
    cfg_model = model.config.to_dict()
    with torch.no_grad():  # eval mode: draws no random numbers
        probes = [m(ds.get_batch([0]).to(dev), return_hidden=True) for m in models]
    n_bins, hidden_dim = int(probes[0][0].shape[1]), int(probes[0][1].shape[1])
    if len({int(p[0].shape[1]) for p in probes}) != 1:
        raise ConfigError("ensemble members must agree on the number of bins: "
                          f"{', '.join(str(p) for p in paths)}")
    sha = [x[2] for x in sources]
    full = {**asdict(s), "split": list(s.split), "teacher_sha256": sha[0] if len(sha) == 1 else sha,
            "featurizer_hash": fhash, "n_positions": int(len(positions)),
            # which rows, by id, in order: a resumed run must continue the same input (another
            # shard of as many rows would splice labels of compounds it does not hold)
            "input_ids_sha256": hashlib.sha256(b"\n".join(ds.ids[positions].tolist())).hexdigest(),
            **({"folds": [f"{f[0][0]}/{f[0][1]}" if f[0] else "all" for f in folds]}
               if eligible is not None else {})}
    head = {"featurizer_hash": fhash, "teacher": " ".join(str(p) for p in paths),
            "teacher_model": json.dumps(cfg_model, default=list), "members": json.dumps(
                [{"path": where, "arch": "student" if isinstance(m, FingerprintMember) else "teacher",
                  "model": (m.student if isinstance(m, FingerprintMember) else m).config.to_dict()}
                 for (where, _, _), m in zip(sources, models)], default=list), **(attrs or {})}
    tally = Tally(sink=rejects)
    seen: set[bytes] = set()
    with SoftLabelWriter(out, full, n_bins=n_bins, hidden_dim=hidden_dim, attrs=head,
                         resume=resume) as w:
        start = w.positions_done
        if start:
            print(f"neimsctl: softlabel: resuming after {start} of {len(positions)} rows",
                  file=log, flush=True)
            _replay(tally, seen, ds, positions[:start], w)
        bs = s.batch_size
        for b in range(start // bs, -(-len(positions) // bs)):
            pos = positions[b * bs:(b + 1) * bs]
            torch.manual_seed(s.seed * 1_000_003 + b)
            batch = ds.get_batch(pos).to(dev)
            use = None if eligible is None else eligible[:, b * bs:(b + 1) * bs]
            mean, var, hid = (t.cpu().numpy()
                              for t in mc_soft_labels(models, batch, s.samples, use))
            ids = [i.decode() for i in ds.ids[pos]]
            keep = []
            for j, rid in enumerate(ids):
                finite = bool(np.isfinite(mean[j]).all() and np.isfinite(var[j]).all()
                              and np.isfinite(hid[j]).all())
                if _judge(tally, seen, ds, int(pos[j]), rid, finite):
                    keep.append(j)
            w.append([ids[j] for j in keep], mean[keep], var[keep], hid[keep],
                     positions_done=min((b + 1) * bs, len(positions)),
                     blocks=ds.blocks[pos][keep])
            tally.written += len(keep)
    return tally


def _judge(tally: Tally, seen: set[bytes], ds: Any, pos: int, rid: str, finite: bool) -> bool:
    """Count row ``pos`` (id ``rid``) as read; reject it (a repeated id, or a teacher output that
    is not finite) or return True: its soft labels are written."""
    tally.read += 1
    key = rid.encode()
    ok = False
    if key in seen:
        tally.reject(Reject("duplicate_id", "id seen before; soft labels align by id",
                            *ds.where(pos), id=rid))
    elif not finite:
        tally.reject(Reject("nonfinite_prediction", "teacher output is NaN/inf", *ds.where(pos),
                            id=rid))
    else:
        ok = True
    seen.add(key)
    return ok


def _replay(tally: Tally, seen: set[bytes], ds: Any, done: np.ndarray, w: SoftLabelWriter) -> None:
    """A resumed run's counts and rejects of the rows the interrupted run finished, in their
    order, as that run made them (its report was not kept): a row whose id is not in the
    partial file was rejected, as a repeat or for a non-finite output."""
    written = w.written_ids()
    for p in done:
        rid = ds.ids[p].decode()
        tally.written += _judge(tally, seen, ds, int(p), rid, finite=rid in written)
    if tally.written != w.n_rows:
        raise FormatError(f"holds {w.n_rows} rows, but its input gives {tally.written} for the "
                          "positions it finished; rerun without --resume", file=str(w.tmp))
