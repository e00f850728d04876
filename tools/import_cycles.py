"""Print every import cycle between modules of qwbatch and flows; exit 1 if there is one.

``python tools/import_cycles.py`` (run by ``make lint``). grimp reads every import statement,
those inside functions included, so a circle hidden by a deferred import shows here. A
package's ``__init__`` counts as a module like any other. Cycles are the strongly connected
components of the import graph (Tarjan's algorithm, iterative so deep chains cannot overflow).
"""

from __future__ import annotations

import sys

import grimp


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges[target]))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in edges[node]:
                    found.append(sorted(group))
    return found


def main() -> int:
    graph = grimp.build_graph("qwbatch", "flows", include_external_packages=False)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    found = cycles(edges)
    for group in found:
        print("CYCLE:", " ".join(group))
    imports = sum(len(targets) for targets in edges.values())
    print(f"{len(edges)} modules, {imports} imports, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
