"""XMem's memory: working memory, long-term memory with prototypes, usage counts, hidden state.

Runs in the runtime (torch), not in the engines. Elements are the /16 grid positions of
memory frames (HW = h*w per frame). Numerics follow the original (``MemoryManager``,
``KeyValueMemoryStore``, ``memory_util``) with these documented differences:

* The top-k softmax exponentiates the raw similarities without subtracting the maximum, as
  the original does. Only where all k exponentials underflow to 0 (every similarity below
  about -104), where the original returns 0/0 = NaN, the max-subtracted softmax (the same
  function evaluated stably) is used instead.
* ``top_k`` and ``num_prototypes`` are capped by the number of available elements (the
  original fails in ``topk`` when the memory is smaller, which only tiny frames reach).
* Bounded without long-term usage counts: when long-term memory must shrink and its usage
  is not counted (the original fails there), the oldest long-term elements are dropped.
  With long-term memory disabled, working memory keeps at most ``max_mid_term_frames``
  frames: the first memory frame and the newest ones (the original grows without bound).
* The readout sums the k selected values per query position (``embedding_bag``) instead of
  a dense N x HW affinity matmul: the same sum in another order, ~5x faster on CPU.

Several objects: objects first given on the same frame form an *object group*. Keys are shared
by all objects; a group has values only for the memory elements written since its first frame,
the last ``n`` elements of each store (``MemoryStore.values[g]``). Group 0 reads all memory;
group g > 0 runs its own top-k softmax over only the elements it has values for, and usage is
counted from group 0, as in the original. Past what the original supports (reached by neither
golden fixture): a consolidation gives every prototype a value in every group that has candidates
(a softmax over that group's candidates; the original keeps only the prototypes inside the
group's range, misaligning its values with the keys), and long-term eviction works with several
groups (the original raises NotImplementedError).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import XMemConfig

LIFE_START = 1e-7  # initial life count of an element (usage = use / life)


def similarity(
    mem_key: torch.Tensor, mem_shrinkage: torch.Tensor, query_key: torch.Tensor, query_selection: torch.Tensor
) -> torch.Tensor:
    """Anisotropic L2 similarity S [N, Q] = -s_i * sum_c e_cj (k_ci - q_cj)^2 / sqrt(C).

    mem_key [C,N], mem_shrinkage [N], query_key / query_selection [C,Q]. Evaluated through the
    expansion -e.k^2 + 2 k.(q e) - e.q^2 as the original does (same rounding behaviour).
    """
    mk = mem_key.t()
    a_sq = mk.pow(2) @ query_selection
    two_ab = 2 * (mk @ (query_key * query_selection))
    b_sq = (query_selection * query_key.pow(2)).sum(dim=0, keepdim=True)
    return (-a_sq + two_ab - b_sq) * mem_shrinkage[:, None] / math.sqrt(mem_key.shape[0])


def topk_softmax(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k softmax over memory (dim 0) per query: (weights [k,Q], indices [k,Q]).

    Raw ``exp`` without max subtraction (the original's numerics, subnormals included); query
    positions where every exponential underflows to 0 get the max-subtracted softmax instead of NaN.
    """
    values, indices = torch.topk(sim, k=min(k, sim.shape[0]), dim=0)
    exp = values.exp()
    total = exp.sum(dim=0, keepdim=True)
    degenerate = (total == 0) | ~torch.isfinite(total)
    weights = torch.where(degenerate, torch.softmax(values, dim=0), exp / total)
    return weights, indices


