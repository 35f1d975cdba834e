#!/usr/bin/env python3
"""Deliberately broken deployments, to test deploy/check.sh itself (each must be rejected).

A case is deploy/ci/broken/NAME.yaml:

    base: full-values          # the chart's ci/<base>.yaml the case starts from
    values: {...}              # optional: values laid over the base (e.g. an unknown config key)
    patch:                     # optional: edits of the rendered output, kustomize-style
      - kind: Deployment       # the (first) document of this kind ...
        path: spec.template.spec.containers.0.livenessProbe.httpGet.path   # ... at this path
                               # (a segment [name=X] picks the list item named X)
        value: /healthz        # ... gets this value
    expect: "a substring of check.sh's error output"

  broken.py values CASE OUT.yaml            writes the case's values (an empty map if none)
  broken.py patch CASE RENDERED.yaml OUT.yaml
  broken.py field CASE KEY                  prints base or expect
"""
import sys

import yaml


def case(path):
    with open(path) as f:
        return yaml.safe_load(f)


def step(doc, key):
    """One path segment: a key, a list index, or `[name=X]` (the list item named X)."""
    if key.startswith("[name=") and key.endswith("]"):
        name = key[len("[name="):-1]
        found = [item for item in doc if item.get("name") == name]
        assert len(found) == 1, f"no single item named {name}"
        return found[0]
    return doc[int(key)] if key.isdigit() else doc[key]


def set_path(doc, path, value):
    keys = path.split(".")
    for k in keys[:-1]:
        doc = step(doc, k)
    last = keys[-1]
    doc[int(last) if last.isdigit() else last] = value


def main():
    cmd, path, *rest = sys.argv[1:]
    c = case(path)
    if cmd == "field":
        print(c[rest[0]])
    elif cmd == "values":
        with open(rest[0], "w") as f:
            yaml.safe_dump(c.get("values") or {}, f)
    elif cmd == "patch":
        with open(rest[0]) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for p in c.get("patch") or []:
            target = [d for d in docs if d["kind"] == p["kind"]]
            assert target, f"{path}: no {p['kind']} to patch"
            set_path(target[0], p["path"], p["value"])
        with open(rest[1], "w") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
