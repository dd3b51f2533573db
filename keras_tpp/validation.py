"""Argument checks shared by keras_tpp's public entry points.

Every function returns the value converted to a plain Python type, or raises a ValueError
whose message names the argument and says what was expected, so that a bad number is
reported where it is passed (before anything is built or modified) instead of surfacing
later as a NaN or a bare TypeError:

    coefficient = finite_float(coefficient, "gram_coefficient", minimum=0.0)
    interval = positive_int(interval, "interval")

Booleans are rejected wherever a number is expected (``True`` is an int in Python, but
``stabilize_steps=True`` is a mistake, not 1). NumPy scalars are accepted.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

__all__ = ["finite_float", "integer", "positive_int", "non_negative_int", "one_of"]


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def finite_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> float:
    """``value`` as a float; it must be a finite real number within the given bounds.

    Args:
        value: the argument to check.
        name: the argument's name, used in the error message.
        minimum, maximum: optional bounds, inclusive unless ``exclusive_minimum`` /
            ``exclusive_maximum``.
    Raises:
        ValueError: for a bool, a non-number (str, None, ...), NaN, ±inf or a value out
            of bounds.
    """
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name} must be a finite number, got {value!r} of type {type(value).__name__}.")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if minimum is not None:
        if result < minimum or (exclusive_minimum and result == minimum):
            relation = ">" if exclusive_minimum else ">="
            raise ValueError(f"{name} must be {relation} {minimum:g}, got {value!r}.")
    if maximum is not None:
        if result > maximum or (exclusive_maximum and result == maximum):
            relation = "<" if exclusive_maximum else "<="
            raise ValueError(f"{name} must be {relation} {maximum:g}, got {value!r}.")
    return result


def integer(value: Any, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an int; it must be an integer (not a bool, not a float) >= ``minimum``."""
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{name} must be an integer, got {value!r} of type {type(value).__name__}.")
    result = int(value)
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return result


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1 (bools and floats rejected)."""
    return integer(value, name, minimum=1)


def non_negative_int(value: Any, name: str) -> int:
    """``value`` as an int >= 0 (bools and floats rejected)."""
    return integer(value, name, minimum=0)


def one_of(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """``value`` unchanged if it is one of ``choices`` (compared with ==), else ValueError."""
    choices = tuple(choices)
    if _is_bool(value) or not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(
            f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}.")
    return value
