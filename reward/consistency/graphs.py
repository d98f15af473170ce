"""Graph algorithms behind cleaning: strongly connected components, a cycle as evidence, minimum feedback arcs.

Edges are `(winner, loser)` pairs over candidates 0..n-1 (a tie is two edges, one each way). A prompt's graph is
small (tens of candidates), a dataset has 100k of them: `strong_labels` finds the components of all prompts at
once with numpy; one prompt's algorithms are plain Python, the minimum-feedback DP vectorised with numpy.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

import numpy as np

# Exact minimum feedback arc sets up to this many nodes in one component: the DP costs n 2^n (about 1 ms at
# 12 nodes, 9 ms at 15 on one CPU core); beyond, Eades-Lin-Smyth. Real preference data rarely has components
# this large; synthetic dense graphs do (see bench/bench_consistency.py).
EXACT_MAX_NODES = 12
MAX_EXACT_LIMIT = 20  # 2^20 x 20 floats: the most the DP may be asked to hold


def components(n: int, edges) -> list[int]:
    """Strongly connected component id of each node (iterative Tarjan; ids in order of completion).

    ```python
    >>> components(4, [(0, 1), (1, 2), (2, 0), (2, 3)])
    [1, 1, 1, 0]

    ```
    """
    adj = [[] for _ in range(n)]
    for u, v in edges:
        adj[u].append(v)
    index, low, comp = [-1] * n, [0] * n, [-1] * n
    stack, on_stack, counter, ncomp = [], [False] * n, 0, 0
    for root in range(n):
        if index[root] != -1:
            continue
        work = [(root, 0)]
        while work:
            u, i = work.pop()
            if i == 0:
                index[u] = low[u] = counter
                counter += 1
                stack.append(u)
                on_stack[u] = True
            if i < len(adj[u]):
                work.append((u, i + 1))
                v = adj[u][i]
                if index[v] == -1:
                    work.append((v, 0))
                elif on_stack[v]:
                    low[u] = min(low[u], index[v])
                continue
            if low[u] == index[u]:
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp[w] = ncomp
                    if w == u:
                        break
                ncomp += 1
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[u])
    return comp


CLOSURE_MAX_NODES = 48  # strong_labels: transitive closure (n^3 / prompt) up to this many candidates, Tarjan beyond
_CLOSURE_CHUNK = 1 << 24  # booleans of stacked n x n matrices held at a time
_BFS_CHUNK = 1 << 22  # BFS: entries of stacked n x n matrices at a time (int64 temporaries: 32 MB each)


def strong_labels(sizes: np.ndarray, tails: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """Strongly connected components of many prompts' graphs at once: each node's label is the smallest node of its
    component.

    Nodes are numbered across prompts (prompt p's are `start[p]..start[p] + sizes[p] - 1`, in order); arcs
    `tails[i] -> heads[i]` join nodes of one prompt. Prompts of one size are stacked as (G, n, n) reachability
    matrices and closed Floyd-Warshall style (n vectorised steps); prompts above `CLOSURE_MAX_NODES` candidates go
    through `components`.

    ```python
    >>> strong_labels(np.array([3, 2]), np.array([0, 1, 2, 3, 4]), np.array([1, 0, 1, 4, 3])).tolist()
    [0, 0, 2, 3, 3]

    ```
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    label = np.arange(start[-1], dtype=np.int64)
    if not len(tails):
        return label
    prompt = np.searchsorted(start, tails, side="right") - 1
    arcs_of = np.argsort(prompt, kind="stable")
    bounds = np.searchsorted(prompt[arcs_of], np.arange(len(sizes) + 1))
    has_arc = np.diff(bounds) > 0
    for n in np.unique(sizes[has_arc & (sizes > 1)]).tolist():
        group = np.flatnonzero(has_arc & (sizes == n))
        if n > CLOSURE_MAX_NODES:
            for p in group.tolist():
                arcs = arcs_of[bounds[p] : bounds[p + 1]]
                comp = np.array(
                    components(n, zip((tails[arcs] - start[p]).tolist(), (heads[arcs] - start[p]).tolist()))
                )
                smallest = np.full(n, n, dtype=np.int64)
                np.minimum.at(smallest, comp, np.arange(n))
                label[start[p] : start[p] + n] = start[p] + smallest[comp]
            continue
        step = max(1, _CLOSURE_CHUNK // (n * n))
        for lo in range(0, len(group), step):
            chunk = group[lo : lo + step]
            local = np.full(len(sizes), -1, dtype=np.int64)
            local[chunk] = np.arange(len(chunk))
            arcs = arcs_of[local[prompt[arcs_of]] >= 0]
            g = local[prompt[arcs]]
            reach = np.zeros((len(chunk), n, n), dtype=bool)
            reach[g, tails[arcs] - start[prompt[arcs]], heads[arcs] - start[prompt[arcs]]] = True
            reach |= np.eye(n, dtype=bool)
            for k in range(n):  # paths through nodes 0..k
                reach |= reach[:, :, k, None] & reach[:, None, k, :]
            mutual = reach & reach.transpose(0, 2, 1)
            label[start[chunk][:, None] + np.arange(n)] = start[chunk][:, None] + mutual.argmax(axis=2)
    return label


def bfs_paths(sizes: np.ndarray, tails: np.ndarray, heads: np.ndarray, starts, goals) -> list[list[int]]:
    """The shortest path `start -> goal` that `bfs_tree` finds (neighbours in sorted order), for many queries on
    many prompts' graphs at once; each path as the indices of its arcs, in order (see `bfs_path_arrays`).

    Nodes and arcs as in `strong_labels`, at most one arc per ordered pair of nodes; every goal must be reachable.
    BFS from each distinct start runs level by level over stacked (B, n, n) adjacency matrices: a new node's
    predecessor is the earliest-queued node of the level before with an arc to it, and the new level is queued in
    order of (predecessor's place, node), as a FIFO queue with sorted neighbours would have it.

    ```python
    >>> bfs_paths(np.array([4]), np.array([0, 0, 1, 2]), np.array([1, 2, 3, 3]), [0], [3])  # 0 -> 1 -> 3
    [[0, 2]]

    ```
    """
    path, length = bfs_path_arrays(sizes, tails, heads, starts, goals)
    return [row[:k] for row, k in zip(path.tolist(), length.tolist())]


def bfs_path_arrays(sizes: np.ndarray, tails: np.ndarray, heads: np.ndarray, starts, goals):
    """`bfs_paths` as arrays: `(path, length)`, query q's arcs `path[q, :length[q]]` (the rest -1)."""
    out = bfs_arcs_back(sizes, tails, heads, starts, goals)
    length = (out >= 0).sum(axis=1)
    back = length[:, None] - 1 - np.arange(out.shape[1])  # start -> goal: the arcs found from the goal, reversed
    ordered = np.take_along_axis(out, np.maximum(back, 0), axis=1)
    return np.where(back >= 0, ordered, -1), length


def bfs_arcs_back(sizes: np.ndarray, tails: np.ndarray, heads: np.ndarray, starts, goals) -> np.ndarray:
    """The arcs of `bfs_paths`, each query's from its goal back to its start: query q's in row q, then -1 (what
    `bfs_path_arrays` reverses; a caller that wants each path's arcs as a set can skip that)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    starts, goals = np.asarray(starts, dtype=np.int64), np.asarray(goals, dtype=np.int64)
    width = int(sizes.max(initial=1))
    out = np.full((len(starts), width), -1, dtype=np.int64)
    prompt_of = np.searchsorted(start, starts, side="right") - 1
    arc_prompt = np.searchsorted(start, tails, side="right") - 1
    for n in np.unique(sizes[prompt_of]).tolist():
        queries = np.flatnonzero(sizes[prompt_of] == n)
        if n > CLOSURE_MAX_NODES:
            _bfs_paths_python(start, tails, heads, arc_prompt, starts, goals, prompt_of, queries, out)
            continue
        prompts, pos = np.unique(prompt_of[queries], return_inverse=True)  # this size's prompts with a query
        local = np.full(len(sizes), -1, dtype=np.int64)
        local[prompts] = np.arange(len(prompts))
        arcs = np.flatnonzero(local[arc_prompt] >= 0)
        arc_of = np.full((len(prompts), n, n), -1, dtype=np.int64)
        base = start[arc_prompt[arcs]]
        arc_of[local[arc_prompt[arcs]], tails[arcs] - base, heads[arcs] - base] = arcs
        adj = arc_of >= 0  # once per size (8x less to gather per chunk than arc_of)
        key, run_of = np.unique(pos * n + starts[queries] - start[prompt_of[queries]], return_inverse=True)
        runs = np.stack([key // n, key % n])  # the distinct (prompt, start) pairs, sorted (axis=1 is 10x slower)
        step = max(1, _BFS_CHUNK // (n * n))
        prev = np.empty((runs.shape[1], n), dtype=np.int64)
        for lo in range(0, runs.shape[1], step):
            p, s = runs[0, lo : lo + step], runs[1, lo : lo + step]
            prev[lo : lo + step] = _bfs_levels(adj[p], s)
        # Walk back from each goal to its start, an arc per step.
        run_of = run_of.ravel()
        q_prompt, goal = pos, goals[queries] - start[prompt_of[queries]]
        first = starts[queries] - start[prompt_of[queries]]
        path = np.full((len(queries), n), -1, dtype=np.int64)
        v = goal.copy()
        for k in range(n):
            on = v != first
            if not on.any():
                break
            u = prev[run_of[on], v[on]]
            if (u < 0).any():
                raise ValueError("bfs_paths: a goal is not reachable from its start")
            path[on, k] = arc_of[q_prompt[on], u, v[on]]
            v[on] = u
        out[queries, :n] = path
    return out


def _bfs_levels(adj: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Predecessors (B, n) of BFS from `source[b]` over adjacency `adj` (B, n, n); -1 where not reached."""
    b, n = adj.shape[:2]
    live = np.arange(b)  # the runs still growing, whose state the arrays below hold
    # The first level without (B, n, n) work: the source's out-neighbours, queued in node order.
    frontier = adj[live, source]
    frontier[live, source] = False
    prev = np.where(frontier, source[:, None], -1)
    seen = frontier.copy()
    seen[live, source] = True
    # Queue places and order keys fit int16 (n <= CLOSURE_MAX_NODES): the (B, n, n) temporaries below are 4x
    # smaller than int64 ones, and argmin over them 2-3x faster (this loop is most of drop-cycles' evidence).
    place = (np.cumsum(frontier, axis=1, dtype=np.int16) - 1).astype(np.int16)  # queue place within the level
    big = np.int16(n * n + n)
    for _ in range(n - 1):
        cand = adj & frontier[:, :, None] & ~seen[:, None, :]
        found = cand.any(axis=1)
        grows = found.any(axis=1)
        if not grows.all():  # finished runs leave the state: on dense graphs half are done after 2 levels
            keep = np.flatnonzero(grows)
            if not len(keep):
                break
            adj, cand, found, seen, place = adj[keep], cand[keep], found[keep], seen[keep], place[keep]
            live = live[keep]
        parent = np.where(cand, place[:, :, None], big).argmin(axis=1)
        run, node = np.nonzero(found)
        prev[live[run], node] = parent[run, node]
        seen |= found
        key = np.take_along_axis(place, parent, 1) * np.int16(n) + np.arange(n, dtype=np.int16)
        order = np.where(found, key, big).argsort(axis=1)
        place[np.arange(len(live))[:, None], order] = np.arange(n, dtype=np.int16)
        frontier = found
    return prev


def _bfs_paths_python(start, tails, heads, arc_prompt, starts, goals, prompt_of, queries, out) -> None:
    """`bfs_path_arrays` for prompts too large to stack: `bfs_tree` on each (arcs into `out` from the goal back)."""
    for p in np.unique(prompt_of[queries]).tolist():
        arcs = np.flatnonzero(arc_prompt == p).tolist()
        index = {(int(tails[i]), int(heads[i])): i for i in arcs}
        adj = {}
        for u, v in sorted(index):
            adj.setdefault(u, []).append(v)
        trees = {}
        for q in queries[prompt_of[queries] == p].tolist():
            first, v = int(starts[q]), int(goals[q])
            prev = trees.get(first) or trees.setdefault(first, bfs_tree(adj, first))
            if v not in prev:
                raise ValueError("bfs_paths: a goal is not reachable from its start")
            k = 0
            while v != first:
                out[q, k] = index[(prev[v], v)]
                v, k = prev[v], k + 1


def bfs_tree(adj, start: int) -> dict:
    """Breadth-first tree from `start`: node -> its predecessor on a shortest path (`start` -> None).

    Neighbours are visited in the order `adj[u]` lists them, so sorted lists give deterministic paths.
    """
    prev, queue = {start: None}, deque([start])
    while queue:
        u = queue.popleft()
        for v in adj.get(u, ()):
            if v not in prev:
                prev[v] = u
                queue.append(v)
    return prev


@lru_cache(maxsize=MAX_EXACT_LIMIT + 1)
def _layers(n: int):
    """What the DP gathers, per popcount layer c of subset masks T (it depends on n only, so it is cached): T, the
    members v of each T in ascending order (len(T), c), the masks T - v and their flat index (T - v) * n + v."""
    masks = np.arange(1 << n)
    bits = (masks[:, None] >> np.arange(n)) & 1
    popcount = bits.sum(1)
    layers = []
    for c in range(1, n + 1):
        T = masks[popcount == c]
        v = np.nonzero(bits[T])[1].reshape(len(T), c)  # row-major: each T's members ascending
        prev = T[:, None] ^ (1 << v)
        layers.append((T, prev, prev * n + v, v))
    return layers


def _exact_order(nodes: list[int], weight: dict) -> list[int]:
    """An order of `nodes` (best first) minimising the weight of edges that point backwards (loser before winner).

    DP over subsets S of nodes already placed: f(S + v) = min f(S) + sum of w(v -> u) for u in S (v beats a node
    placed above it). Vectorised over each popcount layer; ties broken towards the lowest node, so deterministic.
    """
    n = len(nodes)
    W = np.zeros((n, n))
    pos = {u: i for i, u in enumerate(nodes)}
    for (u, v), w in weight.items():
        W[pos[u], pos[v]] = w
    layers = _layers(n)
    # cost[S * n + v] = sum_{u in S} W[v, u], added in node order as `bits @ W.T` did (numpy's int-by-float matmul
    # was most of a min-feedback clean: docs/benchmarks.md). S = 2^k + R (R < 2^k) costs R's sum plus W[:, k].
    cost = np.zeros((1 << n, n))
    for k in range(n):
        cost[1 << k : 2 << k] = cost[: 1 << k] + W[:, k]
    cost = cost.ravel()
    f = np.zeros(1 << n)
    last = np.zeros(1 << n, dtype=np.int64)  # the node placed last in the best order of S
    for T, prev, flat, v in layers:  # pull: f(T) = min over v in T of f(T - v) + cost(T - v, v)
        vals = f[prev] + cost[flat]  # only T's own members: half the work of masking all n
        at = (np.arange(len(T)), vals.argmin(1))  # the lowest v on ties (members ascending): deterministic
        last[T], f[T] = v[at], vals[at]
    order, S = [], (1 << n) - 1
    while S:
        order.append(int(last[S]))
        S ^= 1 << order[-1]
    return [nodes[i] for i in reversed(order)]


def _eades_order(nodes: list[int], weight: dict) -> list[int]:
    """Eades-Lin-Smyth (1993) greedy order, weighted: sinks to the back, sources to the front, else the node with
    the largest (out-weight - in-weight) to the front. At most |E|/2 - |V|/6 backward edges (unweighted)."""
    out = {u: {} for u in nodes}
    inc = {u: {} for u in nodes}
    for (u, v), w in weight.items():
        out[u][v] = w
        inc[v][u] = w
    left, front, back = set(nodes), [], []

    def remove(u):
        left.discard(u)
        for v in out.pop(u):
            del inc[v][u]
        for v in inc.pop(u):
            del out[v][u]

    while left:
        moved = True
        while moved:
            moved = False
            for u in sorted(left):
                if not out[u]:
                    back.append(u)
                    remove(u)
                    moved = True
                elif not inc[u]:
                    front.append(u)
                    remove(u)
                    moved = True
        if left:
            u = max(sorted(left), key=lambda x: sum(out[x].values()) - sum(inc[x].values()))
            front.append(u)
            remove(u)
    return front + back[::-1]


def min_feedback(n: int, weight: dict, exact_max_nodes: int = EXACT_MAX_NODES, comp=None) -> tuple[set, dict]:
    """Edges to drop so that the strict graph (`weight[(winner, loser)] = w`) has no cycle, of least total weight.

    Works component by component (an edge between components is never on a cycle): exact DP up to
    `exact_max_nodes` nodes (at most `MAX_EXACT_LIMIT`), Eades-Lin-Smyth beyond. `comp`: each node's strongly
    connected component (any ids) where known already, else found with `components`.

    Returns:
        (the dropped `(winner, loser)` edges, `{"exact": components, "eades-lin-smyth": components}` solved each way).

    ```python
    >>> dropped, methods = min_feedback(3, {(0, 1): 1.0, (1, 2): 1.0, (2, 0): 0.2})
    >>> sorted(dropped), methods
    ([(2, 0)], {'exact': 1, 'eades-lin-smyth': 0})

    ```
    """
    if not 0 <= exact_max_nodes <= MAX_EXACT_LIMIT:
        raise ValueError(f"exact_max_nodes must be in 0..{MAX_EXACT_LIMIT}, got {exact_max_nodes}")
    comp = components(n, weight) if comp is None else comp
    members = {}
    for u, c in enumerate(comp):
        members.setdefault(c, []).append(u)
    dropped, methods = set(), {"exact": 0, "eades-lin-smyth": 0}
    for nodes in members.values():
        if len(nodes) < 2:
            continue
        inside = {(u, v): w for (u, v), w in weight.items() if comp[u] == comp[v] == comp[nodes[0]]}
        exact = len(nodes) <= exact_max_nodes
        methods["exact" if exact else "eades-lin-smyth"] += 1
        order = (_exact_order if exact else _eades_order)(nodes, inside)
        rank = {u: i for i, u in enumerate(order)}
        dropped |= {(u, v) for (u, v) in inside if rank[u] > rank[v]}
    return dropped, methods
