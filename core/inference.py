"""ML fields for the dynamics: descriptor, network and H = -dE/dS in one pass (PHYSICS.md,
"Behler-Parrinello model", paper Eq. 7).

``features`` (core.descriptor) and ``EnergyModel`` are differentiable to any order,
which training needs (losses on fields). LLG steps need only the first derivative,
and at N = 500 one evaluation is a few milliseconds of many small operations,
so ``FusedFields`` computes the same energy and fields with fewer, larger ones
and a backward pass written out by hand, through the network too (with the
kernels autograd would call, ``activation_backward``, but without its
bookkeeping: 2.55 -> 2.40 ms for the fast model at B = 1, N = 500, in A/B
rounds):

* Features stay in the geometry's internal atom order, with the triplet
  columns in the order the triplet map produces them, (lambda, d, d'), G3m
  and G3chi interleaved; the network's first layer is permuted to match and
  absorbs the standardisation (x - mean) / scale, and takes G2m and the
  triplet columns as two blocks. Neither changes a value beyond float
  rounding.
* Up to ROW_LAYOUT_MAX_BATCH replicas, spins are laid out (atom, replica,
  component). The triplet map's right-hand sides F2(R_ab; d') [S_a . S_b,
  s S_a x S_b] for both sign slots s = +1, -1 and every d' are one matrix
  product (the Levi-Civita symbol times the identity in d') of the products
  S_a,i S_b,j F2(R_ab; d'), formed component-major so that they run along
  the pairs, instead of a dozen elementwise operations; G3chi_i = S_i . V_i
  is three multiply-adds written in place into the features (1-2 % of an
  evaluation faster than a batched product of the map outputs (columns, 3)
  with S_i, which the backward keeps for dE/dS_i); the backward takes the
  transposed products.
* More replicas are laid out (atom or pair, component, replica), as
  ``features`` does, with its pair terms (``pair_terms``): elementwise work
  then runs along the replicas, which the row layout's small products do not.

Measured at N = 500 on the project's 2-core CPU, ms per evaluation, best of 3
rounds in one process (row layout / replicas innermost / the autograd path;
before the component-major pair terms, which then took the fast model at B = 1
from 2.71 to 2.52 ms and the default from 5.77 to 5.45 in A/B rounds):
fast model B = 1 3.85 / 4.04 / 4.83, B = 2 7.1 / 7.4 / 9.2, B = 4 10.3 / 9.0
/ 11.6, B = 8 18.7 / 13.0 / 17.0, B = 20 44 / 29 / 31; default model B = 1
6.0 / 5.7 / 6.2, B = 4 20.9 / 16.6 / 19.3, B = 20 102 / 76 / 81 (an hour when
this machine was slower than in the README's runs). The result equals ``-grad
E`` of the autograd path to float rounding (tests/core/test_inference.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from core.descriptor import (
    SIGN_SLOTS,
    DescriptorGeometry,
    DescriptorSpec,
    bonds,
    pair_terms,
    pair_terms_backward,
)
from core.errors import StateError
from core.memory import require_memory
from core.sparse import product

#: [S_a . S_b, S_a x S_b] from the outer product S_a S_b^T (flattened, 9): row 3 i + j, column
#: 0 the bond delta_ij, columns 1..3 the Levi-Civita symbol eps_cij.
_BOND_CROSS = torch.zeros(9, 4, dtype=torch.float64)
for _c in range(3):
    _BOND_CROSS[4 * _c, 0] = 1.0
    _i, _j = (_c + 1) % 3, (_c + 2) % 3
    _BOND_CROSS[3 * _i + _j, 1 + _c], _BOND_CROSS[3 * _j + _i, 1 + _c] = 1.0, -1.0
#: Both sign slots: [S_a . S_b, +S_a x S_b] and [S_a . S_b, -S_a x S_b], (9, 2, 4).
SIGNED_BOND_CROSS = torch.stack([_BOND_CROSS, _BOND_CROSS * torch.tensor([1.0, -1, -1, -1])], 1)


#: Replica batches up to this size are laid out with replicas outside the components (one
#: row per pair and replica: small matrix products), larger ones with replicas innermost.
ROW_LAYOUT_MAX_BATCH = 2


def internal_feature_order(spec: DescriptorSpec) -> torch.Tensor:
    """For each internal feature column, its column in the public feature order.

    Internal: [G2m (d) | triplet columns (lambda, d, d', family)], the families
    G3m, G3chi interleaved; public (``DescriptorSpec.feature_labels``): each
    family in its own block, ordered (lambda, d', d).
    """
    n_lam, n_d, n_dp = len(spec.lambdas), spec.n_triplet_radii, len(spec.d_prime)
    n_fam, size = spec.n_triplet_families, n_lam * n_dp * n_d
    public = torch.arange(n_fam * size).view(n_fam, n_lam, n_dp, n_d)  # public order
    triplets = public.permute(1, 3, 2, 0).reshape(-1)  # (lambda, d, d', family)
    return torch.cat([torch.arange(spec.n_radii), spec.n_radii + triplets])


class FusedFields:
    """H = -dE/dS and E of a Behler-Parrinello model on one (possibly concatenated) geometry.

    Reads the model's weights on every call (its first layer is refolded only
    when a weight or the standardisation has changed since), so it follows a
    model that is trained or loaded in place.
    """

    def __init__(self, model: nn.Module, geometry: DescriptorGeometry) -> None:
        self.model, self.geometry = model, geometry
        spec = geometry.spec
        self.n_radii, self.n_dp = spec.n_radii, len(spec.d_prime)
        self.triplets = geometry.triplet is not None
        self.g3m, self.chi = spec.include_g3m and self.triplets, spec.include_chi and self.triplets
        self.n_families = int(self.g3m) + int(self.chi)
        self.n_columns = len(spec.lambdas) * spec.n_triplet_radii * self.n_dp  # per family
        self.slots, self.comps = (SIGN_SLOTS, 4) if self.chi else (1, 1)
        # the pair ends' atoms (caller order): the 0/1 map has one entry per row
        self.end_atoms = geometry.ends[0].col_indices()
        self.swapped_ends = self.end_atoms.view(-1, 2).flip(1).reshape(-1)  # (b, a) per pair
        # F2(R_ab; d') S_a S_b^T, rows (i, j, d'), to the right-hand sides, columns (slot, d', c)
        eye = torch.eye(self.n_dp, dtype=torch.float64)
        signed = SIGNED_BOND_CROSS.view(9, 1, SIGN_SLOTS, 1, 4) * eye.view(1, self.n_dp, 1, -1, 1)
        self.rhs = signed.reshape(9 * self.n_dp, -1).to(geometry.device, geometry.dtype)
        self.order = internal_feature_order(spec).to(geometry.device)
        self.jk_t = geometry.jk.t().contiguous().unsqueeze(-1)  # F2(R_ab; d'), (d', P3, 1)
        self._rest = model.net[1:]  # the layers after the first, shared with the model
        self._first: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._folded_from: tuple | None = None
        self._fits_batch = 0  # the largest batch whose working memory was checked

    def _first_layer(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network's first layer on raw internal-order features, W' = W / scale and
        b' = b - W' mean (computed in float64), as the bias and the transposed weights of
        the G2m and the triplet columns."""
        model = self.model
        layer = model.net[0]
        sources = (layer.weight, layer.bias, model.feature_mean, model.feature_scale)
        key = tuple((id(t), t._version) for t in sources if t is not None)
        if self._first is None or key != self._folded_from:
            idx = self.order.to(layer.weight.device)
            weight = layer.weight.detach().double()[:, idx] / model.feature_scale[idx]
            bias = -(weight @ model.feature_mean[idx])
            if layer.bias is not None:
                bias = bias + layer.bias.detach().double()
            weight_t = weight.t().to(layer.weight.dtype)
            n_d = self.n_radii
            self._first = (bias.to(layer.weight.dtype), weight_t[:n_d], weight_t[n_d:])
            self._folded_from = key
        return self._first

    def working_bytes(self, batch: int) -> float:
        """Peak memory of one evaluation of `batch` replicas beyond the geometry (bytes),
        estimated from the pass's largest tensors per replica: the pair ends and their
        gradients, the pair terms and theirs, the triplet map's outputs and theirs, the
        features, and the network's activations and gradients. Measured peaks (one SIB
        step, the process's peak resident size beyond the set-up, float32, this project's
        CPU) were 0.55-0.83 of it for B >= 2: the fast, default, pairwise and paper-arch
        models, N = 500-8000, B = 2-200 (8.6 kB per atom and replica for the fast model at
        N = 500, B = 200)."""
        geometry = self.geometry
        n, ends = geometry.n_atoms, geometry.ends[0].shape[0]
        n_t = 0
        if self.triplets:
            n_t = ends // 2 if geometry.triplet_pairs is None else len(geometry.triplet_pairs)
        hidden = sum(m.out_features for m in self.model.net if isinstance(m, nn.Linear))
        n_features = self.n_radii + self.n_columns * self.n_families
        floats = (
            3 * 3 * ends
            + 4 * n_t * self.slots * self.n_dp * self.comps
            + 2 * n * self.n_columns * self.comps
            + 2 * n * n_features
            + 3 * n * hidden
        )
        itemsize = torch.finfo(self.geometry.dtype).bits // 8
        return floats * batch * itemsize

    def __call__(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """H = -dE/dS (B, N, 3) and E (B,) float64 for spins (B, N, 3), in the geometry's dtype."""
        geometry = self.geometry
        n = geometry.n_atoms
        if spins.ndim != 3 or spins.shape[1:] != (n, 3):
            raise StateError(f"spins must have shape (B, {n}, 3), got {tuple(spins.shape)}")
        if len(spins) > self._fits_batch:  # checked once per larger batch
            require_memory(
                self.working_bytes(len(spins)), geometry.device,
                f"ML fields of {len(spins)} replicas at N = {n}",
                "use fewer replicas per call, a smaller N, or a machine with more memory",
            )  # fmt: skip
            self._fits_batch = len(spins)
        s = spins.detach().to(geometry.dtype)
        with torch.no_grad():
            return self._fields(s) if len(s) <= ROW_LAYOUT_MAX_BATCH else self._fields_batched(s)

    def _fields(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        geometry, n_d, n_dp = self.geometry, self.n_radii, self.n_dp
        batch, n = s.shape[:2]
        rows = n * batch  # (atom, replica)
        # both ends of every pair, (P, 2, B, 3), from the caller's atom order
        flat = s.transpose(0, 1).reshape(n, batch * 3)
        ends = flat.index_select(0, self.end_atoms).view(-1, 2, batch, 3)
        sa, sb = ends.unbind(1)
        bond = (sa * sb).sum(-1)  # S_a . S_b, (P, B)
        g2 = product(geometry.g2[0], bond)  # G2m, rows (atom, d)
        g2 = g2.view(n, n_d, batch).transpose(1, 2).reshape(rows, n_d)
        t3 = None
        if self.triplets:
            pairs = geometry.triplet_pairs
            t_ends = ends if pairs is None else ends.index_select(0, pairs)
            n_t, jk = len(t_ends), geometry.jk
            # right-hand sides F2(R_ab; d') [S_a . S_b, s S_a x S_b]: map columns (pair, slot),
            # right-hand columns (replica, d', c)
            if self.chi:
                # component-major (end, component, pair, replica): the products run along
                # the pairs, and one matrix product with the Levi-Civita symbol makes them
                # [S_a . S_b, s S_a x S_b] F2(R_ab; d')
                ta, tb = t_ends.permute(1, 3, 0, 2).contiguous()  # (3, P3, B) each
                jk_t = self.jk_t  # (d', P3, 1)
                tb_jk = tb.unsqueeze(1) * jk_t  # (3, d', P3, B)
                outer = ta.view(3, 1, 1, n_t, batch) * tb_jk  # rows (i, j, d')
                x = self.rhs.T @ outer.view(9 * n_dp, -1)  # rows (slot, d', c)
                x = x.view(self.slots, n_dp, self.comps, n_t, batch).permute(3, 0, 4, 1, 2)
            else:
                t_bond = bond if pairs is None else bond.index_select(0, pairs)
                x = t_bond.unsqueeze(-1) * jk.unsqueeze(1)
            x = x.reshape(n_t * self.slots, -1)
            o = product(geometry.triplet[0], x)  # [G3m, V], rows (atom, lambda, d)
            o = o.view(n, -1, batch, n_dp, self.comps).transpose(1, 2)
            o = o.reshape(rows, self.n_columns, self.comps)  # columns (lambda, d, d')
            if self.chi:  # [G3m, G3chi] = o [[1, 0], [0, S_i]] (only the last without G3m)
                s_i = s.index_select(1, geometry.order).transpose(0, 1).reshape(rows, 3)
                t3 = o.new_empty(rows, self.n_columns, self.n_families)
                if self.g3m:
                    t3[..., 0] = o[..., 0]
                chi = t3[..., -1]  # G3chi_i = S_i . V_i, written in place
                torch.mul(o[..., 1], s_i[:, 0:1], out=chi)
                chi.addcmul_(o[..., 2], s_i[:, 1:2]).addcmul_(o[..., 3], s_i[:, 2:3])
            else:
                t3 = o
            t3 = t3.view(rows, -1)

        g_g2, g_t3, energy = self._network(g2, t3, n)

        # backward: dE/dS through G2m, the triplet maps and the pair ends
        g_g2 = g_g2.view(n, batch, n_d).transpose(1, 2).reshape(n * n_d, batch)
        g_bond = product(geometry.g2[1], g_g2).unsqueeze(-1)  # (P, B, 1)
        # d(S_a . S_b) = S_b . dS_a + S_a . dS_b: the ends swapped, scaled
        g_ends = flat.index_select(0, self.swapped_ends).view_as(ends) * g_bond.unsqueeze(1)
        g_s = None
        if self.triplets:
            g_t3 = g_t3.view(rows, self.n_columns, self.n_families)
            if self.chi:  # the transposes of those products
                g_chi = g_t3[:, :, -1:]  # (N B, columns, 1)
                g_o = g_t3.new_empty(rows, self.n_columns, 4)
                g_o[..., 0] = g_t3[..., 0] if self.g3m else 0
                torch.mul(g_chi, s_i.unsqueeze(1), out=g_o[..., 1:])
                g_s = torch.bmm(g_chi.transpose(1, 2), o[:, :, 1:]).squeeze(1)  # internal order
            else:
                g_o = g_t3
            g_o = g_o.view(n, batch, -1, n_dp * self.comps).transpose(1, 2)
            g_x = product(geometry.triplet[1], g_o.reshape(-1, batch * n_dp * self.comps))
            if self.chi:  # the same products transposed, component-major
                g_x = g_x.view(n_t, self.slots, batch, n_dp, self.comps).permute(1, 3, 4, 0, 2)
                g_outer = self.rhs @ g_x.reshape(-1, n_t * batch)
                g_outer = g_outer.view(3, 3, n_dp, n_t, batch)
                g_ta = (g_outer * tb_jk).sum((1, 2))
                g_tb = ((g_outer * ta.view(3, 1, 1, n_t, batch)).sum(0) * jk_t).sum(1)
                g_t = torch.stack([g_ta, g_tb]).permute(2, 0, 3, 1)  # (P3, 2, B, 3)
            else:
                g_x = g_x.view(n_t, batch, n_dp)
                g_t_bond = (g_x * jk.unsqueeze(1)).sum(-1, keepdim=True)
                ta, tb = t_ends.unbind(1)
                g_t = torch.stack([g_t_bond * tb, g_t_bond * ta], 1)
            if pairs is None:
                g_ends += g_t
            else:
                g_ends.index_add_(0, pairs, g_t)
        grad = product(geometry.ends[1], g_ends.view(-1, batch * 3)).view(n, batch, 3)
        if g_s is not None:
            grad += g_s.view(n, batch, 3).index_select(0, geometry.inverse)
        return -grad.transpose(0, 1), energy

    def _fields_batched(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same with replicas innermost, (atom or pair, component, replica), as
        core.descriptor.features lays them out: elementwise work runs along the replicas."""
        geometry, n_d, n_dp = self.geometry, self.n_radii, self.n_dp
        batch, n = s.shape[:2]
        rows, n_cols = n * batch, self.n_columns
        flat = s.permute(1, 2, 0).reshape(n, 3 * batch)
        ends = flat.index_select(0, self.end_atoms).view(-1, 2, 3, batch)
        pairs = geometry.triplet_pairs
        if self.triplets and pairs is None:  # the bonds come with the right-hand sides
            t_ends = ends
            bond, x = pair_terms(ends, geometry.jk, self.slots)
        else:
            bond = bonds(ends)
        if self.triplets and pairs is not None:
            t_ends = ends.index_select(0, pairs)
            _, x = pair_terms(t_ends, geometry.jk, self.slots)
        feats = s.new_empty(n, batch, n_d + n_cols * self.n_families)  # (N, B, F), internal
        feats[..., :n_d] = product(geometry.g2[0], bond).view(n, n_d, batch).transpose(1, 2)
        if self.triplets:
            o = product(geometry.triplet[0], x).view(n, n_cols, self.comps, batch)
            t3 = feats[..., n_d:].view(n, batch, n_cols, self.n_families)
            if self.g3m:
                t3[..., 0] = o[:, :, 0].transpose(1, 2)
            if self.chi:  # G3chi_i = S_i . V_i
                s_i = s.index_select(1, geometry.order).permute(1, 2, 0).unsqueeze(1)
                chi = o[:, :, 1] * s_i[:, :, 0]
                chi.addcmul_(o[:, :, 2], s_i[:, :, 1]).addcmul_(o[:, :, 3], s_i[:, :, 2])
                t3[..., -1] = chi.transpose(1, 2)
        feats = feats.view(rows, -1)
        t3 = feats[:, n_d:] if self.triplets else None
        g_g2, g_t3, energy = self._network(feats[:, :n_d], t3, n)

        g_g2 = g_g2.view(n, batch, n_d).transpose(1, 2).reshape(n * n_d, batch)
        g_bond = product(geometry.g2[1], g_g2)
        g_s = None
        if self.triplets:
            g_t3 = g_t3.view(n, batch, n_cols, self.n_families)
            g_o = s.new_empty(n, n_cols, self.comps, batch)
            if self.g3m:
                g_o[:, :, 0] = g_t3[..., 0].transpose(1, 2)
            else:
                g_o[:, :, 0] = 0
            if self.chi:
                g_chi = g_t3[..., -1].transpose(1, 2).contiguous().unsqueeze(2)  # (N, L, 1, B)
                torch.mul(g_chi, s_i, out=g_o[:, :, 1:])
                g_s = (g_chi * o[:, :, 1:]).sum(1)  # (N, 3, B), internal order
            g_x = product(geometry.triplet[1], g_o.view(-1, n_dp * self.comps * batch))
        if self.triplets and pairs is None:
            g_ends = pair_terms_backward(ends, geometry.jk, self.slots, g_bond, g_x)
        else:
            swapped = flat.index_select(0, self.swapped_ends).view_as(ends)
            g_ends = swapped * g_bond.view(-1, 1, 1, batch)
        if self.triplets and pairs is not None:
            g_t = pair_terms_backward(t_ends, geometry.jk, self.slots, None, g_x)
            g_ends.index_add_(0, pairs, g_t)
        grad = product(geometry.ends[1], g_ends.view(-1, 3 * batch)).view(n, 3, batch)
        if g_s is not None:
            grad += g_s.index_select(0, geometry.inverse)
        return -grad.permute(2, 0, 1), energy

    def _network(self, g2: torch.Tensor, t3: torch.Tensor | None, n: int):
        """dE/dG of the G2m block (N B, n_d) and of the triplet block (N B, columns), and
        E = sum_i eps_i (B,) float64: the network forward and its backward written out
        (the same operations autograd runs, without its bookkeeping)."""
        bias, w_g2, w_t3 = self._first_layer()
        dtype = w_g2.dtype
        x = torch.addmm(bias, g2.to(dtype), w_g2)
        if t3 is not None:
            x = torch.addmm(x, t3.to(dtype), w_t3)
        saved = []  # (activation, its input, its output)
        for layer in self._rest:
            if isinstance(layer, nn.Linear):
                x = F.linear(x, layer.weight, layer.bias)
            else:
                saved.append((layer, x, layer(x)))
                x = saved[-1][2]
        eps = x  # (N B, 1)
        # backward from d(sum eps)/d eps = 1: the last layer's weights, then each layer's
        g = None
        for layer in reversed(self._rest):
            if isinstance(layer, nn.Linear):
                g = layer.weight.expand(len(eps), -1) if g is None else g @ layer.weight
            else:
                activation, before, after = saved.pop()
                g = activation_backward(activation, g, before, after)
        if g is None:  # the pairwise model: eps is the first (and only) layer's output
            g = torch.ones_like(eps)
        energy = eps.view(n, -1).to(torch.float64).sum(0) + n * self.model.energy_offset
        g_g2 = (g @ w_g2.t()).to(g2.dtype)
        return g_g2, ((g @ w_t3.t()).to(t3.dtype) if t3 is not None else None), energy


def activation_backward(
    layer: nn.Module, grad: torch.Tensor, before: torch.Tensor, after: torch.Tensor
) -> torch.Tensor:
    """grad * f'(before) for an activation layer f of core.model.ACTIVATIONS (after = f(before)),
    by the kernels autograd uses."""
    aten = torch.ops.aten
    if isinstance(layer, nn.SiLU):
        return aten.silu_backward(grad, before)
    if isinstance(layer, nn.ReLU):
        return aten.threshold_backward(grad, after, 0)
    if isinstance(layer, nn.Tanh):
        return aten.tanh_backward(grad, after)
    if isinstance(layer, nn.Softplus):
        return aten.softplus_backward(grad, before, layer.beta, layer.threshold)
    raise TypeError(f"no backward for the activation {type(layer).__name__}")
