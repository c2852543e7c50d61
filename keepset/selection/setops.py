"""Set algebra between keep masks, and a safe expression language over a score table.

Plain functions: ``intersect(a, b, ...)``, ``union(a, b, ...)``, ``difference(a, b)`` (a and not b),
``complement(a)``. ``evaluate_expression(expr, table)`` evaluates e.g.

    top(clip, 0.3) - bottom(mimic, 0.2)      # CLIP-score top 30% minus mimic bottom 20%
    (top(el2n, 0.5) & ~bottom(aum, 0.1)) | keep_a
    (clip_score >= 0.28) - (mimic_mean < 0)  # absolute thresholds
    top(dc.clip_score, 0.3) & (0.1 < sas <= 0.9)

where ``top(column, ratio)`` / ``bottom(column, ratio)`` select a ratio of a score column, a comparison of
a column with a number (``< <= > >=``, chains like ``0.1 < sas <= 0.9`` too) is the mask of rows where it
holds, and a bare name refers to a boolean column of the table. A dotted name (``dc.clip_score``) is a
column of a table joined under a prefix (``keepset select --scores dc=pool.parquet``). Operators: ``&``
and, ``|`` or, ``-`` minus, ``^`` symmetric difference, ``~`` complement. As in Python, comparisons bind
more loosely than ``& | - ^``: write each comparison in brackets, ``(a >= 0.2) & (b < 0)``. The expression
is parsed with ``ast`` and only those nodes are accepted: nothing is ever ``eval``-ed.
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


_COMPARE = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal}
_FLIP = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE}

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

    def name_of(node) -> str | None:
        """``a`` or a dotted ``dc.clip_score`` (a prefixed column); None for anything else."""
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute) and name_of(node.value) is not None:
            return f"{name_of(node.value)}.{node.attr}"
        return None

    def number(node) -> float | None:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = number(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return float(node.value)
        return None

    def numeric(name: str) -> np.ndarray:
        col = column(name)
        if col.dtype.kind not in "iuf":
            raise ValueError(f"column {name!r} holds {col.dtype} values; a threshold needs a numeric score column")
        col = col.astype(np.float64)
        if np.isnan(col).any():
            raise ValueError(f"column {name!r} has {int(np.isnan(col).sum())} missing (NaN) values; a threshold "
                             "on it would silently drop them: fill or filter them first")
        return col

    def compare(node: ast.Compare) -> np.ndarray:
        terms = [node.left, *node.comparators]
        mask = None
        for op, a, b in zip(node.ops, terms[:-1], terms[1:]):
            if type(op) not in _COMPARE:
                raise ValueError(f"unsupported comparison {ast.unparse(node)!r}: use < <= > >= between a column "
                                 "and a number")
            na, nb, va, vb = name_of(a), name_of(b), number(a), number(b)
            if na is not None and vb is not None:
                m = _COMPARE[type(op)](numeric(na), vb)
            elif va is not None and nb is not None:
                m = _COMPARE[_FLIP[type(op)]](numeric(nb), va)
            elif na is not None and nb is not None:
                raise ValueError(f"unsupported comparison {ast.unparse(node)!r}: compare a column with a number, "
                                 "not two columns")
            else:
                raise ValueError(f"cannot read the comparison {ast.unparse(node)!r}: each side of < <= > >= must be "
                                 "a column name or a number. Comparisons bind more loosely than & | - ^, so bracket "
                                 "each one: (clip_score >= 0.28) & (mimic_mean < 0)")
            mask = m if mask is None else mask & m
        return mask

    def ev(node) -> np.ndarray:
        if isinstance(node, ast.Compare):
            return compare(node)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Invert, ast.Not)):
            return complement(ev(node.operand))
        if name_of(node) is not None:
            name = name_of(node)
            col = column(name)
            if col.dtype != np.bool_:
                raise ValueError(f"column {name!r} is not boolean; use top({name}, RATIO), bottom({name}, RATIO) "
                                 f"or a threshold such as ({name} >= 0.5) to turn a score into a mask")
            return col
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("top", "bottom")
                and len(node.args) == 2 and not node.keywords and name_of(node.args[0]) is not None
                and number(node.args[1]) is not None):
            return select_top(column(name_of(node.args[0])), number(node.args[1]), largest=node.func.id == "top")
        raise ValueError(f"unsupported part {ast.unparse(node)!r} in selection expression {expr!r}; allowed: "
                         "top(COLUMN, RATIO), bottom(COLUMN, RATIO), comparisons of a column with a number "
                         "(COLUMN >= 0.28, in brackets when combined), boolean column names, & | - ^ ~ and brackets")

    return ev(tree.body)
