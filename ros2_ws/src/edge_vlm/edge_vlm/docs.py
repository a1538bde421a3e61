"""Markdown for the README, generated from the single sources of truth (tests check it is in
sync)."""
from __future__ import annotations

from edge_vlm.params import NODE_PARAMS


def param_table(node: str) -> str:
    """The README table of ``node``'s parameters (name, type, default, description)."""
    rows = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for p in NODE_PARAMS[node]:
        default = f'"{p.default}"' if isinstance(p.default, str) else p.default
        extra = " Read-only." if p.read_only else ""
        if p.choices:
            extra += " One of " + ", ".join(f"`{c}`" for c in p.choices) + "."
        rows.append(f"| `{p.name}` | {p.type_name} | `{default}` | {p.description}{extra} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m edge_vlm.docs  -> print all tables
    for n in NODE_PARAMS:
        print(f"### {n}\n\n{param_table(n)}\n")
