"""The training loop on a toy MLP: exact resume after SIGKILL and after SIGINT, logs, clipping.

The reference run happens in-process; the interrupted runs are real subprocesses of
``_toy_fit.py`` killed at a known point, then resumed in-process. One torch thread everywhere
so the arithmetic is bit-identical across processes.
"""

from __future__ import annotations

import importlib.util
import io
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import torch

from neimsctl.errors import NeimsError
from neimsctl.models.checkpoint import load_checkpoint
from neimsctl.train.config import load_config
from neimsctl.train.trainer import resolve_device, run_training

TOY = Path(__file__).with_name("_toy_fit.py")
_spec = importlib.util.spec_from_file_location("_toy_fit", TOY)
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)


@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _last(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")


def _same_run(a: Path, b: Path) -> None:
    ca, cb = _last(a), _last(b)
    assert (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"]) == (4, 12)  # 6 batches / accum 2
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in c["history"]] for c in (ca, cb)]
    assert strip[0] == strip[1]
    assert ca["optimizer"]["state"][0]["step"] == cb["optimizer"]["state"][0]["step"]
    assert ca["scheduler"]["last_epoch"] == cb["scheduler"]["last_epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    n = torch.get_num_threads()
    try:
        assert toy.main([str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    return out


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TOY), str(out), "--step-sleep", "0.05",
                             "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, line: str) -> None:
    for got in proc.stdout:
        if got.startswith(line):
            return
    proc.wait()
    pytest.fail(f"toy run ended before {line!r}: rc {proc.returncode}: {proc.stderr.read()[-2000:]}")


def test_sigkill_then_resume_is_exact(reference: Path, tmp_path: Path, one_thread) -> None:
    proc = _start(tmp_path)
    _wait_for(proc, "EPOCH 2")
    proc.kill()  # SIGKILL: no handler runs
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _last(tmp_path)["epoch"] >= 2
    assert toy.main([str(tmp_path), "--resume", "auto", "--no-report"]) == 0
    _same_run(reference, tmp_path)
    ref_steps = [r for r in map(orjson.loads, (reference / "train_log.jsonl").read_bytes().splitlines())]
    got_steps = [r for r in map(orjson.loads, (tmp_path / "train_log.jsonl").read_bytes().splitlines())]
    drop = ("samples_per_s", "seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ref_steps] == \
        [{k: v for k, v in r.items() if k not in drop} for r in got_steps]


def test_sigint_writes_checkpoint_and_resumes_mid_epoch(reference: Path, tmp_path: Path,
                                                        one_thread) -> None:
    proc = _start(tmp_path)
    _wait_for(proc, "EPOCH 1")
    time.sleep(0.12)  # land inside epoch 2
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "INTERRUPTED" in out, err
    assert "SIGINT: saving a checkpoint" in err
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "interrupted.pt", featurizer_hash="toyhash")
    assert ckpt["epoch"] >= 1 and ckpt["step"] >= 3
    assert toy.main([str(tmp_path), "--resume", "auto", "--no-report"]) == 0
    assert not (tmp_path / "checkpoints" / "interrupted.pt").exists()
    _same_run(reference, tmp_path)


def test_outputs_and_jsonl_fields(reference: Path) -> None:
    recs = [orjson.loads(ln) for ln in (reference / "train_log.jsonl").read_bytes().splitlines()]
    steps = [r for r in recs if r["kind"] == "step"]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert len(steps) == 12 and len(epochs) == 4
    for r in steps:
        assert {"epoch", "step", "batch", "loss", "mse", "l1", "grad_norm", "lr",
                "samples_per_s"} <= r.keys()
        assert r["grad_norm"] > 0 and r["samples_per_s"] > 0
    assert {"val_mse", "val_score"} <= epochs[0]["val"].keys()
    assert [r["step"] for r in steps] == list(range(1, 13))
    best = [r for r in epochs if r["best"]][-1]
    assert load_checkpoint(reference / "checkpoints" / "best.pt")["best_metric"] == \
        pytest.approx(best["val"]["val_score"])
    for name in ("config.yaml", "report.md", "loss.png", "grad_norm.png", "lr.png"):
        assert (reference / name).stat().st_size > 0
    assert load_config(reference / "config.yaml", env={}).train.precision == "fp32"


def _tiny(tmp_path: Path, *sets: str, loss=None, log=None):
    cfg = load_config(None, ["train.epochs=1", "train.batch_size=8", "train.device=cpu",
                             "optim.name=sgd", "optim.lr=1.0", "optim.momentum=0",
                             "optim.weight_decay=0", "train.best_metric=loss", *sets], env={})
    model = toy.toy_model()
    before = [p.detach().clone() for p in model.parameters()]
    res = run_training(cfg, model, loss or toy.toy_loss(), toy.NoisyData(16, 1, noise=False),
                       out_dir=tmp_path, log=log, report=False)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    return res, delta


def test_clipping_bounds_the_update_and_logs_stay_off_stdout(tmp_path: Path, capsys) -> None:
    log = io.StringIO()
    res, delta = _tiny(tmp_path, "train.clip_norm=0.001", "train.grad_accum=2", log=log)
    assert res.step == 1 and not res.interrupted  # 2 batches, accumulated into 1 step
    assert float(delta.norm()) <= 0.001 * 1.0001  # SGD lr 1: update = clipped gradient
    rec = orjson.loads((tmp_path / "train_log.jsonl").read_bytes().splitlines()[0])
    assert rec["grad_norm"] > 0.001  # the norm before clipping is recorded
    assert "epoch 1/1" in log.getvalue()
    assert capsys.readouterr().out == ""


def test_bf16_autocast_on_cpu_runs(tmp_path: Path) -> None:
    res, delta = _tiny(tmp_path, "train.precision=bf16")
    assert res.epochs_done == 1 and torch.isfinite(delta).all()


def test_non_finite_loss_is_an_error(tmp_path: Path) -> None:
    def bad_loss(model, batch):
        return model(batch[0]).sum() * float("nan"), {}

    with pytest.raises(NeimsError, match="loss is nan"):
        _tiny(tmp_path, loss=bad_loss)


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def _full_disk_checkpoints(monkeypatch) -> None:
    """Checkpoints go to a disk that is full: the real write path, onto /dev/full."""
    import contextlib

    from neimsctl.io import streams
    from neimsctl.models import checkpoint as ck

    @contextlib.contextmanager
    def full_open_out(path):
        with open("/dev/full", "wb", buffering=0) as fh:  # every write fails at once
            yield streams.OutStream(fh, path)

    monkeypatch.setattr(ck, "open_out", full_open_out)


def test_full_disk_run_dir_made_by_the_run_is_removed(tmp_path: Path, monkeypatch) -> None:
    from neimsctl.errors import OutputError

    _full_disk_checkpoints(monkeypatch)
    with pytest.raises(OutputError, match=r"checkpoints/last.pt: cannot write: No space left"):
        _tiny(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # no config.yaml and empty log posing as a run


def test_full_disk_in_an_existing_run_dir_leaves_it_alone(tmp_path: Path, monkeypatch) -> None:
    from neimsctl.errors import OutputError

    (tmp_path / "notes.txt").write_text("mine")
    _full_disk_checkpoints(monkeypatch)
    with pytest.raises(OutputError):
        _tiny(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_run_dir_under_a_file_is_one_output_error(tmp_path: Path) -> None:
    from neimsctl.errors import OutputError

    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="file/run: cannot create the directory"):
        _tiny(tmp_path / "file" / "run")


def test_sigterm_is_reported_as_sigterm(tmp_path: Path) -> None:
    """The run returns the signal, so the commands exit 143 on SIGTERM (130 on Ctrl-C)."""
    proc = _start(tmp_path)
    _wait_for(proc, "EPOCH 1")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert f"INTERRUPTED {int(signal.SIGTERM)}" in out and "SIGTERM: saving a checkpoint" in err
    # mid-epoch: interrupted.pt; a signal that lands at an epoch's end: that epoch's last.pt
    # (about 1 run in 5 here; --resume goes on from either)
    ckpts = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert "interrupted.pt" in ckpts or "last.pt" in ckpts, ckpts


def test_quiet_log_passes_only_warnings_and_errors() -> None:
    from neimsctl.train.trainer import QuietLog

    sink = io.StringIO()
    q = QuietLog(sink)
    print("neimsctl: epoch 1/3 step 15 loss 0.7", file=q, flush=True)
    q.write("neimsctl: warning: expert collapse: ")   # a line written in pieces
    q.write("expert 0 gets 1% of routing slots\nneimsctl: resumed from x\n")
    print("neimsctl pretrain: error: something", file=q)
    assert sink.getvalue() == ("neimsctl: warning: expert collapse: expert 0 gets 1% of routing "
                               "slots\nneimsctl pretrain: error: something\n")
    assert q.quiet and q.writable()


def test_quiet_run_prints_nothing_but_warnings(tmp_path: Path, capsys) -> None:
    from neimsctl.train.trainer import QuietLog

    cfg = load_config(None, toy.BASE + ["train.epochs=2"])
    err = io.StringIO()
    res = run_training(cfg, toy.toy_model(), toy.toy_loss(), toy.NoisyData(64, 3, noise=False),
                       validate=toy.toy_validate(toy.NoisyData(16, 7, noise=False)),
                       out_dir=tmp_path, log=QuietLog(err), report=False)
    assert res.epochs_done == 2 and err.getvalue() == ""
    assert capsys.readouterr().err == ""            # no progress bar either


def test_a_second_signal_marks_itself_for_the_exit_status() -> None:
    from neimsctl import interrupts

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        interrupts.install(signal.SIGINT, signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            interrupts.interrupt(signal.SIGTERM)
        assert interrupts.pending() == signal.SIGTERM   # -> exit 143, not 130
    finally:
        interrupts.install(signal.SIGINT)
        for s, h in old.items():
            signal.signal(s, h)


def test_console_one_compact_line_per_epoch_full_line_on_request(tmp_path: Path) -> None:
    """Default: per epoch 'epoch, loss, selection metric, best so far (its epoch), time'; the
    full set of numbers stays in train_log.jsonl; full_console (-v) prints them all."""
    import re

    from neimsctl.train.trainer import full_epoch_line

    cfg = load_config(None, toy.BASE + ["train.epochs=3"])
    for full in (False, True):
        err = io.StringIO()
        run_training(cfg, toy.toy_model(), toy.toy_loss(), toy.NoisyData(64, 3, noise=False),
                     validate=toy.toy_validate(toy.NoisyData(16, 7, noise=False)),
                     out_dir=tmp_path / str(full), log=err, report=False, full_console=full)
        lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("neimsctl: epoch")]
        epochs = [r for r in map(orjson.loads, (tmp_path / str(full) / "train_log.jsonl")
                                 .read_bytes().splitlines()) if r["kind"] == "epoch"]
        assert len(lines) == len(epochs) == 3
        if full:
            assert lines == [full_epoch_line(e, 3) for e in epochs]
            assert all("val_mse" in ln and "grad_norm" in ln for ln in lines)
            continue
        best_so_far = None
        for ln, e in zip(lines, epochs):
            m = re.fullmatch(r"neimsctl: epoch (\d)/3  loss (\S+)  val_score (\S+)  "
                             r"best (\S+) \((new|epoch \d)\)  \d+\.\d s", ln)
            assert m, ln
            assert int(m[1]) == e["epoch"] and float(m[2]) == pytest.approx(e["loss"], rel=1e-3)
            assert float(m[3]) == pytest.approx(e["val"]["val_score"], abs=1e-4)
            if e["best"]:
                best_so_far = e["epoch"]
            assert m[5] == ("new" if e["best"] else f"epoch {best_so_far}")
            assert "grad_norm" not in ln and "lr" not in ln.split()


def _toy_run(cfg_sets: list[str], out: Path, resume=None, log=None):
    cfg = load_config(None, ["train.batch_size=8", "train.device=cpu", "train.best_metric=loss",
                             *cfg_sets], env={})
    return run_training(cfg, toy.toy_model(), toy.toy_loss(), toy.NoisyData(16, 1, noise=False),
                        out_dir=out, resume=resume, log=log or io.StringIO(), report=False)


def test_a_new_run_into_a_run_directory_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    from neimsctl.errors import OutputError
    from neimsctl.train.trainer import existing_run

    run = tmp_path / "run"
    assert existing_run(run) is None
    _toy_run(["train.epochs=1"], run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(OutputError, match=r"run: holds a training run \(.*train_log\.jsonl\); "
                                          r"resume it \(--resume\)"):
        _toy_run(["train.epochs=1"], run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    (run / "train_log.jsonl").unlink()             # checkpoints alone also make a run
    assert existing_run(run) == f"{run}/checkpoints/best.pt"
    with pytest.raises(OutputError, match="holds a training run"):
        _toy_run(["train.epochs=1"], run)
    log = io.StringIO()
    assert _toy_run(["train.epochs=2"], run, resume=True, log=log).epochs_done == 2
    # another length than the checkpoint's is said (a resume with another config ran it silently)
    assert f"warning: resume: train.epochs 1 -> 2 (not the checkpoint's): the run goes on with the new " \
           f"length (the run's own config: {run}/config.yaml)" in log.getvalue()
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)      # an empty directory holds no run
    assert _toy_run(["train.epochs=1"], empty).epochs_done == 1


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.jsonl").write_bytes(b'{"kind":"step","epoch":0,"step":1}\n{"kind":"st')
    log = io.StringIO()
    res = _toy_run(["train.epochs=1"], run, resume=True, log=log)
    assert res.epochs_done == 1 and "no checkpoint in" in log.getvalue()
    kinds = [orjson.loads(x)["kind"] for x in (run / "train_log.jsonl").read_bytes().splitlines()]
    assert kinds[-1] == "epoch" and kinds.count("epoch") == 1   # the old partial lines dropped


def test_resume_falls_back_to_last_when_interrupted_is_damaged(tmp_path: Path) -> None:
    from neimsctl.errors import CheckpointError

    run = tmp_path / "run"
    _toy_run(["train.epochs=1"], run)
    ckpts = run / "checkpoints"
    (ckpts / "interrupted.pt").write_bytes((ckpts / "last.pt").read_bytes()[:5000])  # truncated
    log = io.StringIO()
    res = _toy_run(["train.epochs=2"], run, resume=True, log=log)
    assert res.epochs_done == 2
    text = log.getvalue()
    assert re.search(r"warning: resume: \S+interrupted\.pt: truncated or damaged checkpoint.*; "
                     r"resuming from \S+last\.pt instead", text), text
    assert "resumed from" in text and "last.pt (epoch 1" in text
    assert not (ckpts / "interrupted.pt").exists()  # removed at the end of the next epoch
    # neither usable: the error names the checkpoint and says it is truncated
    (ckpts / "interrupted.pt").write_bytes((ckpts / "last.pt").read_bytes()[:5000])
    (ckpts / "last.pt").unlink()
    with pytest.raises(CheckpointError, match=r"interrupted\.pt: truncated or damaged checkpoint: "
                                              r"its zip archive has no end"):
        _toy_run(["train.epochs=3"], run, resume=True)


def test_check_inputs_compares_contents_order_and_role_and_says_why(tmp_path: Path) -> None:
    """Inputs are the same by content, in order and role, whatever their names; the same files
    in another order, a superset or a subset of the run's are refused with the reason (their
    rows would be read in another order, or other data trained on); a checkpoint written before
    runs recorded their inputs, or a stage that gives none, is not checked."""
    from neimsctl.errors import InputError
    from neimsctl.train.trainer import check_inputs, describe_inputs

    (a := tmp_path / "a.h5").write_bytes(b"a" * 10)
    (b := tmp_path / "b.h5").write_bytes(b"b" * 2000)
    (c := tmp_path / "copy.h5").write_bytes(b"a" * 10)

    def ckpt(*paths: Path, roles=None) -> dict:
        return {"extra": {"inputs": describe_inputs(paths, [p.name for p in paths], roles)}}

    def refused(run: dict, *paths: Path, roles=None) -> str:
        with pytest.raises(InputError) as exc:
            check_inputs(run, describe_inputs(paths, [p.name for p in paths], roles), "R/last.pt")
        assert "\n" not in str(exc.value)
        return str(exc.value)

    run = ckpt(a, b)
    assert run["extra"]["inputs"][0] == {"name": "a.h5", "size": 10, "sha256": (
        "bf2cb58a68f684d95a3b78ef8f661c9a4e5b09e82cc8f9cc88cce90528caeb27")}
    check_inputs(run, describe_inputs([c, b], ["copy.h5", "b.h5"]), "R/last.pt")  # same bytes
    msg = refused(run, b, a)
    assert msg == ("cannot resume: R/last.pt was trained on a.h5 (sha256 bf2cb58a68f6, 10 bytes) + "
                   "b.h5 (sha256 d4c6e5ac27e3, 2,000 bytes), not on b.h5 (sha256 d4c6e5ac27e3, "
                   "2,000 bytes) + a.h5 (sha256 bf2cb58a68f6, 10 bytes) (the same files in another "
                   "order: their data would be read in another order, so the run would not go on "
                   "where it stopped); give the run's input again, or start a new run in another "
                   "run directory")
    assert "(the run's files and more: the data added would change what the epochs train " \
           "on, so" in refused(ckpt(a), a, b)
    assert "(only some of the run's files: the data left out" in refused(run, a)
    other = refused(run, a, a)                         # neither: no reason added
    assert other.endswith("(sha256 bf2cb58a68f6, 10 bytes); give the run's input again, or "
                          "start a new run in another run directory")
    # a role is part of the input: the same file as soft labels is not the same as a shard
    kd = ckpt(a, b, roles=[None, "--soft-labels"])
    assert kd["extra"]["inputs"][1]["role"] == "--soft-labels" and "role" not in kd["extra"]["inputs"][0]
    assert ", not on a.h5 (sha256 bf2cb58a68f6, 10 bytes) + b.h5 (sha256" in refused(kd, a, b)
    assert "was trained on a.h5 (sha256 bf2cb58a68f6, 10 bytes) + --soft-labels b.h5 (sha256 " \
           in refused(kd, a, b)
    check_inputs(kd, describe_inputs([c, b], ["x", "y"], ["", "--soft-labels"]), "R/last.pt")
    for old in ({"extra": {}}, {"extra": {"inputs": None}}, {}):   # earlier versions: any input
        check_inputs(old, describe_inputs([b], ["b.h5"]), "R/last.pt")
    check_inputs(run, None, "R/last.pt")


def test_a_run_stopped_between_its_epoch_end_writes_resumes_with_the_right_best_pt(
        tmp_path: Path, monkeypatch) -> None:
    """The disk fills (or the process is killed) after the first checkpoint of an epoch's end
    is written and before the second: the resumed run ends with a best.pt of the best epoch and
    a log of every epoch. (last.pt was written first: it held the new best while best.pt was
    never written, and the resumed run, finding no better epoch, never wrote it.)"""
    import errno

    from neimsctl.io.streams import output_error
    from neimsctl.models import checkpoint as ck
    from neimsctl.errors import OutputError

    writes: list[str] = []

    def failing(real):
        def write(*args, **kwargs):
            dst = Path(args[1] if real is ck.copy_checkpoint else args[0])
            writes.append(dst.name)
            if len(writes) == 2:
                raise output_error(dst, OSError(errno.ENOSPC, "No space left on device"))
            return real(*args, **kwargs)
        return write

    def run(resume: bool):   # every epoch scores the same: epoch 1 is the best
        cfg = load_config(None, ["train.batch_size=8", "train.device=cpu", "train.epochs=2",
                                 "train.best_metric=val_score", "train.best_mode=max"], env={})
        return run_training(cfg, toy.toy_model(), toy.toy_loss(), toy.NoisyData(16, 1, noise=False),
                            validate=lambda model: {"val_score": 0.5}, out_dir=tmp_path,
                            resume=resume, log=io.StringIO(), report=False)

    with monkeypatch.context() as m:
        m.setattr(ck, "save_checkpoint", failing(ck.save_checkpoint))
        m.setattr(ck, "copy_checkpoint", failing(ck.copy_checkpoint))
        with pytest.raises(OutputError, match="No space left on device"):
            run(False)
    assert run(True).epochs_done == 2
    history = _last(tmp_path)["history"]
    assert [h["epoch"] for h in history if h["best"]] == [1]
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == 1
    logged = [orjson.loads(ln) for ln in (tmp_path / "train_log.jsonl").read_bytes().splitlines()]
    assert [r["epoch"] for r in logged if r["kind"] == "epoch"] == [1, 2]
