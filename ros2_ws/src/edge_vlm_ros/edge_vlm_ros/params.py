"""ROS parameters of a node from ``edge_vlm.params.NODE_PARAMS`` (the single source of truth).

:func:`declare_from_spec` declares them (descriptions, ranges, read-only flags) and returns the
validated values; :func:`add_param_validation` rejects invalid runtime changes with a reason.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)

from edge_vlm.params import NODE_PARAMS, ParamSpec, resolve


class ParameterError(ValueError):
    """An invalid parameter value (reported as a clean error, exit code 2)."""


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    text = spec.description
    if spec.choices:
        text += f" Choices: {', '.join(map(str, spec.choices))}."
    d = ParameterDescriptor(description=text, read_only=bool(spec.read_only))
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(map(str, spec.choices))
    kind = type(spec.default)
    if (spec.min_value is not None or spec.max_value is not None) and kind in (int, float):
        if kind is int:
            lo = int(spec.min_value) if spec.min_value is not None else -(2 ** 63)
            hi = int(spec.max_value) if spec.max_value is not None else 2 ** 63 - 1
            d.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=0)]
        else:
            lo = float(spec.min_value) if spec.min_value is not None else -sys.float_info.max
            hi = float(spec.max_value) if spec.max_value is not None else sys.float_info.max
            d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    return d


def _declare(node, spec: ParamSpec, as_text: bool) -> Any:
    """Declare one parameter; its value (a number given for a text parameter becomes text)."""
    desc = _descriptor(spec)
    if as_text:
        desc.dynamic_typing = True
    value = node.declare_parameter(spec.name, spec.default, desc).value
    if as_text and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def declare_from_spec(node, node_name: str, as_text: tuple[str, ...] = ()) -> dict[str, Any]:
    """Declare every parameter of ``NODE_PARAMS[node_name]`` on ``node``; return the validated
    values.

    Raises :class:`ParameterError` with a readable message for a value of the
    wrong type, out of range or not among the choices (from the command line
    or a params file). String parameters named in ``as_text`` also accept a
    number on the command line (``-p device:=0`` is the text "0").
    """
    values = {}
    for spec in NODE_PARAMS[node_name]:
        try:
            values[spec.name] = _declare(node, spec, spec.name in as_text)
        except Exception as exc:  # InvalidParameterTypeException / InvalidParameterValueException
            raise ParameterError(f"invalid value for parameter '{spec.name}' of {node_name}: "
                                 f"{type(exc).__name__}: {exc}") from None
    try:
        return resolve(node_name, values)
    except ValueError as exc:
        raise ParameterError(str(exc)) from None


def add_param_validation(node, node_name: str,
                         on_change: Callable[[dict[str, Any]], None] | None = None) -> Callable:
    """Register an on-set-parameters callback validating changes against the spec.

    Invalid values are rejected with the spec's reason; valid ones are passed
    to ``on_change({name: value})`` (called before rclpy stores them; effects
    apply from the next frame). Returns the registered callback.
    """
    specs = {s.name: s for s in NODE_PARAMS[node_name]}

    def callback(params) -> SetParametersResult:
        changed = {}
        for p in params:
            spec = specs.get(p.name)
            if spec is None:
                continue  # parameters not in the spec (e.g. use_sim_time) are rclpy's business
            if spec.read_only:
                return SetParametersResult(successful=False,
                                           reason=f"parameter '{p.name}' is read-only")
            try:
                changed[p.name] = spec.validate(p.value)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        if changed and on_change is not None:
            try:
                on_change(changed)
            except Exception as exc:  # never let a callback kill the node
                return SetParametersResult(successful=False,
                                           reason=f"{type(exc).__name__}: {exc}")
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(callback)
    return callback
