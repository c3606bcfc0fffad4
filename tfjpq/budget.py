"""Steering the search by a budget: the hard cost, the multiplier controller, the final projection.

``tfjpq.wrap(model, target=B)`` asks for a model whose *hard* cost (the cost of
the choices :func:`tfjpq.freeze` keeps: the argmax of every logit, priced by
the same formula as the soft cost with one-hot probabilities) is ``B`` in the
cost's unit (bytes for ``"size"`` and ``"tflm"``, BitOps, cycles, ms).

* **Controller** (:func:`controller_update`, run by the search model in every
  training step, inside the compiled step, with or without callbacks): the
  strength is a Lagrange multiplier adapted by multiplicative dual ascent on
  the relative gap ``g = clip(hard / B - 1, -0.5, 0.5)``:
  ``multiplier <- multiplier * exp(RATE * g)`` (kept within
  ``[MIN_STRENGTH, MAX_STRENGTH]``) plus a proportional term,
  ``strength = multiplier * (1 + GAIN * g)`` (``GAIN_UNDER`` instead of
  ``GAIN`` below the budget). Above the budget the multiplier
  grows and the logits move to cheaper choices; below it, it shrinks, and
  well below it the strength turns negative and pushes precision back. Its state (``strength``, ``target``, the last
  ``hard_cost``) lives in variables of the model, so it is saved in ``.keras``
  files and restored.
* **Projection** (:func:`project`, run by :func:`tfjpq.freeze` when a target
  is set): if the hard cost is still outside ``B * (1 +- tolerance)`` at the
  end, channels are moved one precision step at a time, down (when over
  budget) or up (when more than ``tolerance`` under it), those whose logits
  least prefer their current choice first, until the cost is as close to
  ``B`` from below as single moves allow (upward, the moves that would jump
  over ``B`` are skipped and later, smaller ones tried). It never takes a
  group below its ``min_channels``. Where the cost model prices layer splits
  (``CostModel.prices_splits``: ``"tflm"``), the margins are per byte the
  move changes, and downward a channel may also be pruned in one move
  (``MOVE_ORDER = "auto"``, ``DIRECT_PRUNE``): there one channel moved from 8
  to 4 bits saves nothing until its layer's split pays for the graph
  records, and ordering by margin alone made 69-184 such moves on the zoo's
  DS-CNN to cut 1-12 % of its file; per byte, with prunes, 0-25. There a
  group's channels at one width may also move one step narrower together, in
  one move that saves the split's operators too (``GROUP_MOVES``), when that
  does not jump below the window. With the
  ``"size"`` cost every step saves bytes, and the per-byte order lost 1.5-17
  points on DS-CNN at w4 and below (benchmarks/RESULTS.md).

Example::

    search = tfjpq.wrap(model, cost="size", target=20_000)      # 20 kB of weights
    search.compile(optimizer="adam", loss=loss)
    search.fit(x, y, epochs=6, callbacks=[tfjpq.callbacks.SearchLogger()])
    tuned = tfjpq.freeze(search)          # hard cost within 3 % of 20 kB
    float(tuned.hard_cost())
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfjpq import cost as cost_lib

__all__ = [
    "RATE", "GAIN", "GAIN_UNDER", "MAX_GAP", "DEFAULT_TOLERANCE", "MAX_FILL", "RAMP_FRACTION", "MOVE_ORDER",
    "MOVE_ORDERS", "DIRECT_PRUNE", "GROUP_MOVES",
    "selection_cost", "minimum_selection", "minimum_cost", "check_target", "ramp_target", "controller_update",
    "start_ramp", "project", "measure_offset", "check_flatbuffer", "ceiling_window", "ceiling_aim", "CHECK_MARGIN",
]

RATE = 0.3  # multiplicative step of the multiplier per training step, per unit of relative gap
RAMP_FRACTION = 0.5  # of a fit's steps, the share over which the budget the controller steers to falls to the target
GAIN = 3.0  # proportional term: strength = multiplier * (1 + GAIN * gap)
GAIN_UNDER = 10.0  # below the budget (gap < 0): the pull stops 10 % under it, and pushes back beyond
MAX_GAP = 0.5  # the relative gap is clipped to +-MAX_GAP in one step
MIN_STRENGTH, MAX_STRENGTH = 1e-6, 1e4
DEFAULT_TOLERANCE = 0.03
MAX_FILL = 200  # single moves tried after the bisection of an upward pass


def selection_cost(model, weight_sel, act_sel=None) -> float:
    """Cost of a hard selection: ``{group name: index array into its bits}``, ``{act name: index}``.

    Example::

        sel = {c.name: c.selected_index() for c in search.precision_choices()}
        tfjpq.budget.selection_cost(search, sel)     # == float(search.hard_cost())
    """
    thetas = {}
    for c in model.precision_choices():
        idx = weight_sel.get(c.name)
        if idx is not None:
            thetas[c.name] = np.eye(len(c.bits), dtype=np.float32)[np.asarray(idx)].T
    phis = {}
    for a in model.activation_choices():
        if act_sel is not None and a.name in act_sel:
            phis[a.name] = np.eye(len(a.bits), dtype=np.float32)[int(act_sel[a.name])]
    return float(model.cost_model.total(cost_lib.layer_terms(model, hard=True, thetas=thetas, phis=phis)))


def minimum_selection(model):
    """The cheapest selection: each prunable group keeps ``min_channels`` channels, all at the lowest width."""
    weight_sel = {}
    for c in model.precision_choices():
        low = 1 if c.prunable else 0
        if c.prunable:
            idx = np.zeros(c.channels, np.int64)
            idx[: min(c.min_channels, c.channels)] = low
        else:
            idx = np.full(c.channels, low, np.int64)
        weight_sel[c.name] = idx
    return weight_sel, {a.name: 0 for a in model.activation_choices()}


def minimum_cost(model) -> float:
    """The lowest cost any frozen model of this search space can have (see :func:`minimum_selection`).

    Example::

        tfjpq.budget.minimum_cost(search)     # a target below this raises ValueError
    """
    return selection_cost(model, *minimum_selection(model))


def check_target(model, target, tolerance=DEFAULT_TOLERANCE):
    """Raise ValueError unless ``target`` is a reachable budget for ``model``'s cost."""
    unit = getattr(model.cost_model, "unit", "")
    if not unit:
        raise ValueError(f"target= needs a cost with a unit; the cost model {type(model.cost_model).__name__} "
                         f"sets no `unit` (set its class attribute `unit`, e.g. 'bytes')")
    try:
        target = float(target)
    except (TypeError, ValueError):
        raise ValueError(f"target must be a number in {unit}, got {target!r}") from None
    if not np.isfinite(target) or target <= 0:
        raise ValueError(f"target must be a positive number of {unit}, got {target}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    low = minimum_cost(model)
    if target < low:
        raise ValueError(f"target {target:,.6g} {unit} is below the minimum achievable cost {low:,.6g} {unit} "
                         f"(every prunable group at its min_channels, everything at the lowest bit-width)")
    return target


def ramp_target(target, start, left, total):
    """The budget the controller steers to now (graph-safe): ``target * (start / target) ** (left / total)``.

    A geometric path from the hard cost ``start`` where the ramp began down
    (or up) to ``target``, reached when ``left`` (steps still to go) is 0; with
    ``total`` 0 (no ramp) it is ``target``.
    """
    frac = tf.where(total > 0, left / tf.maximum(total, 1.0), 0.0)
    ratio = tf.maximum(start, 1e-12) / tf.maximum(target, 1e-12)
    return target * tf.pow(ratio, frac)


def start_ramp(model, params):
    """Set a search model's budget ramp at the start of its first ``fit`` (``SearchModel.fit`` calls it).

    Over the first :data:`RAMP_FRACTION` of that fit's steps (``params``: the
    callback's ``steps`` and ``epochs``), the budget the controller steers to
    falls geometrically from the hard cost at the start to the target
    (:func:`ramp_target`), so the gap it sees stays small: a tight budget is
    approached as fast as the logits can follow, without the multiplier
    winding up and overshooting far below it. A later ``fit`` (or one resumed
    by ``BackupAndRestore``, which restores the ramp's state) does not start
    a new ramp.
    """
    if model.target is None or float(model._ramp_total.numpy()) > 0 or not params:
        return
    steps = params.get("steps") or 0
    epochs = params.get("epochs") or 1
    total = float(int(RAMP_FRACTION * steps * epochs))
    if total < 1:
        return
    model._ramp_from.assign(float(model.hard_cost()))
    model._ramp_left.assign(total)
    model._ramp_total.assign(total)


def measure_offset(model):
    """Measure the deployed file of a search in target mode; keep ``file - modelled hard cost`` for the controller.

    For a cost model that can measure (``CostModel.measure``; the flash cost of
    ``"tflm"``), converts the hard choices now and stores the difference in
    the search model's ``_measured_offset``: the controller then steers the
    modelled hard cost plus that offset to the budget, and :func:`tfjpq.freeze`
    projects onto the budget less the offset, so the search ends where the
    *file* meets the budget (the per-layer model misses, for example, the
    shape vectors the lean flatbuffer shares while layers have equal widths).
    ``SearchModel.fit`` calls it when the budget ramp ends and after every
    epoch. Returns the offset, or None where nothing can be measured.

    Example::

        search = tfjpq.wrap(model, cost="tflm", target=20_000)
        tfjpq.budget.measure_offset(search)     # e.g. 96.0 (bytes the model does not see)
    """
    if model.target is None:
        return None
    measured = model.cost_model.measure(model)
    if measured is None:
        return None
    offset = float(measured) - float(model.hard_cost())
    model._measured_offset.assign(offset)
    return offset


def controller_update(multiplier, strength, hard, target):
    """One step of the controller (graph-safe): integral ``multiplier``, effective ``strength``.

    ``multiplier <- multiplier * exp(RATE * gap)`` (dual ascent in log space) and
    ``strength = multiplier * (1 + GAIN * gap)`` above the budget,
    ``multiplier * (1 + GAIN_UNDER * gap)`` below it (a proportional term: the
    pull drops as soon as the hard cost falls under the budget, and turns into
    a push back up, a negative strength, more than ``1 / GAIN_UNDER`` under
    it), with ``gap = clip(hard / target - 1, -MAX_GAP, MAX_GAP)``. Returns the
    strength.
    """
    gap = tf.clip_by_value(hard / target - 1.0, -MAX_GAP, MAX_GAP)
    m = tf.clip_by_value(tf.convert_to_tensor(multiplier) * tf.exp(RATE * gap), MIN_STRENGTH, MAX_STRENGTH)
    multiplier.assign(m)
    new = m * (1.0 + tf.where(gap < 0, GAIN_UNDER, GAIN) * gap)
    strength.assign(new)
    return new


MOVE_ORDER = "auto"  # "margin_per_byte" (the logit margin divided by the bytes the move changes), "margin",
# or "auto": per byte where the cost model prices layer splits (CostModel.prices_splits: "tflm"), else by margin
MOVE_ORDERS = ("auto", "margin", "margin_per_byte")
DIRECT_PRUNE = None  # downward, a channel may also go to 0 bits in one move: None = with the per-byte order
# Downward, with the per-byte order, also move every channel of a group at one width one step narrower in one
# move: where the cost prices splits, a layer split into 8- and 4-bit parts pays the split's operators, so
# single 8 -> 4 steps each save a few bytes while the last one saves the split too, and the direct prunes won.
GROUP_MOVES = True


def _order(model):
    """``(per byte, direct prunes)`` of the projection for ``model``'s cost (see ``MOVE_ORDER``)."""
    if MOVE_ORDER not in MOVE_ORDERS:
        raise ValueError(f"tfjpq.budget.MOVE_ORDER must be one of {MOVE_ORDERS}, got {MOVE_ORDER!r}")
    per_byte = (MOVE_ORDER == "margin_per_byte"
                or (MOVE_ORDER == "auto" and getattr(model.cost_model, "prices_splits", False)))
    return per_byte, per_byte if DIRECT_PRUNE is None else bool(DIRECT_PRUNE)


def _move_bytes(model, sel, acts, c, down, base, prune=False):
    """{current index: |cost change| of moving one channel of group ``c`` one step} (for ``MOVE_ORDER``).

    ``base``: ``selection_cost(model, sel, acts)``, priced once by the caller for every group.
    With ``prune``, the change of pruning one channel from each index wider than one step above 0 bits instead.
    """
    out = {}
    idx = sel[c.name]
    for cur in np.unique(idx):
        new = c.bits.index(0) if prune else (cur - 1 if down else cur + 1)
        if not 0 <= new < len(c.bits) or (prune and cur - 1 <= new):  # a prune one step can make is that step
            continue
        trial = _apply(sel, [(None, c.name, int(np.nonzero(idx == cur)[0][0]), new)])
        out[int(cur)] = max(abs(selection_cost(model, trial, acts) - base), 1e-3)
    return out


def _moves(model, sel, down, acts=None, direct=None, room=None):
    """Candidate moves ``(score, group, channel, new index)``; lower score = move first.

    One step per channel, and with ``direct`` (default: as :func:`_order` says) downward also
    straight to 0 bits; each channel keeps its best-scored move. With ``direct`` and
    :data:`GROUP_MOVES`, downward also every channel of a group at one width one step narrower
    (channel: a tuple), where that saves at most ``room`` (None: any).
    """
    per_byte, default_direct = _order(model)
    direct = default_direct if direct is None else direct
    moves = []
    base = selection_cost(model, sel, acts) if per_byte else None
    for c in model.precision_choices():
        alpha = c.alpha.numpy()
        idx = sel[c.name]
        n = len(c.bits)
        zero = c.bits.index(0) if c.prunable else None
        kept = int(np.sum(idx != zero)) if c.prunable else c.channels
        step_bytes = _move_bytes(model, sel, acts, c, down, base) if base is not None else {}  # {}: by margin
        prune = direct and down and c.prunable
        prune_bytes = _move_bytes(model, sel, acts, c, down, base, prune=True) if prune and base is not None else {}
        group_moves = []
        for ch in range(c.channels):
            cur = int(idx[ch])
            new = cur - 1 if down else cur + 1
            if prune and cur - 1 > zero:  # a wide channel may also go straight to 0 bits
                margin = float(alpha[cur, ch] - alpha[zero, ch])
                group_moves.append((_score(margin, prune_bytes.get(cur)), c.name, ch, zero))
            if not 0 <= new < n:
                continue
            margin = float(alpha[cur, ch] - alpha[new, ch])
            group_moves.append((_score(margin, step_bytes.get(cur)), c.name, ch, new))
        if down and c.prunable:  # at most kept - min_channels channels of this group may go to 0 bits in one pass
            group_moves.sort()
            allowed = max(kept - min(c.min_channels, c.channels), 0)
            out = []
            for m in group_moves:
                if m[3] == zero:
                    if allowed == 0:
                        continue
                    allowed -= 1
                out.append(m)
            group_moves = out
        moves += group_moves
        if GROUP_MOVES and direct and down and base is not None:  # a group's channels at one width, a step narrower
            for cur in np.unique(idx):
                chs = tuple(int(ch) for ch in np.nonzero(idx == cur)[0])
                new = int(cur) - 1
                if len(chs) < 2 or new < 0 or new == zero:
                    continue
                trial = _apply(sel, [(None, c.name, chs, new)])
                saved = base - selection_cost(model, trial, acts)
                if saved <= 0 or room is not None and saved > room:
                    continue
                margin = float(sum(alpha[cur, ch] - alpha[new, ch] for ch in chs))
                moves.append((_score(margin, saved), c.name, chs, new))
    moves.sort(key=lambda m: (m[0], m[1], m[2] if isinstance(m[2], tuple) else (m[2],), m[3]))
    if direct:  # one move per channel: its best-scored one (the first, the moves being sorted)
        best = {}
        for m in moves:
            best.setdefault((m[1], m[2]), m)
        moves = list(best.values())
    return moves


def _score(margin, nbytes=None):
    """A move's rank: its logit margin, or with ``nbytes`` (per-byte order) the margin per byte it changes.

    A move its channel's logits already prefer (negative margin) ranks the earlier the more bytes it changes.
    """
    if nbytes is None:
        return margin
    return margin / nbytes if margin > 0 else margin * nbytes


def _apply(sel, moves):
    out = {k: v.copy() for k, v in sel.items()}
    for _, name, ch, new in moves:
        if isinstance(ch, tuple):  # a group move: only the channels still wider than its width
            chs = np.asarray(ch)
            chs = chs[out[name][chs] > new]
            out[name][chs] = new
        else:
            out[name][ch] = new
    return out


def project(model, target, tolerance=DEFAULT_TOLERANCE, max_passes=12, margin=1.0):
    """Move hard choices until the hard cost is within ``target * (1 +- tolerance)``; returns a report dict.

    Writes the new choices into the logits (``alpha``) of ``model``, so its
    argmax is the projected selection (a moved channel's new logit leads its
    others by ``margin``). Over budget: one-step-down moves
    (8 -> 4, 2 -> pruned, ...) in order of the smallest logit margin (per
    byte, and with prunes from any width too, where :data:`MOVE_ORDER` says),
    the fewest that bring the cost to ``target`` or below. More than
    ``tolerance`` under budget: one-step-up moves in the same order, the most
    that keep the cost at or below ``target``. Repeated for up to
    ``max_passes`` passes. Where the prunes overshoot and no move
    back up is small enough to land within ``tolerance``, the passes are
    run again from the start with single steps only, and the closer result kept.

    Example::

        report = tfjpq.budget.project(frozen, target=20_000)
        report["before"], report["after"], report["moves"]
    """
    acts = {a.name: int(np.argmax(a.beta.numpy())) for a in model.activation_choices()}
    start = {c.name: c.selected_index() for c in model.precision_choices()}
    low, high = target * (1 - tolerance), target * (1 + tolerance)
    direct = _order(model)[1]
    with model.cost_model.remembering_layers():  # the trials differ from each other in a group or two
        before = selection_cost(model, start, acts)
        sel, cost, n_moves = _projected(model, start, acts, target, tolerance, max_passes, direct)
        if direct and not low <= cost <= high:
            # a prune can overshoot by more than any single move back up can fill: try single steps only
            steps = _projected(model, start, acts, target, tolerance, max_passes, False)
            if low <= steps[1] <= high or abs(steps[1] - target) < abs(cost - target):
                sel, cost, n_moves = steps
    if n_moves:
        for c in model.precision_choices():
            alpha = c.alpha.numpy()
            idx = sel[c.name]
            for ch in np.nonzero(idx != np.argmax(alpha, axis=0))[0]:  # argmax == selection, no rescue needed
                alpha[idx[ch], ch] = alpha[:, ch].max() + margin
            c.alpha.assign(alpha)
    return {"before": before, "after": cost, "target": float(target), "moves": n_moves}


def _projected(model, sel, acts, target, tolerance, max_passes, direct):
    """The passes of :func:`project` from selection ``sel``: ``(selection, its cost, moves made)``."""
    cost = selection_cost(model, sel, acts)
    n_moves = 0
    for _ in range(max_passes):
        if cost > target * (1 + tolerance):
            down = True
        elif cost < target * (1 - tolerance):
            down = False
        else:
            break
        # a group move may not jump below the window: it would take more single steps back up than it saved
        moves = _moves(model, sel, down, acts, direct, room=cost - target * (1 - tolerance))
        if not moves:
            break
        lo, hi = 0, len(moves)  # bisection on how many of the ordered moves to apply
        if down:  # fewest k with cost(k) <= target (all moves if none reaches it)
            while lo < hi:
                mid = (lo + hi) // 2
                if selection_cost(model, _apply(sel, moves[:mid + 1]), acts) <= target:
                    hi = mid
                else:
                    lo = mid + 1
            k = min(lo + 1, len(moves))
        else:  # most k with cost(k) <= target
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if selection_cost(model, _apply(sel, moves[:mid]), acts) <= target:
                    lo = mid
                else:
                    hi = mid - 1
            k = lo
        sel = _apply(sel, moves[:k])
        n_moves += k
        cost = selection_cost(model, sel, acts)
        if not down and k < len(moves):  # one move may be coarse (a channel back with its consumers' rows): fill
            filled = 0
            for move in moves[k + 1:][:MAX_FILL]:
                if cost >= target * (1 - tolerance):
                    break
                trial = _apply(sel, [move])
                trial_cost = selection_cost(model, trial, acts)
                if trial_cost <= target:
                    sel, cost, filled = trial, trial_cost, filled + 1
            n_moves += filled
            if k == 0 and filled == 0:
                break
    return sel, cost, n_moves


FLATBUFFER_CHECKS = 4
# The file is checked before the fine-tune, which moves it by a few bytes (a LUT tensor's table holds as many values
# per channel as its channel with the most distinct values uses): the checks keep that far inside the window.
CHECK_MARGIN = 0.1  # of the tolerance, on each side of the window
CHECK_MARGIN_BYTES = 16  # and at least this many bytes


def ceiling_window(target, tolerance=DEFAULT_TOLERANCE):
    """The bytes ``freeze``'s flatbuffer checks accept for a flash ceiling: ``(low, high)``.

    ``[target * (1 - tolerance), target]`` less a margin on each side
    (:data:`CHECK_MARGIN` of the tolerance, at least :data:`CHECK_MARGIN_BYTES`,
    at most a quarter of the window), which leaves room for the few bytes the
    fine-tune after ``freeze`` moves the file.

    Example::

        tfjpq.budget.ceiling_window(20_000)   # (19_460.0, 19_940.0)
    """
    target, tolerance = float(target), float(tolerance)
    margin = min(max(CHECK_MARGIN * tolerance * target, CHECK_MARGIN_BYTES), tolerance * target / 4)
    return target * (1.0 - tolerance) + margin, target - margin


def ceiling_aim(target, tolerance, offset):
    """Where the modelled cost must land for the file to sit mid-window: ``target * (1 - tolerance / 2) - offset``.

    ``offset`` is the file's bytes minus the modelled cost (measured during
    the search, or by a flatbuffer check). ``tfjpq.freeze`` and
    :func:`check_flatbuffer` project onto it.

    Example::

        tfjpq.budget.ceiling_aim(20_000, 0.03, 120.0)   # 19,580.0
    """
    return float(target) * (1.0 - float(tolerance) / 2) - float(offset)


def check_flatbuffer(model, report, checks=FLATBUFFER_CHECKS):
    """Measure the projected model as deployed; re-project while the file is outside the ceiling's window.

    Does nothing for a cost model that cannot measure (``CostModel.measure``
    gives None). For the flash cost that prices the whole flatbuffer
    (``tfjpq.tflm_cost.TFLMCost``), the per-layer model is an estimate and the
    converted file is what the board pays, and a flash budget is a ceiling:
    each check converts the hard choices and, unless the file lies within
    :func:`ceiling_window` (``[target * (1 - tolerance), target]`` less a small
    margin), projects again to ``target * (1 - tolerance / 2) - (measured - modelled)``; where
    the file is under the window and no move up fits under that aim, to the window's top instead.
    Adds ``flatbuffer_bytes`` and ``flatbuffer_error`` to ``report``.

    Example::

        tuned = tfjpq.freeze(search)          # search = tfjpq.wrap(model, cost="tflm", target=20_000)
        tuned.projection["flatbuffer_bytes"]  # at most 20,000, at least 19,400
    """
    target, tol = float(model.target), float(model.tolerance)
    low, high = ceiling_window(target, tol)
    for i in range(checks):
        measured = model.cost_model.measure(model)
        if measured is None:
            break
        report["flatbuffer_bytes"] = int(measured)
        report["flatbuffer_error"] = measured / target - 1.0
        if low <= measured <= high or i == checks - 1:
            break
        offset = measured - float(model.hard_cost())
        again = project(model, ceiling_aim(target, tol, offset), tol / 4)
        if again["moves"] == 0 and measured < low:
            # every move up overshoots the aim (one may be coarse: a channel back with its consumers' rows);
            # one that stays under the window's top still lands the file inside the window
            again = project(model, high - offset, (high - low) / high)
        report["moves"] += again["moves"]
        report["after"] = again["after"]
    return report
