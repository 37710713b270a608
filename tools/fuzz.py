#!/usr/bin/env python3
"""Run the fuzz properties of tests/fuzz for N minutes with fresh random inputs; save what fails.

    python tools/fuzz.py --minutes 10 [--out fuzz-failures] [--only cli_] [--seed 1]
        [--batch 200] [--cli-batch 5] [--shrink-cli]

The properties and strategies are those of the CI suite (``tests/fuzz/_fuzz_props.PROPERTIES``):
the MSP reader, ``convert_msp``, the line splitter, featurize rows and predict inputs in process,
and ``msp2jsonl``, ``featurize`` and ``predict`` as commands. They run round robin, in batches
of ``--batch`` examples (``--cli-batch`` for the commands, a process each), every batch with a
new seed, until the time is up. A failing input is shrunk (commands only with ``--shrink-cli``:
each try is a process) and written to ``OUT/<property>-<hash>.txt`` (the property, the seed, the
input as a Python literal and the traceback) and, when it holds bytes, ``.bin`` (the raw input
file); each distinct failure (property, exception type, innermost frame) is kept once. Turn what
it finds into regression tests. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("tests/fuzz", "tests/cli"):
    sys.path.insert(0, str(ROOT / sub))
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

import _fuzz_props as fp  # noqa: E402


def first_bytes(value: object) -> bytes | None:
    """The input file of a drawn value (the first ``bytes`` in it), if any."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            got = first_bytes(v)
            if got is not None:
                return got
    return None


def signature(name: str, exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    inner = next((f for f in reversed(tb) if "hypothesis" not in f.filename), tb[-1] if tb else None)
    where = f"{Path(inner.filename).name}:{inner.lineno}" if inner else "?"
    return f"{name} {type(exc).__name__} {where}"


def run_batch(name: str, prop: fp.Property, examples: int, batch_seed: int, shrink: bool,
              counter: dict[str, int]) -> tuple[object, BaseException] | None:
    """``examples`` inputs of one property; the (shrunk) failing input and its error, or None."""
    last: dict[str, object] = {}

    def body(value: object) -> None:
        counter[name] = counter.get(name, 0) + 1
        try:
            prop.check(value)
        except BaseException:
            last["value"] = value  # the last failing call is the shrunk example
            raise

    phases = (Phase.generate, Phase.shrink) if shrink else (Phase.generate,)
    test = seed(batch_seed)(settings(max_examples=examples, deadline=None, database=None,
                                     phases=phases, suppress_health_check=list(HealthCheck),
                                     print_blob=False)(given(prop.strategy)(body)))
    try:
        test()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure is a finding
        if "value" not in last:
            raise
        return last["value"], exc
    return None


def save(out: Path, name: str, batch_seed: int, value: object, exc: BaseException) -> Path:
    raw = first_bytes(value)
    digest = hashlib.sha256(repr(value).encode("utf-8", "backslashreplace")).hexdigest()[:10]
    path = out / f"{name}-{digest}.txt"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    path.write_text(f"property: {name}\nseed: {batch_seed}\ninput: {value!r}\n\n{tb}",
                    encoding="utf-8", errors="backslashreplace")
    if raw is not None:
        path.with_suffix(".bin").write_bytes(raw)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=Path("fuzz-failures"))
    ap.add_argument("--only", default="", help="run only properties whose name contains this")
    ap.add_argument("--seed", type=int, default=None, help="seed of the batch seeds (default: random)")
    ap.add_argument("--batch", type=int, default=200, help="examples per in-process batch")
    ap.add_argument("--cli-batch", type=int, default=5, help="examples per command batch")
    ap.add_argument("--shrink-cli", action="store_true", help="shrink failing command inputs too")
    args = ap.parse_args(argv)
    props = {k: v for k, v in fp.PROPERTIES.items() if args.only in k}
    if not props:
        ap.error(f"--only {args.only!r}: no property; have {', '.join(fp.PROPERTIES)}")
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 60 * args.minutes
    counter: dict[str, int] = {}
    seen: dict[str, Path] = {}
    started = time.monotonic()
    try:
        while time.monotonic() < deadline:
            for name, prop in props.items():
                if time.monotonic() >= deadline:
                    break
                batch_seed = rng.getrandbits(32)
                n = args.cli_batch if prop.cli else args.batch
                found = run_batch(name, prop, n, batch_seed, args.shrink_cli or not prop.cli, counter)
                if found is None:
                    continue
                sig = signature(name, found[1])
                if sig not in seen:
                    seen[sig] = save(args.out, name, batch_seed, *found)
                    print(f"FAIL {sig} -> {seen[sig]}", flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    minutes = (time.monotonic() - started) / 60
    print(f"{minutes:.1f} min: " + ", ".join(f"{k} {v}" for k, v in counter.items()) + " examples")
    print(f"{len(seen)} distinct failures" + (f" in {args.out}" if seen else ""))
    return 1 if seen else 0


if __name__ == "__main__":
    sys.exit(main())
