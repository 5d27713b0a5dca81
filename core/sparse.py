"""Sparse CSR helpers of the descriptor: constant maps built once, applied every step.

``Pattern`` builds CSR matrices (and their transposes) from coordinate entries
with scipy's linear-time conversions; ``SparseApply`` applies a constant CSR
matrix with a backward that applies the precomputed transpose (and is itself
differentiable, so fields -dE/dS can enter a training loss); ``block_diag``
joins the maps of several configurations.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch


def index_dtype(*sizes: int) -> torch.dtype:
    """int32 sparse indices when they fit (MKL's int32 kernels are ~2x faster), else int64."""
    return torch.int32 if max(sizes, default=0) < 2**31 - 1 else torch.int64


def csr(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape, device=None
) -> torch.Tensor:
    """torch CSR tensor on `device` (default: where the parts are); our constructions keep
    the invariants (sorted, in range), so torch's checks are switched off explicitly. The
    parts move before the tensor is made: torch 2.11 warned about implicit invariant checks
    when a CSR tensor was copied to a GPU."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly")
        return torch.sparse_csr_tensor(
            crow.to(device),
            col.to(device),
            values.to(device),
            size=shape,
            check_invariants=False,
        )


def moved(matrix: torch.Tensor, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CSR matrix on another device and/or with values of another dtype."""
    values = matrix.values().to(dtype=dtype)
    return csr(matrix.crow_indices(), matrix.col_indices(), values, matrix.shape, device)


class Pattern:
    """One sparsity pattern (row, col) in CSR order and transposed, for several value sets.

    perm / perm_t put the entries (in the order given) into CSR order of the
    matrix / its transpose, column indices sorted within rows (scipy's linear-time
    COO -> CSR and CSR -> CSC conversions), as torch's CSR invariants require.
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> None:
        nnz = len(rows)
        entry = np.int32 if nnz < 2**31 else np.int64
        ids = sp.csr_matrix((np.arange(nnz, dtype=entry), (rows, cols)), shape=shape)
        if ids.nnz != nnz:
            raise RuntimeError("internal error: repeated (row, col) entry in a descriptor map")
        ids_t = ids.T.tocsr()
        index = index_dtype(nnz, *shape)
        self.shape = shape
        self.crow = torch.from_numpy(ids.indptr).to(index)
        self.col = torch.from_numpy(ids.indices).to(index)
        self.crow_t = torch.from_numpy(ids_t.indptr).to(index)
        self.col_t = torch.from_numpy(ids_t.indices).to(index)
        self.perm, self.perm_t = ids.data, ids_t.data

    def maps(
        self, values: np.ndarray, dtype: torch.dtype, device
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(matrix, transpose) CSR pairs for each column of values (nnz, K), in entry order."""
        records = torch.from_numpy(np.ascontiguousarray(values))
        out = []
        for perm in (self.perm, self.perm_t):
            # one row gather of K-value records, then one transposing copy (torch is much
            # faster at both than numpy fancy indexing)
            taken = records.index_select(0, torch.from_numpy(perm))
            out.append(taken.t().contiguous().to(dtype))
        return [
            (
                csr(self.crow, self.col, f, self.shape, device),
                csr(self.crow_t, self.col_t, b, self.shape[::-1], device),
            )
            for f, b in zip(out[0], out[1], strict=True)
        ]


def product(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """M @ x for a sparse M and a dense x (rows, columns), not differentiable."""
    # beta = 0 into fresh memory: skips the zero fill and copy of a plain matmul (~1.5x)
    out = torch.empty(matrix.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    return torch.addmm(out, matrix, x, beta=0, out=out)


class SparseApply(torch.autograd.Function):
    """out = M @ x for a constant sparse M; backward applies the precomputed M^T."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, matrix: torch.Tensor, matrix_t: torch.Tensor):
        ctx.matrices = (matrix, matrix_t)
        return product(matrix, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        matrix, matrix_t = ctx.matrices
        # the same Function with the roles swapped: differentiable again (fields in a loss)
        return SparseApply.apply(grad.contiguous(), matrix_t, matrix), None, None


def block_diag(mats: list[torch.Tensor]) -> torch.Tensor:
    """Block-diagonal CSR matrix from CSR blocks (rows and columns offset)."""
    nnz = [m.values().numel() for m in mats]
    rows = sum(m.shape[0] for m in mats)
    cols = sum(m.shape[1] for m in mats)
    index = index_dtype(sum(nnz), rows, cols)
    crow = [torch.zeros(1, dtype=index, device=mats[0].device)]
    col = []
    n_off = c_off = 0
    for m, k in zip(mats, nnz, strict=True):
        crow.append(m.crow_indices()[1:].to(index) + n_off)
        col.append(m.col_indices().to(index) + c_off)
        n_off += k
        c_off += m.shape[1]
    values = torch.cat([m.values() for m in mats])
    return csr(torch.cat(crow), torch.cat(col), values, (rows, cols))


def block_diag_maps(
    maps: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    return block_diag([m for m, _ in maps]), block_diag([t for _, t in maps])
