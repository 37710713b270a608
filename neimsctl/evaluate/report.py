"""``neimsctl eval``: predicted spectra against measured ones (NEIMS library matching and more).

:func:`run_eval` pairs a :class:`~neimsctl.io.spectra.SpectraSet` of predictions with one
of measured spectra by InChIKey connectivity block and computes, with
:mod:`neimsctl.evaluate.metrics` (SPEC.md "Evaluation"):

- Recall@K by library matching: queries = every measured spectrum whose compound has a
  prediction; library = one predicted spectrum per query compound (a prediction whose ``id``
  equals a measured record's ``id`` is preferred) + every spectrum of the ``library`` inputs
  whose compound is not a query compound; weighted cosine ``m/z^a * I^b``; with ``mass_filter``
  also ``recall@K_mass<D>``;
- the plain mean (and median) cosine, MAE and RMSE of each query against its prediction;
- when the predictions carry them: expert usage (``experts``), uncertainty calibration
  (``uncertainty``), and model size / latency / throughput (header line, ``latency_ms``).

:func:`write_report` renders a markdown report with PNG plots (:mod:`neimsctl.evaluate.plots`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from neimsctl.errors import InputError
from neimsctl.io.spectra import SpectraSet
from neimsctl.evaluate.matching import Score
from neimsctl.evaluate.metrics import (DEFAULT_KS, LibraryEval, build_library_eval, cosine_rows,
                                    library_match, mae, rmse)
from neimsctl.io.inchikey import BLOCK_LEN, connectivity_blocks
from neimsctl.io.spectrum import N_BINS

__all__ = ["EvalResult", "run_eval", "expert_usage", "uncertainty_calibration", "spearman",
           "write_report"]

EVAL_SCHEMA = "neimsctl.eval/1"


@dataclass
class EvalResult:
    """Everything :func:`write_report` needs: the JSON metrics and the per-query arrays."""

    metrics: dict[str, Any]
    task: LibraryEval
    paired: np.ndarray           # (Nq, 501) the prediction paired with each query
    cosine: np.ndarray           # (Nq,) plain cosine of each query vs its prediction
    ranks: np.ndarray            # (Nq,) rank of the right compound, no mass filter
    ranks_mass: np.ndarray | None
    query_names: np.ndarray
    query_ids: np.ndarray


def _first_preferring_ids(pred: SpectraSet, measured_ids: np.ndarray) -> np.ndarray:
    """Row order of ``pred`` that puts predictions whose id is a measured id first (stable)."""
    return np.argsort(~np.isin(pred.ids, measured_ids), kind="stable")


def _concat(sets: Sequence[SpectraSet]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not sets:
        return np.zeros((0, N_BINS), np.float32), np.zeros(0, dtype=f"<U{BLOCK_LEN}"), np.zeros(0, np.int64)
    return (np.concatenate([s.spectra for s in sets]), np.concatenate([s.keys for s in sets]),
            np.concatenate([s.mw for s in sets]))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for fewer than 3 pairs or a constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3:
        return float("nan")

    def rank(x: np.ndarray) -> np.ndarray:
        _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        return ((ends - (counts - 1) / 2.0))[inv]

    ra, rb = rank(a), rank(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def expert_usage(experts: list[Any], cosine_by_row: np.ndarray) -> dict[str, Any]:
    """Share of compounds routed to each expert, mean gate weight, and mean cosine by top expert.

    ``experts[i]`` is ``(indices, weights)`` of prediction row ``i`` (or None);
    ``cosine_by_row[i]`` the mean cosine of that compound's queries.
    """
    rows = [(i, e) for i, e in enumerate(experts) if e is not None]
    n_exp = 1 + max((max(e[0]) for _, e in rows if e[0]), default=-1)
    routed, weight, top = np.zeros(n_exp), np.zeros(n_exp), np.zeros(n_exp)
    cos_sum, cos_n = np.zeros(n_exp), np.zeros(n_exp)
    for i, (idx, w) in rows:
        for k, x in zip(idx, w):
            routed[k] += 1
            weight[k] += x
        j = idx[int(np.argmax(w))]
        top[j] += 1
        cos_sum[j] += cosine_by_row[i]
        cos_n[j] += 1
    n = max(len(rows), 1)
    return {"n_compounds": len(rows), "n_experts": int(n_exp),
            "share_routed": (routed / n).round(4).tolist(), "mean_weight": (weight / n).round(4).tolist(),
            "share_top": (top / n).round(4).tolist(),
            "mean_cosine_by_top": [round(float(c / m), 4) if m else None for c, m in zip(cos_sum, cos_n)],
            "unused_experts": [int(k) for k in np.flatnonzero(routed == 0)]}


def uncertainty_calibration(pred: np.ndarray, unc: np.ndarray, measured: np.ndarray,
                            n_bins: int = 10) -> dict[str, Any]:
    """Does predicted uncertainty track error?

    Parameters
    ----------
    pred, unc
        ``(Nq, B)`` prediction and per-bin std (NaN where not given) of each query's compound,
        base peak 1.
    measured
        ``(Nq, B)`` measured spectra, base peak 1.

    Returns
    -------
    dict
        ``spearman_compound`` (mean std vs 1 - cosine, per query), ``spearman_compound_mae``,
        ``spearman_bin`` (std vs |error| over all given bins), ``coverage_1sd``/``coverage_2sd``
        (share of bins with |error| within 1 / 2 std), and ``bins``: per std quantile the mean std,
        mean |error|, RMSE and count.
    """
    err = np.abs(pred - measured)
    given = np.isfinite(unc)
    per_q = given.any(axis=1)
    mean_unc = np.array([unc[i][given[i]].mean() if per_q[i] else np.nan for i in range(len(unc))])
    cos_err = 1.0 - cosine_rows(pred, measured)
    q_mae = err.mean(axis=1)
    s, e = unc[given].astype(np.float64), err[given].astype(np.float64)
    out: dict[str, Any] = {
        "n_queries": int(per_q.sum()), "n_bins_given": int(given.sum()),
        "spearman_compound": spearman(mean_unc[per_q], cos_err[per_q]),
        "spearman_compound_mae": spearman(mean_unc[per_q], q_mae[per_q]),
        "spearman_bin": spearman(s, e),
        "coverage_1sd": float((e <= s).mean()) if len(s) else float("nan"),
        "coverage_2sd": float((e <= 2 * s).mean()) if len(s) else float("nan"),
        "bins": []}
    if len(s):
        edges = np.unique(np.quantile(s, np.linspace(0, 1, n_bins + 1)))
        which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, max(len(edges) - 2, 0))
        for b in np.unique(which):
            m = which == b
            out["bins"].append({"std_mean": float(s[m].mean()), "abs_err_mean": float(e[m].mean()),
                                "rmse": float(np.sqrt(np.square(e[m]).mean())), "n": int(m.sum())})
    return out


def _efficiency(pred: SpectraSet) -> dict[str, Any] | None:
    h = pred.header
    out: dict[str, Any] = {k: h[k] for k in ("model", "n_parameters", "model_bytes", "device", "dtype")
                           if k in h}
    if isinstance(h.get("seconds"), (int, float)) and h["seconds"] > 0 and h.get("n_molecules"):
        out["throughput_mol_s"] = float(h["n_molecules"]) / float(h["seconds"])
        out["seconds"] = float(h["seconds"])
    if pred.latency_ms is not None:
        lat = pred.latency_ms[np.isfinite(pred.latency_ms)]
        out.update(latency_ms_p50=float(np.median(lat)), latency_ms_p95=float(np.percentile(lat, 95)),
                   latency_ms_mean=float(lat.mean()), latency_n=int(len(lat)))
    return out or None


def run_eval(pred: SpectraSet, measured: SpectraSet, libraries: Sequence[SpectraSet] = (), *,
             ks: Sequence[int] = DEFAULT_KS, mass_filter: float | None = None,
             mz_power: float = 1.0, intensity_power: float = 0.5,
             score: Score | None = None) -> EvalResult:
    """Evaluate predictions against measured spectra (see the module docstring).

    ``score`` ranks with another similarity of the matching engine (as ``search --score``);
    by default the weighted cosine ``m/z^mz_power * I^intensity_power``.

    Raises
    ------
    InputError
        No measured spectrum has a prediction of its compound, or a mass filter is asked for
        while some MWs are unknown.
    """
    order = _first_preferring_ids(pred, measured.ids)
    p_blocks = connectivity_blocks(pred.keys)[order]
    m_blocks = connectivity_blocks(measured.keys)
    matched = np.isin(m_blocks, p_blocks)
    if not matched.any():
        def skipped(s: Any) -> str:
            return "; skipped " + ", ".join(f"{k}: {v}" for k, v in sorted(s.skipped.items())) if s.skipped else ""
        raise InputError(f"no measured spectrum ({len(measured)} read{skipped(measured)}) has a predicted "
                         f"spectrum of its compound ({len(pred)} predictions read{skipped(pred)}; matched "
                         "on InChIKey first block)")
    q = np.flatnonzero(matched)
    # the library holds predictions of the query compounds only: a prediction of a compound
    # without a measured spectrum would be one more wrong candidate for every query
    used = np.isin(p_blocks, m_blocks[q])
    order, p_blocks = order[used], p_blocks[used]
    # prediction row (in `pred`) of each library compound: the first of its compound's rows
    lib_pred_rows = order[np.sort(np.unique(p_blocks, return_index=True)[1])]
    if mass_filter is not None:      # only those rows are weighed against the queries
        _need_masses([(pred, lib_pred_rows), (measured, q), *((s, None) for s in libraries)])
    ref_spec, ref_keys, ref_mw = _concat(libraries)
    task = build_library_eval(measured.spectra[q], m_blocks[q], measured.mw[q], pred.spectra[order],
                              p_blocks, pred.mw[order], ref_spec, ref_keys, ref_mw)
    args = (task.query_spectra, task.query_keys, task.query_mw, task.library_spectra,
            task.library_keys, task.library_mw)
    res = library_match(*args, ks=ks, mz_power=mz_power, intensity_power=intensity_power, score=score)
    out: dict[str, Any] = {"schema": EVAL_SCHEMA,
                           "inputs": {"predicted": pred.source, "measured": measured.source,
                                      "library": [s.source for s in libraries]},
                           "settings": {"ks": list(ks), "mass_filter": mass_filter,
                                        "mz_power": mz_power, "intensity_power": intensity_power,
                                        "score": score.name if score else "cosine",
                                        "reverse": bool(score and score.reverse)}}
    out.update({f"recall@{k}": res[f"recall@{k}"] for k in ks})
    ranks_mass = None
    if mass_filter is not None:
        resm = library_match(*args, ks=ks, mass_filter=mass_filter, mz_power=mz_power,
                             intensity_power=intensity_power, score=score)
        out.update({f"recall@{k}_mass{mass_filter:g}": resm[f"recall@{k}"] for k in ks})
        ranks_mass = resm["ranks"]
    # the prediction paired with each query: the one with the query's own id when there is
    # one, else its compound's library entry
    q_rows = _pair_rows(pred, measured.ids[q], m_blocks[q], lib_pred_rows[task.query_pred_row])
    p = pred.spectra[q_rows]
    cos = cosine_rows(p, task.query_spectra)
    wcos = cosine_rows(p, task.query_spectra, mz_power, intensity_power)
    out.update(mean_cosine=float(cos.mean()), median_cosine=float(np.median(cos)),
               mean_weighted_cosine=float(wcos.mean()), mae=mae(p, task.query_spectra),
               rmse=rmse(p, task.query_spectra), mean_rank=float(res["ranks"].mean()))
    n_comp = int(task.library_is_predicted.sum())
    out["counts"] = {"n_queries": int(len(q)), "n_compounds": n_comp,
                     "n_library": int(len(task.library_keys)),
                     "n_library_measured": int(len(task.library_keys) - n_comp),
                     "n_predicted": len(pred), "n_measured": len(measured),
                     "n_measured_unmatched": int((~matched).sum()),
                     "n_predicted_unused": int(len(pred) - n_comp),
                     "skipped": {"predicted": pred.skipped, "measured": measured.skipped,
                                 "library": [s.skipped for s in libraries]}}
    if pred.experts is not None:
        n_lib = len(lib_pred_rows)
        per_comp = np.bincount(task.query_pred_row, weights=cos, minlength=n_lib) / \
            np.maximum(np.bincount(task.query_pred_row, minlength=n_lib), 1)
        out["experts"] = expert_usage([pred.experts[i] for i in lib_pred_rows], per_comp)
    if pred.uncertainty is not None:
        out["uncertainty"] = uncertainty_calibration(p, pred.uncertainty[q_rows], task.query_spectra)
    eff = _efficiency(pred)
    if eff is not None:
        out["efficiency"] = eff
    return EvalResult(out, task, p, cos, res["ranks"], ranks_mass, measured.names[q], measured.ids[q])


def _need_masses(sets: Sequence[tuple[SpectraSet, np.ndarray | None]]) -> None:
    """Give every row (of ``rows``, or all) without a stated MW the mass of its SMILES or InChI,
    else of its formula, as ``index`` and ``search`` do (:attr:`SpectraSet.no_mass`).

    Raises
    ------
    InputError
        Some row still has no mass: naming the first (file, line, record) and how many.
    """
    from neimsctl.chem import structure
    from neimsctl.errors import FormatError

    missing: list[str] = []
    n_missing = 0
    for s, rows in sets:
        wanted = None if rows is None else set(rows.tolist())
        for row, (where, kind, text, formula) in s.no_mass.items():
            if s.mw[row] >= 0 or (wanted is not None and row not in wanted):
                continue
            mass = None
            try:
                if kind == "smiles" and text:
                    mass = structure.nominal_mass(structure.mol_from_smiles(text))
                elif kind == "inchi" and text:
                    mass = structure.nominal_mass(structure.mol_from_inchi(text))
            except FormatError:
                mass = None
            if mass is None and formula:
                try:
                    mass = structure.formula_nominal_mass(formula) or None
                except Exception:  # noqa: BLE001 - an unknown element symbol: no mass
                    mass = None
            if mass is not None and mass > 0:
                s.mw[row] = mass
                continue
            n_missing += 1
            if not missing:
                missing.append(f"{s.source}: {where}" if where else s.source)
    if n_missing:
        more = f" ({n_missing:,} records in all)" if n_missing > 1 else ""
        raise InputError(f"--mass-filter needs the molecular mass of every spectrum: {missing[0]} has "
                         f"none (no MW, nor a SMILES, InChI or formula that gives one){more}")


def _pair_rows(pred: SpectraSet, q_ids: np.ndarray, q_blocks: np.ndarray,
               default: np.ndarray) -> np.ndarray:
    """Row of ``pred`` paired with each query: same id and same compound if any, else ``default``."""
    by_id = {rid: i for i, rid in reversed(list(enumerate(pred.ids)))}
    p_blocks = connectivity_blocks(pred.keys)
    out = default.copy()
    for j, rid in enumerate(q_ids):
        i = by_id.get(rid)
        if i is not None and p_blocks[i] == q_blocks[j]:
            out[j] = i
    return out


def write_report(result: EvalResult, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``report.md`` and its PNG plots into ``out_dir`` (created); returns the files written."""
    from neimsctl.evaluate.plots import write_plots

    from neimsctl.io.streams import atomic_path, make_dirs

    out = make_dirs(out_dir)
    plots = write_plots(result, out)
    m = result.metrics
    ks = m["settings"]["ks"]
    mf = m["settings"]["mass_filter"]
    lines = ["# neimsctl eval report", "",
             f"Predicted: `{m['inputs']['predicted']}`; measured: `{m['inputs']['measured']}`; "
             f"library: {', '.join(f'`{s}`' for s in m['inputs']['library']) or 'predictions only'}.", "",
             f"Library matching: cosine on m/z^{m['settings']['mz_power']:g} * I^"
             f"{m['settings']['intensity_power']:g}; {m['counts']['n_queries']} queries, "
             f"{m['counts']['n_compounds']} predicted compounds, "
             f"{m['counts']['n_library']} library entries.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| Recall@{k} | {m[f'recall@{k}']:.4f} |" for k in ks]
    if mf is not None:
        lines += [f"| Recall@{k} (±{mf:g} Da) | {m[f'recall@{k}_mass{mf:g}']:.4f} |" for k in ks]
    lines += [f"| {k.replace('_', ' ')} | {m[k]:.4f} |" for k in
              ("mean_cosine", "median_cosine", "mean_weighted_cosine", "mae", "rmse", "mean_rank")]
    for section in ("experts", "uncertainty", "efficiency"):
        if section in m:
            lines += ["", f"## {section.capitalize()}", "", "```json",
                      _json(m[section]), "```"]
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [report, *plots]


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=float)
