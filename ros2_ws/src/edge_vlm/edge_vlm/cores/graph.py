"""The node graph file (``graph.yaml``) and the resolution of node parameters: one rule for the
launch file, the local runner, the demo and the offline evaluation.

``graph.yaml`` lists the nodes (name, package, executable, namespace, parameters, remappings),
the input topics and a namespace. Parameters are validated against
:data:`edge_vlm.params.NODE_PARAMS` (a node's package name is its key there). Overrides:
``{"name": v}`` applies to every node of the graph that has ``name`` (a name no node has
raises), ``{"node.name": v}`` or ``{"node": {"name": v}}`` to one node (by name or package).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

from edge_vlm.params import NODE_PARAMS, resolve
from edge_vlm.paths import repo_root

#: the package that installs the launch file and graph.yaml (its share directory)
BRINGUP = "edge_vlm_bringup"
#: node-relative input topic names -> graph.yaml ``inputs`` key
INPUT_TOPICS = {"event_camera/events": "events", "camera/image_raw": "image"}
#: parameters the nodes must agree on (frames and tokens)
SHARED_GRID = ("frame_period_ms", "model_width", "model_height", "patch_size")


@dataclass
class NodeSpec:
    name: str
    package: str
    executable: str
    namespace: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: dict[str, str] = field(default_factory=dict)


@dataclass
class GraphFile:
    path: str
    inputs: dict[str, str]
    namespace: str
    nodes: list[dict]


def default_graph_path() -> str:
    """``EDGE_VLM_GRAPH`` when set, else the checkout's ``config/graph.yaml`` of the bringup
    package, else the installed bringup package's share directory."""
    env = os.environ.get("EDGE_VLM_GRAPH", "")
    if env:
        return env
    candidates = [repo_root() / "ros2_ws" / "src" / BRINGUP / "config" / "graph.yaml"]
    try:
        candidates.append(Path(get_package_share_directory(BRINGUP)) / "config" / "graph.yaml")
    except (PackageNotFoundError, ValueError, KeyError, OSError):
        pass
    for c in candidates:
        if c.is_file():
            return str(c)
    return str(candidates[0])


def _yaml_error(path: str, exc: yaml.YAMLError) -> ValueError:
    """A YAML syntax error as one line: the problem and where it is."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return ValueError(f"{path}: not valid YAML: {what}{where}")


def _mapping(value: Any, path: str, what: str) -> dict:
    """``value`` when it is a mapping (None: empty), else ValueError naming ``what``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {what} must be a mapping, not {type(value).__name__}")
    return value


