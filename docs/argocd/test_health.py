#!/usr/bin/env python3
"""Runs docs/argocd-health.lua on every case of health_test.yaml, as Argo CD does: the
object in the global `obj`, the script's return value is the health. Each case runs on Lua
5.1 (Argo CD's gopher-lua implements 5.1) and on Lua 5.4, through lupa.

Also checks that argocd-cm.yaml embeds exactly docs/argocd-health.lua.
"""
import importlib
import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "argocd-health.lua")
RUNTIMES = ["lua51", "lua54"]
KEY = "resource.customizations.health.milvusbackfill.io_Backfill"


def to_lua(lua, value):
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def run(runtime, script, obj):
    lua = importlib.import_module("lupa." + runtime).LuaRuntime(unpack_returned_tuples=True)
    # Argo CD's sandbox: no os/io; make sure the script does not depend on them.
    lua.execute("os = nil; io = nil; require = nil; dofile = nil; loadfile = nil")
    lua.globals().obj = to_lua(lua, obj)
    hs = lua.execute(script)
    return {"status": hs["status"], "message": hs["message"]}


CM_HEADER = """\
# Merge into Argo CD's argocd-cm ConfigMap (namespace argocd), e.g.
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file docs/argocd/argocd-cm.yaml
# Generated from docs/argocd-health.lua by `docs/argocd/test.sh --write-cm`; do not edit.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
  %s: |
""" % KEY


def write_cm(script):
    body = "".join(("    " + line if line.strip() else "\n") for line in script.splitlines(keepends=True))
    with open(os.path.join(HERE, "argocd-cm.yaml"), "w") as f:
        f.write(CM_HEADER + body)
    print("wrote argocd-cm.yaml")


def main():
    script = open(SCRIPT).read()
    if "--write-cm" in sys.argv[1:]:
        write_cm(script)
    cases = yaml.safe_load(open(os.path.join(HERE, "health_test.yaml")))["tests"]
    failures = 0
    for case in cases:
        obj = yaml.safe_load(open(os.path.join(HERE, case["inputPath"])))
        want = case["healthStatus"]
        for rt in RUNTIMES:
            try:
                got = run(rt, script, obj)
            except Exception as e:  # a Lua error is a failure, not a crash of the runner
                got = {"status": "ERROR", "message": str(e)}
            ok = got["status"] == want["status"] and got["message"] == want.get("message", got["message"])
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {rt} {case['inputPath']}: {got['status']}: {got['message']}")
            if not ok:
                print(f"     want {want['status']}: {want.get('message')}")
    cm = yaml.safe_load(open(os.path.join(HERE, "argocd-cm.yaml")))
    embedded = cm["data"][KEY]
    ok = embedded.strip() == script.strip()
    failures += not ok
    print(f"{'ok  ' if ok else 'FAIL'} argocd-cm.yaml embeds docs/argocd-health.lua under {KEY}")
    n = len(cases) * len(RUNTIMES) + 1
    print(f"{n - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


main()
