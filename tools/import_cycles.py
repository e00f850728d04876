"""Print every import cycle between modules of qwbatch and flows (deferred imports included)."""

import sys

import grimp

g = grimp.build_graph("qwbatch", "flows", include_external_packages=False)
mods = sorted(g.modules)
edges = {m: set(g.find_modules_directly_imported_by(m)) for m in mods}
# a package __init__ importing its submodules and submodules importing the package are a
# package's own business only when they form a real loop, so count them like any other import
idx, low, on, st, out, n = {}, {}, set(), [], [], [0]
sys.setrecursionlimit(10000)


def sc(v):
    idx[v] = low[v] = n[0]
    n[0] += 1
    st.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in idx:
            sc(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1 or v in edges[v]:
            out.append(sorted(comp))


for m in mods:
    if m not in idx:
        sc(m)
for c in out:
    print("CYCLE:", " ".join(c))
print(f"{len(mods)} modules, {sum(map(len, edges.values()))} imports, {len(out)} cycles")
sys.exit(1 if out else 0)
