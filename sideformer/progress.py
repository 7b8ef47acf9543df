"""Progress inside long loops (an epoch's batches), on rank 0 only.

On a terminal: tqdm's bar, with its rate and ETA. Without one (a pipe, a pod's log read with
`kubectl logs -f`): the same counts, rate and ETA as one plain log line every `seconds`, so a trial that
is alive says so and a log holds no carriage-return bars. tqdm does the counting and timing in both cases
(its `mininterval` throttles the lines); only how a refresh is shown differs.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("sideformer.progress")

LINE_FORMAT = (
    "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)


class _LogLines(tqdm):  # type: ignore[misc]
    """tqdm that logs a plain line per refresh instead of redrawing a bar."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "" or self.n <= self.initial:  # closing, or nothing done yet: nothing to say
            return True
        log.info(self.format_meter(**{**self.format_dict, "bar_format": LINE_FORMAT}))
        return True


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None,
    initial: float = 0,
    desc: str,
    unit: str = "it",
    unit_scale: float | bool = False,
    enabled: bool = True,
    seconds: float = 30.0,
) -> tqdm:
    """A bar on a terminal, a line every `seconds` elsewhere (none when `seconds` is 0), nothing when
    not `enabled` (ranks > 0)."""
    common: dict[str, Any] = {"total": total, "initial": initial, "desc": desc, "unit": unit}
    common["unit_scale"] = unit_scale
    if enabled and sys.stderr.isatty():
        return tqdm(iterable, **common, leave=False, dynamic_ncols=True)
    if not enabled or seconds <= 0:
        return tqdm(iterable, **common, disable=True)
    # miniters=1: look at the clock after every update (cheap), print once `seconds` have passed.
    return _LogLines(
        iterable,
        **common,
        file=io.StringIO(),
        leave=False,
        mininterval=seconds,
        maxinterval=float("inf"),
        miniters=1,
    )
