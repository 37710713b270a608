"""Fragment masses: the nominal masses of the pieces a molecule falls into when one or two bonds
break (formats/features.v1.md, "Fragment masses", is normative).

An EI spectrum's peaks sit mostly at the masses of such pieces (simple cleavages; rearrangements
a hydrogen or two away from them), and a fingerprint cannot say where: the mass of what lies
beyond a bond depends on the whole molecule. Two histograms over m/z 0..500 carry it to the
models:

- ``single``: for every bond whose loss disconnects the molecule (a bridge: in no ring), the
  masses of its two pieces;
- ``double``: for every pair of bonds whose loss disconnects the molecule, the masses of all its
  pieces (two bridges: three pieces; a bridge and a ring bond: the bridge's two; two ring bonds
  that every ring through one of them shares: two, opening a ring system).

A piece's mass is the sum over its atoms of the mass number of the element's most common
isotope (an atom's isotope label when it has one) plus one per attached hydrogen. Each
connected part of a molecule (a salt's ions) is fragmented on its own. Counts saturate at 255.
Measured on the DEV split (a fingerprint MLP, three seeds each, BENCHMARKS.md "Fragment
masses"): validation Recall@10 0.829 -> 0.849, Recall@1 0.500 -> 0.520.

The pairs of ring bonds come from the cycle space: each ring bond of a depth-first tree's
non-tree edges gets a random 64-bit label, each tree edge the XOR of the labels of the non-tree
edges whose cycle passes it; two ring bonds form a cut exactly when their labels are equal, and a
bridge's label is 0 (a false match has probability ~2**-63 per pair; the labels come from a fixed
seed, so the features are deterministic). Linear in the molecule's size plus the pairs found.
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem

from neimsctl.io.featblock import FRAG_BINS, FRAG_SLOTS

__all__ = ["FRAG_BINS", "FRAG_SLOTS", "fragment_counts"]

_PT = Chem.GetPeriodicTable()
#: the mass number of each element's most common isotope, by atomic number (0: a dummy atom)
_MASS = [0] + [int(_PT.GetMostCommonIsotope(z)) for z in range(1, 119)]
_LABELS = np.random.default_rng(20261203).integers(1, 2**63 - 1, size=4096, dtype=np.int64).tolist()


_PAIRS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(n, 1)``, kept (it costs more than the rest of a molecule's pairs)."""
    got = _PAIRS.get(n)
    if got is None:
        got = np.triu_indices(n, 1)
        if n <= 256:
            _PAIRS[n] = got
    return got


def fragment_counts(mol: Chem.Mol) -> np.ndarray:
    """uint8 ``(1002,)``: the ``single`` histogram (slots 0..500) then ``double`` (501..1001).

    Examples
    --------
    >>> h = fragment_counts(Chem.MolFromSmiles("CCO"))     # C-C / C-O: 15 + 31, 29 + 17
    >>> np.flatnonzero(h[:501]).tolist(), np.flatnonzero(h[501:]).tolist()
    ([15, 17, 29, 31], [14, 15, 17])
    """
    n = mol.GetNumAtoms()
    if n < 2:
        return np.zeros(FRAG_SLOTS, dtype=np.uint8)
    atom = mol.GetAtomWithIdx            # ~2x faster than iterating mol.GetAtoms()
    mass = []
    for i in range(n):
        a = atom(i)
        mass.append((a.GetIsotope() or _MASS[a.GetAtomicNum()]) + a.GetTotalNumHs())
    nbrs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    begin, end = np.nonzero(Chem.GetAdjacencyMatrix(mol))   # both directions; faster than GetBonds()
    for i, j in zip(begin.tolist(), end.tolist()):
        nbrs[i].append((j, i * n + j if i < j else j * n + i))   # (neighbour, the bond's key)
    single: list[int] = []
    double: list[int] = []
    seen = [False] * n
    for root in range(n):
        if not seen[root]:
            _part(root, nbrs, mass, seen, single, double)
    s = np.array(single, dtype=np.int64)
    d = np.array(double, dtype=np.int64)
    both = np.concatenate([s[s < FRAG_BINS], d[d < FRAG_BINS] + FRAG_BINS])   # masses are >= 1
    return np.minimum(np.bincount(both, minlength=FRAG_SLOTS), 255).astype(np.uint8)


def _part(root: int, nbrs: list[list[tuple[int, int]]], mass: list[int], seen: list[bool],
          single: list[int], double: list[int]) -> None:
    """Fragment masses of the connected part of ``root`` into ``single`` / ``double``."""
    n = len(nbrs)
    parent = [-1] * n
    parent_edge = [-1] * n
    tin = [0] * n
    label = [0] * n                          # XOR of the covering non-tree edges' labels
    order = [root]
    back: list[int] = []                     # labels of the non-tree edges
    stack = [(root, iter(nbrs[root]))]
    seen[root] = True
    while stack:
        u, it = stack[-1]
        for v, k in it:
            if k == parent_edge[u]:
                continue
            if not seen[v]:
                seen[v] = True
                parent[v], parent_edge[v], tin[v] = u, k, len(order)
                order.append(v)
                stack.append((v, iter(nbrs[v])))
                break
            if tin[v] < tin[u]:              # a non-tree edge u -> its ancestor v, met once
                lab = _LABELS[k & 4095] ^ (k * 0x9E3779B97F4A7C15 & 0x7FFFFFFFFFFFFFFF)
                label[u] ^= lab
                label[v] ^= lab
                back.append(lab)
        else:
            stack.pop()
    sub = [0] * n
    size = [0] * n
    for u in order:
        sub[u] = mass[u]
        size[u] = 1
    for u in reversed(order[1:]):            # children before parents
        p = parent[u]
        sub[p] += sub[u]
        size[p] += size[u]
        label[p] ^= label[u]
    total = sub[root]
    bridges = [u for u in order[1:] if label[u] == 0]         # in DFS order: ancestors first
    pieces = [m for u in bridges for m in (sub[u], total - sub[u])]
    single.extend(pieces)
    # a bridge with any of the part's other bonds (ring bonds) cut too: the bridge's two pieces
    ring_bonds = len(order) - 1 - len(bridges) + len(back)
    double.extend(pieces * ring_bonds)
    if len(bridges) > 1:
        # two bridges a before b: b's subtree is a piece; b below a: a's subtree less b's and
        # the rest; b beside a: a's subtree and the rest less both
        s = np.array([sub[u] for u in bridges], dtype=np.int64)
        t = np.array([tin[u] for u in bridges], dtype=np.int64)
        end = t + np.array([size[u] for u in bridges], dtype=np.int64)
        a, b = _pairs(len(bridges))
        sa, sb = s[a], s[b]
        below = t[b] < end[a]
        double.extend(sb.tolist())
        double.extend(np.where(below, sa - sb, sa).tolist())
        double.extend((total - sa - np.where(below, 0, sb)).tolist())
    if not back:
        return
    # two ring bonds that disconnect the part (every ring through one passes the other): equal labels
    groups: dict[int, list[int]] = {}
    for u in order[1:]:
        lab = label[u]
        if lab:
            if lab in groups:
                groups[lab].append(u)             # the tree edge above u (ancestors first)
            else:
                groups[lab] = [u]
    for lab in back:                              # a tree edge with the non-tree edge
        for u in groups.get(lab, ()):
            double.append(sub[u])
            double.append(total - sub[u])
    for tree in groups.values():                  # two tree edges on one path
        for i in range(1, len(tree)):
            upper = sub[tree[i - 1]]
            for j in range(i, len(tree)):
                piece = upper - sub[tree[j]]
                double.append(piece)
                double.append(total - piece)