def weighted_rows(rows: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """out[j] = sum_i weights[i,j] * rows[indices[i,j]] for rows [N,D], weights/indices [k,Q] -> [Q,D]."""
    return F.embedding_bag(
        indices.t().contiguous(), rows, per_sample_weights=weights.t().contiguous(), mode="sum"
    )


class MemoryStore:
    """Keys [C,N], shrinkage [N], selection [C,N] (optional), usage [N], and values per object group.

    ``values[g]`` [n_g, O_g*CV] holds group g's values of the *last* n_g elements (one row per
    element, the group's objects side by side); group 0 covers every element.
    """

    def __init__(self):
        self.key: torch.Tensor | None = None
        self.shrinkage: torch.Tensor | None = None
        self.selection: torch.Tensor | None = None
        self.values: list[torch.Tensor] = []
        self.use_count: torch.Tensor | None = None
        self.life_count: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return 0 if self.key is None else self.key.shape[1]

    def value_size(self, group: int) -> int:
        """How many (trailing) elements group ``group`` has values for."""
        return self.values[group].shape[0] if group < len(self.values) else 0

    def add(
        self, key: torch.Tensor, shrinkage: torch.Tensor, values: list[torch.Tensor | None], selection: torch.Tensor | None
    ) -> None:
        """Append elements with fresh counters (use 0, life 1e-7); ``values[g]`` [n, O_g*CV] or None (group g has none)."""
        n = key.shape[1]
        use = torch.zeros(n, dtype=torch.float32, device=key.device)
        life = torch.full((n,), LIFE_START, dtype=torch.float32, device=key.device)
        for g, value in enumerate(values):
            if value is None:
                continue
            if g < len(self.values):
                self.values[g] = torch.cat([self.values[g], value])
            else:
                self.values.extend(value[:0] for _ in range(len(self.values), g))  # groups without values yet
                self.values.append(value)
        if self.key is None:
            self.key, self.shrinkage, self.selection = key, shrinkage, selection
            self.use_count, self.life_count = use, life
            return
        self.key = torch.cat([self.key, key], dim=1)
        self.shrinkage = torch.cat([self.shrinkage, shrinkage])
        if selection is not None:
            self.selection = torch.cat([self.selection, selection], dim=1)
        self.use_count = torch.cat([self.use_count, use])
        self.life_count = torch.cat([self.life_count, life])

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the elements at ``index`` (ascending long indices or a bool mask), counters and group values included."""
        kept = torch.zeros(self.size, dtype=torch.bool, device=self.key.device)
        kept[index] = True
        self.values = [v[kept[self.size - v.shape[0] :]] for v in self.values]
        self.key = self.key[:, kept]
        self.shrinkage = self.shrinkage[kept]
        if self.selection is not None:
            self.selection = self.selection[:, kept]
        self.use_count = self.use_count[kept]
        self.life_count = self.life_count[kept]

    def count_usage(self, usage: torch.Tensor) -> None:
        """One read: use += affinity mass each element received, life += 1."""
        self.use_count += usage
        self.life_count += 1

    def usage(self) -> torch.Tensor:
        return self.use_count / self.life_count


@dataclass
class Consolidation:
    """What one working -> long-term consolidation did (kept for inspection and tests)."""

    usage: torch.Tensor  # [n] usage of the candidates
    indices: torch.Tensor  # [P] prototype indices into the candidates, usage-descending
    key: torch.Tensor  # [C,P]
    shrinkage: torch.Tensor  # [P]
    value: torch.Tensor  # [P,O*CV] of object group 0


@dataclass
class Removal:
    """What one long-term eviction did: sizes before / target / after, and the usage it ranked by."""

    usage_before: torch.Tensor | None  # None when usage is not counted (oldest elements dropped)
    size_before: int
    target: int
    size_after: int


class XMemMemory:
    """Working + long-term memory and the hidden (sensory) state of one tracking session.

    Bounded: working memory holds at most ``max_mid_term_frames`` frames, long-term memory
    at most ``max_long_term_elements`` elements.
    """

    def __init__(self, config: XMemConfig):
        self.config = config
        self.working = MemoryStore()
        self.long_term = MemoryStore()
        self.hidden: torch.Tensor | None = None
        self.frame_elements = 0  # HW, set by the first insertion
        self.value_dim = 0  # CV, set by the first insertion
        self.last_consolidation: Consolidation | None = None
        self.last_removal: Removal | None = None

    @property
    def size(self) -> int:
        return self.working.size + self.long_term.size

    @property
    def groups(self) -> list[int]:
        """Number of objects in each object group, in object order."""
        return [v.shape[1] // self.value_dim for v in self.working.values]

    def read(self, query_key: torch.Tensor, query_selection: torch.Tensor) -> torch.Tensor:
        """Readout [O,CV,h,w] (all objects, group by group) for a query key / selection [1,C,h,w]; counts usage."""
        h, w = query_key.shape[-2:]
        qk, qe = query_key[0].flatten(1), query_selection[0].flatten(1)
        lt, wm = self.long_term, self.working
        if lt.size:
            key = torch.cat([lt.key, wm.key], dim=1)
            shrinkage = torch.cat([lt.shrinkage, wm.shrinkage])
        else:
            key, shrinkage = wm.key, wm.shrinkage
        sim = similarity(key, shrinkage, qk, qe)
        readouts = []
        for g in range(len(wm.values)):
            n_lt, n_wm = lt.value_size(g), wm.value_size(g)
            if n_lt + n_wm == key.shape[1]:
                group_sim = sim
                values = torch.cat([lt.values[g], wm.values[g]]) if n_lt else wm.values[g]
            else:  # a later group: its own softmax over only the elements it has values for
                rows = torch.cat([torch.arange(lt.size - n_lt, lt.size), torch.arange(key.shape[1] - n_wm, key.shape[1])])
                group_sim = sim[rows.to(sim.device)]
                values = torch.cat([lt.values[g], wm.values[g]]) if n_lt else wm.values[g]
            weights, indices = topk_softmax(group_sim, self.config.top_k)
            if g == 0 and self.config.enable_long_term:
                usage = torch.zeros(key.shape[1], dtype=torch.float32, device=key.device)
                usage.index_add_(0, indices.flatten(), weights.flatten())
                wm.count_usage(usage[lt.size :])
                if lt.size and self.config.enable_long_term_count_usage:
                    lt.count_usage(usage[: lt.size])
            readouts.append(weighted_rows(values, weights, indices))  # [HW, O_g*CV]
        return torch.cat([r.t().reshape(-1, self.value_dim, h, w) for r in readouts])

    def add(self, key: torch.Tensor, shrinkage: torch.Tensor, selection: torch.Tensor, value: torch.Tensor) -> None:
        """Insert one memory frame (key/selection [1,C,h,w], shrinkage [1,1,h,w], value [O,CV,h,w]), then bound the memory.

        ``value`` holds every object in object order; objects beyond those already in memory form a new group.
        """
        self.frame_elements = key.shape[-2] * key.shape[-1]
        self.value_dim = value.shape[1]
        rows = value.flatten(2).permute(2, 0, 1)  # [HW, O, CV]
        values, first = [], 0
        for count in [*self.groups, value.shape[0] - sum(self.groups)]:
            if count:
                values.append(rows[:, first : first + count].reshape(self.frame_elements, -1))
            first += count
        self.working.add(
            key[0].flatten(1),
            shrinkage.flatten(),
            values,
            selection[0].flatten(1) if self.config.enable_long_term else None,
        )
        cfg = self.config
        if not cfg.enable_long_term:
            if self.working.size > cfg.max_mid_term_frames * self.frame_elements:
                self._drop_oldest_working_frame()
            return
        if self.working.size < cfg.max_mid_term_frames * self.frame_elements:
            return
        target = cfg.max_long_term_elements - cfg.num_prototypes
        if self.long_term.size >= target:
            self._evict_long_term(target)
        self._consolidate()

    def _drop_oldest_working_frame(self) -> None:
        hw = self.frame_elements
        device = self.working.key.device
        self.working.keep(torch.cat([torch.arange(hw, device=device), torch.arange(2 * hw, self.working.size, device=device)]))

    def _evict_long_term(self, target: int) -> None:
        """Shrink long-term memory to ``target``: drop the least-used (ties at the cut all go), or the oldest."""
        lt = self.long_term
        before = lt.size
        n_drop = before - target
        if n_drop <= 0:
            return
        if self.config.enable_long_term_count_usage:
            usage = lt.usage()
            threshold = torch.topk(usage, k=n_drop, largest=False, sorted=True).values[-1]
            lt.keep(usage > threshold)
        else:
            usage = None
            lt.keep(torch.arange(n_drop, before, device=lt.key.device))
        self.last_removal = Removal(usage, before, target, lt.size)

    def _consolidate(self) -> None:
        """Turn the mid-term working frames into prototypes in long-term memory.

        Candidates: every working element except the first frame and the newest
        ``min_mid_term_frames - 1`` frames. Prototypes: the most used candidates; their values
        and shrinkage are a full softmax readout over the candidates ("potentiation"), per
        object group over the candidates that group has values for.
        """
        wm, hw = self.working, self.frame_elements
        start, end = hw, wm.size - (self.config.min_mid_term_frames - 1) * hw
        cand_key, cand_shrinkage, cand_selection = wm.key[:, start:end], wm.shrinkage[start:end], wm.selection[:, start:end]
        usage = wm.usage()[start:end]
        k = min(self.config.num_prototypes, end - start)
        indices = torch.topk(usage, k=k, sorted=True).indices
        proto_key = cand_key[:, indices]
        sim = similarity(cand_key, cand_shrinkage, proto_key, cand_selection[:, indices])
        proto_values: list[torch.Tensor | None] = []
        proto_shrinkage = None
        for g, values in enumerate(wm.values):
            n = min(end - start, max(0, end - (wm.size - values.shape[0])))  # candidates this group has values for
            if n == 0:
                proto_values.append(None)
                continue
            group_sim = sim[end - start - n :]
            exp = torch.exp(group_sim - group_sim.amax(dim=0, keepdim=True))
            affinity = exp / exp.sum(dim=0, keepdim=True)
            first = values.shape[0] - (wm.size - start)  # row of candidate 0 in this group's values
            proto_values.append(affinity.t() @ values[first + (end - start - n) : first + (end - start)])
            if g == 0:
                proto_shrinkage = (cand_shrinkage[None] @ affinity)[0]
        device = wm.key.device
        wm.keep(torch.cat([torch.arange(start, device=device), torch.arange(end, wm.size, device=device)]))
        self.long_term.add(proto_key, proto_shrinkage, proto_values, None)
        self.last_consolidation = Consolidation(usage, indices, proto_key, proto_shrinkage, proto_values[0])
