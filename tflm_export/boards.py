"""Microcontroller boards: the memory budgets and core that `emulate` checks a model against.

A board offers a tensor-arena budget (SRAM) and a flash budget. A model fits when

* the measured tensor arena  <= ``sram_bytes - ram_reserved_bytes``, and
* model bytes + runtime code <= ``flash_bytes - flash_reserved_bytes``.

``ram_reserved_bytes`` / ``flash_reserved_bytes`` stand for what the rest of the
firmware needs (stack, RTOS, application, bootloader); the built-in boards
reserve nothing, so the check is the optimistic bound. Make a copy with your
own reserve, e.g. ``BOARDS["nano33ble"].replace(ram_reserved_bytes=64 * 1024)``.

Built-in boards (figures from the vendors' data sheets, see docs/tflm_export.md):

================  ==========  =========  ===========  ========
name              core        clock MHz  SRAM         flash
================  ==========  =========  ===========  ========
nano33ble         cortex-m4   64         256 KiB      1 MiB
nucleo-f746zg     cortex-m7   216        320 KiB      1 MiB
nucleo-l4r5zi     cortex-m4   120        640 KiB      2 MiB
nucleo-f411re     cortex-m4   100        128 KiB      512 KiB
stm32h743         cortex-m7   480        1 MiB        2 MiB
================  ==========  =========  ===========  ========

Example::

    import tflm_export
    tiny = tflm_export.Board("my-m0", core="cortex-m0+", clock_mhz=48,
                             sram_bytes=32 * 1024, flash_bytes=256 * 1024)
    run = tflm_export.emulate(artifact, board=tiny)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tflm_export.errors import InvalidArgumentError

__all__ = ["KIB", "MIB", "CORES", "Board", "BOARDS", "get_board"]

KIB = 1024
MIB = 1024 * 1024

CORES = ("cortex-m0+", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55")


@dataclass(frozen=True)
class Board:
    """A microcontroller board: core, clock and memory budgets.

    Args:
        name: label used in reports and error messages.
        core: one of ``CORES``; selects the cycle model in :mod:`tflm_export.cycles`.
        clock_mhz: core clock used to turn cycles into milliseconds.
        sram_bytes: on-chip SRAM available to the tensor arena.
        flash_bytes: flash available to model data and code.
        ram_reserved_bytes: SRAM kept back for the rest of the firmware.
        flash_reserved_bytes: flash kept back for the rest of the firmware.
        description: free text (MCU part number, notes).

    Example::

        b = Board("custom", core="cortex-m4", clock_mhz=80,
                  sram_bytes=96 * 1024, flash_bytes=256 * 1024)
        b.arena_budget, b.flash_budget     # (98304, 262144)
    """

    name: str
    core: str
    clock_mhz: float
    sram_bytes: int
    flash_bytes: int
    ram_reserved_bytes: int = 0
    flash_reserved_bytes: int = 0
    description: str = ""

    def __post_init__(self):
        if self.core not in CORES:
            raise InvalidArgumentError(f"Board {self.name!r}: unknown core {self.core!r}; choose one of {CORES}")
        if not self.clock_mhz or self.clock_mhz <= 0:
            raise InvalidArgumentError(f"Board {self.name!r}: clock_mhz must be > 0, got {self.clock_mhz!r}")
        for field in ("sram_bytes", "flash_bytes", "ram_reserved_bytes", "flash_reserved_bytes"):
            v = getattr(self, field)
            if int(v) != v or v < 0:
                raise InvalidArgumentError(f"Board {self.name!r}: {field} must be a non-negative integer, got {v!r}")
        if self.ram_reserved_bytes >= self.sram_bytes:
            raise InvalidArgumentError(f"Board {self.name!r}: ram_reserved_bytes leaves no SRAM for the arena")
        if self.flash_reserved_bytes >= self.flash_bytes:
            raise InvalidArgumentError(f"Board {self.name!r}: flash_reserved_bytes leaves no flash for the model")

    @property
    def arena_budget(self) -> int:
        """Bytes of SRAM the tensor arena may take."""
        return int(self.sram_bytes - self.ram_reserved_bytes)

    @property
    def flash_budget(self) -> int:
        """Bytes of flash the model data plus TFLM runtime code may take."""
        return int(self.flash_bytes - self.flash_reserved_bytes)

    def replace(self, **changes) -> "Board":
        """A copy with some fields changed (e.g. a reserve for the application)."""
        return dataclasses.replace(self, **changes)


BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board("nano33ble", "cortex-m4", 64, 256 * KIB, 1 * MIB,
              description="Arduino Nano 33 BLE Sense, nRF52840 (Cortex-M4F)"),
        Board("nucleo-f746zg", "cortex-m7", 216, 320 * KIB, 1 * MIB,
              description="ST Nucleo-144 STM32F746ZG (Cortex-M7)"),
        Board("nucleo-l4r5zi", "cortex-m4", 120, 640 * KIB, 2 * MIB,
              description="ST Nucleo-144 STM32L4R5ZI (Cortex-M4F), MLPerf Tiny reference board"),
        Board("nucleo-f411re", "cortex-m4", 100, 128 * KIB, 512 * KIB,
              description="ST Nucleo-64 STM32F411RE (Cortex-M4F)"),
        Board("stm32h743", "cortex-m7", 480, 1 * MIB, 2 * MIB,
              description="STM32H743 (Cortex-M7); SRAM counted over all banks"),
    )
}


def get_board(board) -> Board:
    """Resolve a board name (case-insensitive) or pass a :class:`Board` through."""
    if isinstance(board, Board):
        return board
    if isinstance(board, str):
        key = board.strip().lower()
        if key in BOARDS:
            return BOARDS[key]
        import difflib

        close = difflib.get_close_matches(key, list(BOARDS), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InvalidArgumentError(f"unknown board {board!r}; {hint}built-in boards are {sorted(BOARDS)}, "
                                   "or pass tflm_export.Board(...)")
    raise TypeError(f"board must be a name or a tflm_export.Board, got {type(board).__name__}")
