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
Read by a student with ``fragments: true``; on the DEV split they lift the compact student's
validation Recall@1 by 2.3 points and Recall@10 by 1.2 (three seeds, BENCHMARKS.md "Fragment
masses").

How: a block of molecules at once, in numpy (:func:`fragment_block`; per molecule only its
atoms' masses and bonds are read from RDKit, :func:`fragment_graph`). A breadth-first spanning
forest; each non-tree edge gets a random 62-bit label, each tree edge the XOR of the labels of
the non-tree edges whose cycle passes it (the XOR over its subtree of the labels at the
non-tree edges' ends). A bridge's label is 0; two ring bonds form a cut exactly when their labels
are equal (every ring through one passes the other; a false match has probability ~2**-62 per
pair, and the result does not depend on the labels otherwise); labels are compared only within
one connected part, never across the molecules of a block. Pieces are subtree masses: for
two tree edges, nested subtrees give the part between them, disjoint ones (the two branches of a
ring under a breadth-first tree) both subtrees. Linear in the atoms plus the pairs found (~50 µs
a molecule with RDKit's part, half of a depth-first search per molecule in Python); more than
:data:`MAX_PAIRED` bridges in one part, or ring bonds in one cut class (thousands of atoms, far
beyond m/z 500), count no pairs among themselves, so that a hostile input cannot ask for
millions of pairs. Blocks of fewer than :data:`SMALL_BLOCK` molecules (the API's one-molecule
calls) take the same steps per molecule in plain Python (:func:`_one_molecule`), where numpy's
per-call overhead would dominate.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from rdkit import Chem

from neimsctl.io.featblock import FRAG_BINS, FRAG_SLOTS

__all__ = ["FRAG_BINS", "FRAG_SLOTS", "MAX_PAIRED", "FragGraph", "fragment_graph", "fragment_block",
           "fragment_counts", "assemble_frags"]

#: Bridges of one part (ring bonds of one cut class) above which their pairs are not counted.
MAX_PAIRED = 1000
#: Atoms up to which the bonds are read from RDKit's adjacency matrix (quadratic in size).
_DENSE_ATOMS = 256
_PT = Chem.GetPeriodicTable()
#: the mass number of each element's most common isotope, by atomic number (0: a dummy atom)
_MASS = [0] + [int(_PT.GetMostCommonIsotope(z)) for z in range(1, 119)]


def _edge_labels(ids: np.ndarray) -> np.ndarray:
    """A pseudo-random 62-bit label (> 0) per edge id: SplitMix64's finalizer, a non-linear hash
    of the whole id (a table indexed by the id's low bits, XORed with a multiple of its high
    bits, made a ring bond's label in one molecule equal one 65,536 edges further in the block)."""
    z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = (z ^ (z >> np.uint64(31))) >> np.uint64(2)
    return np.maximum(z.astype(np.int64), 1)


class FragGraph(NamedTuple):
    """What the fragment masses need of one molecule (:func:`fragment_graph`)."""

    #: int64 ``(n,)``: each atom's mass (isotope or most common isotope, plus its hydrogens)
    mass: np.ndarray
    #: int64 ``(b,)`` each: the two atoms of every bond
    begin: np.ndarray
    end: np.ndarray


def fragment_graph(mol: Chem.Mol) -> FragGraph:
    """The atoms' masses and the bonds of ``mol`` (RDKit's part of the work, ~35 µs)."""
    n = mol.GetNumAtoms()
    atom = mol.GetAtomWithIdx            # faster than iterating mol.GetAtoms()
    mass = []
    for i in range(n):
        a = atom(i)
        mass.append((a.GetIsotope() or _MASS[a.GetAtomicNum()]) + a.GetTotalNumHs())
    if n <= _DENSE_ATOMS:                # the adjacency matrix: faster than GetBonds() when small
        begin, end = np.nonzero(Chem.GetAdjacencyMatrix(mol))
        keep = begin < end
        begin, end = begin[keep], end[keep]
    else:
        pairs = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()],
                         dtype=np.int64).reshape(-1, 2)
        begin, end = pairs[:, 0], pairs[:, 1]
    return FragGraph(np.array(mass, dtype=np.int64), begin.astype(np.int64), end.astype(np.int64))


def fragment_counts(mol: Chem.Mol) -> np.ndarray:
    """uint8 ``(1002,)``: the ``single`` histogram (slots 0..500) then ``double`` (501..1001).

    Examples
    --------
    >>> h = fragment_counts(Chem.MolFromSmiles("CCO"))     # C-C / C-O: 15 + 31, 29 + 17
    >>> np.flatnonzero(h[:501]).tolist(), np.flatnonzero(h[501:]).tolist()
    ([15, 17, 29, 31], [14, 15, 17])
    """
    return fragment_block([fragment_graph(mol)])[0]


def assemble_frags(rows: Sequence[FragGraph | np.ndarray]) -> np.ndarray:
    """A block's ``frags`` column, uint8 ``(n, 1002)``: :class:`FragGraph` rows computed all at once
    (:func:`fragment_block`), histogram rows stacked."""
    if rows and isinstance(rows[0], FragGraph):
        return fragment_block(rows)  # type: ignore[arg-type]
    return np.stack(rows) if rows else np.zeros((0, FRAG_SLOTS), dtype=np.uint8)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """concat(arange(s, s + c) for s, c)."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return shift + np.arange(total, dtype=np.int64)


def _group_pairs(*keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``a < b`` of positions equal in every one of ``keys`` (sorted: equal keys are
    adjacent), in groups of at most :data:`MAX_PAIRED`."""
    n_items = len(keys[0])
    if n_items < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    first = np.concatenate([[True], np.logical_or.reduce([k[1:] != k[:-1] for k in keys])])
    gid = np.cumsum(first) - 1
    gstart = np.flatnonzero(first)
    gsize = np.diff(np.concatenate([gstart, [n_items]]))
    end = np.where(gsize <= MAX_PAIRED, gstart + gsize, 0)[gid]
    after = np.maximum(end - np.arange(n_items) - 1, 0)
    a = np.repeat(np.arange(n_items, dtype=np.int64), after)
    b = a + 1 + (np.arange(len(a), dtype=np.int64) - np.repeat(np.cumsum(after) - after, after))
    return a, b


def _in_part(keys: np.ndarray, parts: np.ndarray, table: np.ndarray, table_parts: np.ndarray) -> np.ndarray:
    """Whether each ``(keys[i], parts[i])`` is one of the pairs ``(table[j], table_parts[j])``:
    a label matches only within its own connected part (never another molecule's)."""
    if len(table) == 0 or len(keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    order = np.lexsort((table_parts, table))
    t, tp = table[order], table_parts[order]
    lo = np.searchsorted(t, keys, side="left")
    hi = np.searchsorted(t, keys, side="right")
    found = (hi > lo) & (tp[np.minimum(lo, len(t) - 1)] == parts)
    for i in np.flatnonzero(hi - lo > 1):                  # a label twice: a 2**-62 event
        found[i] = bool((tp[lo[i]:hi[i]] == parts[i]).any())
    return found


#: Blocks of fewer molecules than this are counted one molecule at a time in Python
#: (:func:`_one_molecule`): the block's numpy calls cost ~0.85 ms whatever its size (a few per
#: breadth-first level), a single molecule in Python ~0.1 ms (the API's one-molecule calls).
SMALL_BLOCK = 8


def fragment_block(graphs: Sequence[FragGraph]) -> np.ndarray:
    """uint8 ``(len(graphs), 1002)``: :func:`fragment_counts` of every molecule, all at once."""
    nmol = len(graphs)
    if nmol < SMALL_BLOCK:
        return np.stack([_one_molecule(g) for g in graphs]) if graphs else \
            np.zeros((0, FRAG_SLOTS), dtype=np.uint8)
    natoms = np.fromiter((len(g.mass) for g in graphs), dtype=np.int64, count=nmol)
    nbonds = np.fromiter((len(g.begin) for g in graphs), dtype=np.int64, count=nmol)
    offset = np.concatenate([[0], np.cumsum(natoms)])
    n = int(offset[-1])
    if n == 0:
        return np.zeros((nmol, FRAG_SLOTS), dtype=np.uint8)
    mass = np.concatenate([g.mass for g in graphs])
    mol = np.repeat(np.arange(nmol), natoms)                  # each atom's molecule
    shift = np.repeat(offset[:-1], nbonds)
    u = np.concatenate([g.begin for g in graphs]) + shift
    v = np.concatenate([g.end for g in graphs]) + shift
    n_edges = len(u)
    # neighbours (CSR, both directions) with the bond of each
    src = np.concatenate([u, v])
    order = np.argsort(src, kind="stable")
    dst = np.concatenate([v, u])[order]
    eid = np.tile(np.arange(n_edges), 2)[order]
    deg = np.bincount(src, minlength=n)
    start = np.cumsum(deg) - deg
    parent, pedge, roots, by_depth = _bfs_forest(mol, dst, eid, deg, start)
    # a random 62-bit label per non-tree edge (a table entry, scrambled by the edge's position),
    # XORed at both its atoms; summed up the tree, a tree edge holds the XOR of its cycles' labels
    is_tree = np.zeros(n_edges, dtype=bool)
    is_tree[pedge[pedge >= 0]] = True
    back = np.flatnonzero(~is_tree)
    lab = _edge_labels(back)
    label = np.zeros(n, dtype=np.int64)
    np.bitwise_xor.at(label, u[back], lab)
    np.bitwise_xor.at(label, v[back], lab)
    sub = mass.copy()                                          # subtree masses and sizes
    size = np.ones(n, dtype=np.int64)
    for x in reversed(by_depth[1:]):
        p = parent[x]
        np.add.at(sub, p, sub[x])
        np.add.at(size, p, size[x])
        np.bitwise_xor.at(label, p, label[x])
    # preorder positions: parts one after another, a subtree at [tin, tin + size)
    tin = np.zeros(n, dtype=np.int64)
    tin[roots] = np.cumsum(size[roots]) - size[roots]
    for x in by_depth[1:]:
        o = np.argsort(parent[x], kind="stable")
        xs, ps = x[o], parent[x][o]
        before = np.cumsum(size[xs]) - size[xs]                # sizes of the siblings before
        first = np.concatenate([[True], ps[1:] != ps[:-1]])
        tin[xs] = tin[ps] + 1 + before - np.maximum.accumulate(np.where(first, before, 0))
    rorder = np.argsort(tin[roots])
    part = roots[rorder][np.searchsorted(tin[roots][rorder], tin, side="right") - 1]   # atom -> root
    total = sub[part]
    child = np.flatnonzero(parent >= 0)                        # the tree edge above each
    bridges = child[label[child] == 0]
    ring_tree = child[label[child] != 0]
    hist = _Pieces(nmol)
    one = np.concatenate([sub[bridges], total[bridges] - sub[bridges]])
    hist.add(np.tile(mol[bridges], 2), one, 0)
    # a bridge with any ring bond of its part cut too: the bridge's two pieces
    ring_bonds = np.bincount(part[ring_tree], minlength=n) + np.bincount(part[u[back]], minlength=n)
    hist.add(np.tile(mol[bridges], 2), one, FRAG_BINS, np.tile(ring_bonds[part[bridges]], 2))
    # two bridges of one part (in preorder, A first): B below A, or beside it
    br = bridges[np.lexsort((tin[bridges], part[bridges]))]
    a, b = _group_pairs(part[br])
    a, b = br[a], br[b]
    below = tin[b] < tin[a] + size[a]
    hist.add(np.tile(mol[a], 3), np.concatenate([
        sub[b], np.where(below, sub[a] - sub[b], sub[a]), total[a] - sub[a] - np.where(below, 0, sub[b])]),
        FRAG_BINS)
    # a ring tree edge with the non-tree edge of the same label: its subtree comes off
    hit = ring_tree[_in_part(label[ring_tree], part[ring_tree], lab, part[u[back]])]
    hist.add(np.tile(mol[hit], 2), np.concatenate([sub[hit], total[hit] - sub[hit]]), FRAG_BINS)
    # two ring tree edges with the same label: nested (one branch of the cycle), the part between
    # them; else (the cycle's two branches under a breadth-first tree) both subtrees together
    rr = ring_tree[np.lexsort((tin[ring_tree], label[ring_tree], part[ring_tree]))]
    a, b = _group_pairs(label[rr], part[rr])
    a, b = rr[a], rr[b]
    piece = np.where(tin[b] < tin[a] + size[a], sub[a] - sub[b], sub[a] + sub[b])
    hist.add(np.tile(mol[a], 2), np.concatenate([piece, total[a] - piece]), FRAG_BINS)
    return hist.counts()


def _bfs_forest(mol: np.ndarray, dst: np.ndarray, eid: np.ndarray, deg: np.ndarray, start: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """A breadth-first spanning forest of the block, one tree per connected part (rooted at its
    first atom): ``(parent, parent_edge, roots, atoms by depth)`` (-1 at the roots)."""
    n = len(mol)
    parent = np.full(n, -1, dtype=np.int64)
    pedge = np.full(n, -1, dtype=np.int64)
    depth = np.full(n, -1, dtype=np.int64)
    roots, by_depth = [], []
    while True:
        unseen = np.flatnonzero(depth < 0)
        if len(unseen) == 0:
            break
        _, first = np.unique(mol[unseen], return_index=True)   # a molecule's next part
        front = unseen[first]
        roots.append(front)
        depth[front] = 0
        d = 0
        while len(front):
            if d == len(by_depth):
                by_depth.append([])
            by_depth[d].append(front)
            cnt = deg[front]
            pos = _ranges(start[front], cnt)
            w, e, f = dst[pos], eid[pos], np.repeat(front, cnt)
            new = depth[w] < 0
            front, idx = np.unique(w[new], return_index=True)
            parent[front] = f[new][idx]
            pedge[front] = e[new][idx]
            d += 1
            depth[front] = d
    return parent, pedge, np.concatenate(roots), [np.concatenate(x) for x in by_depth]


class _Pieces:
    """The pieces' masses of a block, counted per molecule into its two histograms."""

    def __init__(self, nmol: int) -> None:
        self.nmol = nmol
        self.index: list[np.ndarray] = []

    def add(self, mol: np.ndarray, masses: np.ndarray, slot: int, weight: np.ndarray | None = None) -> None:
        keep = masses < FRAG_BINS                              # a piece weighs at least 1
        index = mol[keep] * FRAG_SLOTS + slot + masses[keep]
        # a weight (a count of ring bonds) repeats the piece, at most 255 times (the counts
        # saturate there): one integer bincount for all
        self.index.append(index if weight is None else np.repeat(index, np.minimum(weight[keep], 255)))

    def counts(self) -> np.ndarray:
        h = np.bincount(np.concatenate(self.index), minlength=self.nmol * FRAG_SLOTS)
        return np.minimum(h, 255, out=h).astype(np.uint8).reshape(self.nmol, FRAG_SLOTS)


def _one_molecule(g: FragGraph) -> np.ndarray:
    """:func:`fragment_block`'s counts of one molecule, the same steps in plain Python (faster
    than numpy's per-call overhead for one small graph; checked equal on the sample library and
    MOSES molecules by the tests)."""
    mass = g.mass.tolist()
    n = len(mass)
    begin, end = g.begin.tolist(), g.end.tolist()
    nbr: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for e, (a, b) in enumerate(zip(begin, end)):
        nbr[a].append((b, e))
        nbr[b].append((a, e))
    hist = [0] * FRAG_SLOTS
    parent = [-1] * n
    seen = [False] * n
    for root in range(n):
        if seen[root]:
            continue
        # a breadth-first tree of this part; the labels of the edges not in it, XORed at both ends
        seen[root] = True
        order, tree_edge, label = [root], {}, {}
        for x in order:
            for y, e in nbr[x]:
                if not seen[y]:
                    seen[y] = True
                    parent[y] = x
                    tree_edge[y] = e
                    order.append(y)
        back = {e for x in order for _, e in nbr[x]} - set(tree_edge.values())
        back_labels = set()
        back_ids = sorted(back)
        for e, lab in zip(back_ids, _edge_labels(np.array(back_ids, dtype=np.int64)).tolist()):
            back_labels.add(lab)
            for x in (begin[e], end[e]):
                label[x] = label.get(x, 0) ^ lab
        sub = {x: mass[x] for x in order}
        size = dict.fromkeys(order, 1)
        children: dict[int, list[int]] = {x: [] for x in order}
        for x in order[1:]:
            children[parent[x]].append(x)
        for x in reversed(order[1:]):
            p = parent[x]
            sub[p] += sub[x]
            size[p] += size[x]
            label[p] = label.get(p, 0) ^ label.get(x, 0)
        tin, stack, clock = {}, [root], 0                      # preorder positions
        while stack:
            x = stack.pop()
            tin[x] = clock
            clock += 1
            stack.extend(reversed(children[x]))
        total = sub[root]
        below = order[1:]
        bridges = sorted((x for x in below if label.get(x, 0) == 0), key=tin.__getitem__)
        ring_tree = [x for x in below if label.get(x, 0) != 0]
        ring_bonds = min(len(ring_tree) + len(back), 255)

        def add(m: int, slot: int, times: int = 1) -> None:
            if m < FRAG_BINS:
                hist[slot + m] += times

        for x in bridges:
            for m in (sub[x], total - sub[x]):
                add(m, 0)
                add(m, FRAG_BINS, ring_bonds)
        if len(bridges) <= MAX_PAIRED:
            for i, a in enumerate(bridges):
                for b in bridges[i + 1:]:
                    inside = tin[b] < tin[a] + size[a]
                    add(sub[b], FRAG_BINS)
                    add(sub[a] - sub[b] if inside else sub[a], FRAG_BINS)
                    add(total - sub[a] - (0 if inside else sub[b]), FRAG_BINS)
        classes: dict[int, list[int]] = {}
        for x in ring_tree:
            if label[x] in back_labels:
                add(sub[x], FRAG_BINS)
                add(total - sub[x], FRAG_BINS)
            classes.setdefault(label[x], []).append(x)
        for members in classes.values():
            if len(members) > MAX_PAIRED:
                continue
            members.sort(key=tin.__getitem__)
            for i, a in enumerate(members):
                for b in members[i + 1:]:
                    piece = sub[a] - sub[b] if tin[b] < tin[a] + size[a] else sub[a] + sub[b]
                    add(piece, FRAG_BINS)
                    add(total - piece, FRAG_BINS)
    return np.minimum(np.array(hist, dtype=np.int64), 255).astype(np.uint8)
