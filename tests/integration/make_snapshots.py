#!/usr/bin/python3
"""Generates tests/integration/snapshots/<Name>.schema.json from the
components of proto/openapi.yaml: self-contained JSON Schemas (draft
2020-12, every $ref inlined) of the response shapes that clients depend on.

The snapshots keep only what decides a shape — keys, required keys, types,
nullability, enums, patterns, formats and bounds — and drop descriptions and
examples, so a wording fix in the contract does not need a new snapshot but
any change of shape does. test_api_schema.py fails when a snapshot differs
from what this script would generate now (the contract changed without its
snapshot) and when a real response does not match its snapshot.

    /usr/bin/python3 tests/integration/make_snapshots.py          # rewrite
    /usr/bin/python3 tests/integration/make_snapshots.py --check  # exit 1 on drift

Standard library and python3-yaml only."""

import copy
import json
import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OPENAPI = os.path.join(ROOT, "proto", "openapi.yaml")
SNAPDIR = os.path.join(HERE, "snapshots")

# The components that have a committed snapshot.
SNAPSHOTS = ("Job", "JobSummary", "Stage", "Problem", "TaskArtifacts")

# Annotations, not shape.
DROP = {"description", "examples", "example", "summary", "externalDocs"}

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def load_openapi(path=OPENAPI):
    with open(path) as f:
        return yaml.safe_load(f)


def resolve_pointer(doc, ref):
    """The node a local reference ("#/components/schemas/Job") names."""
    if not ref.startswith("#/"):
        raise ValueError(f"only local references are supported, not {ref!r}")
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def inline(doc, node, strip=False, seen=()):
    """A copy of node with every $ref replaced by what it names (recursively).
    With strip, annotations (DROP) are left out. Cycles are an error: the
    contract's shapes are trees."""
    if isinstance(node, list):
        return [inline(doc, x, strip, seen) for x in node]
    if not isinstance(node, dict):
        return copy.deepcopy(node)
    if "$ref" in node:
        ref = node["$ref"]
        if ref in seen:
            raise ValueError(f"reference cycle through {ref}")
        target = inline(doc, resolve_pointer(doc, ref), strip, seen + (ref,))
        rest = {k: v for k, v in node.items() if k != "$ref"}
        if not rest:
            return target
        merged = {"allOf": [target]}
        merged.update(inline(doc, rest, strip, seen))
        return merged
    out = {}
    for k, v in node.items():
        if strip and k in DROP:
            continue
        if k in ("properties", "patternProperties", "$defs"):
            # a mapping of names to schemas: a property may be called "description"
            out[k] = {name: inline(doc, sub, strip, seen) for name, sub in v.items()}
        else:
            out[k] = inline(doc, v, strip, seen)
    return out


def component_schema(doc, name, strip=False):
    """components.schemas[name] as a standalone draft 2020-12 schema."""
    schema = inline(doc, {"$ref": f"#/components/schemas/{name}"}, strip)
    return {"$schema": DIALECT, "title": name, **schema}


def snapshot(doc, name):
    return component_schema(doc, name, strip=True)


def render(schema):
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def snapshot_path(name):
    return os.path.join(SNAPDIR, f"{name}.schema.json")


def main(argv):
    check = "--check" in argv[1:]
    doc = load_openapi()
    drift = []
    for name in SNAPSHOTS:
        text = render(snapshot(doc, name))
        path = snapshot_path(name)
        old = None
        if os.path.exists(path):
            with open(path) as f:
                old = f.read()
        if old == text:
            continue
        drift.append(os.path.relpath(path, ROOT))
        if not check:
            os.makedirs(SNAPDIR, exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    if check and drift:
        print("snapshots differ from proto/openapi.yaml: " + ", ".join(drift), file=sys.stderr)
        print("run /usr/bin/python3 tests/integration/make_snapshots.py and review the diff",
              file=sys.stderr)
        return 1
    for p in drift:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