def _check_nodes(nodes: Any, path: str) -> list[dict]:
    """The ``nodes`` list: mappings with a ``package`` name and mapping-valued
    ``parameters`` / ``remappings``; ValueError naming the first bad entry."""
    if nodes is None:
        return []
    if not isinstance(nodes, list):
        raise ValueError(f"{path}: 'nodes' must be a list of node entries, not "
                         f"{type(nodes).__name__}")
    for i, entry in enumerate(nodes):
        where = f"node entry {i + 1}"
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {where} must be a mapping (name, package, executable, "
                             f"parameters, ...), not {type(entry).__name__}")
        if not isinstance(entry.get("package"), str) or not entry["package"]:
            raise ValueError(f"{path}: {where} has no 'package' name")
        for key in ("parameters", "remappings"):
            _mapping(entry.get(key), path, f"{where} '{key}'")
        for key in ("name", "executable", "namespace"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise ValueError(f"{path}: {where} '{key}' must be a string")
    return nodes


def read_graph(path: str | None = None) -> GraphFile:
    """The graph file ``path`` (None: :func:`default_graph_path`). Raises OSError, or
    ValueError (one line) for a file that is not valid YAML or not shaped like a graph file."""
    path = path or default_graph_path()
    with open(path) as fh:
        try:
            doc = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise _yaml_error(str(path), exc) from None
    doc = _mapping(doc, str(path), "the top level (keys: nodes, inputs, namespace)")
    inputs = {str(k): str(v) for k, v in _mapping(doc.get("inputs"), str(path),
                                                  "'inputs'").items() if v}
    return GraphFile(str(path), inputs, str(doc.get("namespace") or ""),
                     list(_check_nodes(doc.get("nodes"), str(path))))


def _node_overrides(name: str, pkg: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``overrides`` that apply to node ``name`` of package ``pkg``."""
    known = {p.name for p in NODE_PARAMS[pkg]}
    out: dict[str, Any] = {}
    for k, v in overrides.items():
        if isinstance(v, dict) and k in (name, pkg):
            out.update(v)
        elif "." in k:
            target, _, pname = k.partition(".")
            if target in (name, pkg):
                out[pname] = v
        elif not isinstance(v, dict) and k in known:
            out[k] = v
    return out


def _check_overrides(overrides: dict[str, Any], specs: list[NodeSpec], where: str) -> None:
    """An override naming no node of the graph, or a parameter no node has, raises ValueError."""
    names = {s.name for s in specs} | {s.package for s in specs}
    all_params = {p.name for s in specs for p in NODE_PARAMS[s.package]}
    for k, v in overrides.items():
        target = k.partition(".")[0] if "." in k else (k if isinstance(v, dict) else None)
        if target is not None and target not in names:
            raise ValueError(f"override '{k}': no node '{target}' in {where} (nodes: "
                             f"{sorted(names)})")
        if target is None and k not in all_params:
            raise ValueError(f"unknown parameter '{k}': no node of {where} has it")


def _spec(entry: dict, graph: GraphFile, overrides: dict[str, Any], topics: dict[str, str],
          ns_all: str) -> NodeSpec:
    pkg = entry["package"]
    if pkg not in NODE_PARAMS:
        raise ValueError(f"{graph.path}: node package '{pkg}' has no parameter spec in "
                         "edge_vlm.params")
    name = entry.get("name", pkg)
    params = dict(entry.get("parameters") or {})
    params.update(_node_overrides(name, pkg, overrides))
    validated = resolve(pkg, params)          # raises ValueError with a clear message
    params = {k: validated[k] for k in params}
    remaps = {frm: topics[key] for frm, key in INPUT_TOPICS.items() if topics.get(key)}
    remaps.update({str(k): str(v) for k, v in (entry.get("remappings") or {}).items()})
    parts = (ns_all, entry.get("namespace") or "")
    ns = "/".join(s.strip("/") for s in parts if s and s.strip("/"))
    return NodeSpec(name, pkg, entry.get("executable", pkg), "/" + ns if ns else "", params,
                    remaps)


def load_graph(path: str | None = None, overrides: dict[str, Any] | None = None,
               namespace: str | None = None, inputs: dict[str,
                                                          str] | None = None) -> list[NodeSpec]:
    """Read a graph file -> validated node specs (see the module doc on ``overrides``).

    ``namespace`` replaces the graph's namespace; ``inputs`` its input topics. Unknown names,
    bad values and overrides for nodes the graph does not have raise ValueError.
    """
    graph = read_graph(path)
    topics = {**graph.inputs, **(inputs or {})}
    ns_all = graph.namespace if namespace is None else namespace
    overrides = dict(overrides or {})
    specs = [_spec(entry, graph, overrides, topics, ns_all) for entry in graph.nodes]
    if not specs:
        raise ValueError(f"{graph.path}: no nodes")
    _check_overrides(overrides, specs, graph.path)
    return specs


@dataclass
class ReplayParams:
    """Resolved parameters of the two nodes an offline replay runs, and the graph's inputs."""

    perception: dict[str, Any]
    captioner: dict[str, Any]
    inputs: dict[str, str]


def replay_params(overrides: dict | None = None, checkpoint: str = "",
                  graph: str | None = None) -> ReplayParams:
    """sttf_perception's and vlm_captioner's parameters as the graph starts them.

    ``overrides`` as :func:`load_graph`'s; ``checkpoint`` (non-empty) sets both nodes'
    checkpoint; ``graph``: graph file (None = :func:`default_graph_path` when it exists,
    '' = the spec defaults only; a missing file named here raises OSError). The two nodes
    must agree on :data:`SHARED_GRID`.
    """
    nodes = ("sttf_perception", "vlm_captioner")
    path = default_graph_path() if graph is None else graph
    if graph or (path and os.path.isfile(path)):    # a graph named by the caller must exist
        g = read_graph(path)
        entries = [e for e in g.nodes if e.get("package") in nodes]
        inputs = g.inputs
    else:
        g = GraphFile(path or "(spec defaults)", {}, "", [])
        entries, inputs = [{"package": n} for n in nodes], {}
    overrides = dict(overrides or {})
    if checkpoint:
        overrides.update({f"{n}.checkpoint": str(checkpoint) for n in nodes})
    specs = [_spec(e, g, overrides, {}, "") for e in entries if e.get("package") in nodes]
    _check_overrides(overrides, specs, g.path)
    by_pkg = {s.package: resolve(s.package, s.parameters) for s in specs}
    perc = by_pkg.get("sttf_perception") or resolve("sttf_perception", {})
    capt = by_pkg.get("vlm_captioner") or resolve("vlm_captioner", {})
    for k in SHARED_GRID:
        if perc[k] != capt[k]:
            raise ValueError(f"'{k}' differs between sttf_perception ({perc[k]}) and "
                             f"vlm_captioner ({capt[k]}): the nodes would not agree on "
                             "frames/tokens")
    return ReplayParams(perc, capt, inputs)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``[node.]name=value`` strings -> overrides (values parsed as YAML scalars; a string
    parameter keeps the text as typed, e.g. a checkpoint path like ``1.pt`` or ``007``)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"bad parameter '{item}': expected [node.]name=value")
        key, _, text = item.partition("=")
        key = key.strip().replace(":", "")
        pname = key.rpartition(".")[2]
        string_param = any(p.name == pname and isinstance(p.default, str)
                           for specs in NODE_PARAMS.values() for p in specs)
        out[key] = text if string_param else (yaml.safe_load(text) if text.strip() else "")
    return out


def overrides_from_yaml(text: str, what: str = "params") -> dict[str, Any]:
    """Overrides written as one YAML mapping (``{compute_budget: 0.5, vlm_captioner.decoding:
    beam}``: the launch file's ``params:=`` argument, ``edge_vlm_graph --params``); empty text:
    none. ValueError (one line) for text that is not a YAML mapping."""
    if not text.strip():
        return {}
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{what}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{what}: expected a YAML mapping such as '{{compute_budget: 0.5}}', "
                         f"not {type(doc).__name__}")
    return {str(k): v for k, v in doc.items()}


def overrides_to_yaml(overrides: dict[str, Any]) -> str:
    """The inverse of :func:`overrides_from_yaml`: one line of YAML."""
    return yaml.safe_dump(dict(overrides), default_flow_style=True, width=10**6).strip()
