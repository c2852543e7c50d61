"""Set algebra between keep masks, and a safe expression language over a score table.

Plain functions: ``intersect(a, b, ...)``, ``union(a, b, ...)``, ``difference(a, b)`` (a and not b),
``complement(a)``. ``evaluate_expression(expr, table)`` evaluates e.g.

    top(clip, 0.3) - bottom(mimic, 0.2)      # CLIP-score top 30% minus mimic bottom 20%
    (top(el2n, 0.5) & ~bottom(aum, 0.1)) | keep_a

where ``top(column, ratio)`` / ``bottom(column, ratio)`` select a ratio of a score column and a bare
name refers to a boolean column of the table. Operators: ``&`` and, ``|`` or, ``-`` minus,
``^`` symmetric difference, ``~`` complement. The expression is parsed with ``ast`` and only those
nodes are accepted: nothing is ever ``eval``-ed.
"""

from __future__ import annotations

import ast

import numpy as np

from keepset.selection.topk import select_top


def _masks(masks) -> list[np.ndarray]:
    if not masks:
        raise ValueError("give at least one mask")
    out = [np.asarray(m) for m in masks]
    for i, m in enumerate(out):
        if m.dtype != np.bool_ or m.ndim != 1:
            raise ValueError(f"mask {i} must be a 1-D boolean array, got dtype {m.dtype} shape {m.shape}")
        if m.shape != out[0].shape:
            raise ValueError(f"masks must have the same length; mask {i} has {len(m)}, mask 0 has {len(out[0])}")
    return out


def intersect(*masks) -> np.ndarray:
    """Samples kept by every mask: bool [N]."""
    ms = _masks(masks)
    return np.logical_and.reduce(ms)


def union(*masks) -> np.ndarray:
    """Samples kept by any mask: bool [N]."""
    ms = _masks(masks)
    return np.logical_or.reduce(ms)


def difference(a, b) -> np.ndarray:
    """Samples kept by ``a`` and not by ``b``: bool [N]."""
    a, b = _masks((a, b))
    return a & ~b


def complement(a) -> np.ndarray:
    """Samples not kept by ``a``: bool [N]."""
    (a,) = _masks((a,))
    return ~a


_BINOPS = {ast.BitAnd: lambda a, b: intersect(a, b), ast.BitOr: lambda a, b: union(a, b),
           ast.Sub: difference, ast.BitXor: lambda a, b: np.logical_xor(*_masks((a, b)))}


def evaluate_expression(expr: str, table: dict) -> np.ndarray:
    """Evaluate a keep-mask expression (see the module docstring) over ``table`` {column: [N]}."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError("empty selection expression; e.g. 'top(clip, 0.3) - bottom(mimic, 0.2)'")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot parse selection expression {expr!r}: {exc.msg}") from None

    def column(name: str) -> np.ndarray:
        if name not in table:
            raise ValueError(f"expression names column {name!r}, which the table lacks; "
                             f"columns: {', '.join(k for k in table if k not in ('id',))}")
        return np.asarray(table[name])

    def ev(node) -> np.ndarray:
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Invert, ast.Not)):
            return complement(ev(node.operand))
        if isinstance(node, ast.Name):
            col = column(node.id)
            if col.dtype != np.bool_:
                raise ValueError(f"column {node.id!r} is not boolean; use top({node.id}, RATIO) or "
                                 f"bottom({node.id}, RATIO) to turn a score into a mask")
            return col
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("top", "bottom")
                and len(node.args) == 2 and not node.keywords and isinstance(node.args[0], ast.Name)
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, (int, float))):
            return select_top(column(node.args[0].id), float(node.args[1].value), largest=node.func.id == "top")
        raise ValueError(f"unsupported part {ast.unparse(node)!r} in selection expression {expr!r}; allowed: "
                         "top(COLUMN, RATIO), bottom(COLUMN, RATIO), boolean column names, & | - ^ ~ and brackets")

    return ev(tree.body)
