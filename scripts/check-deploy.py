#!/usr/bin/env python3
"""Checks the files under deploy/ that no compiler checks. Offline.

1. Every Kubernetes manifest validates against the Kubernetes API schemas
   shipped in the PyPI package kubernetes-validate (strict: unknown fields are
   errors), and the Deployment keeps the properties docs/operations.md
   promises: a pinned image, probes on /health/live and /health/ready, a
   locked-down securityContext, requests and limits, anti-affinity, a
   PodDisruptionBudget, and a termination grace period that covers the
   worst-case shutdown computed from leader-core's defaults.
2. Every alert rule has a runbook_url whose anchor is a heading of
   docs/operations.md, and so has every link inside that file.
3. The checks themselves: broken copies of the manifest must be refused, so a
   checker that lets everything through fails here.

Run from the workspace root: scripts/check-deploy.py (scripts/test.sh does).
"""

import copy
import glob
import re
import sys

import kubernetes_validate
import yaml

MANIFESTS = sorted(glob.glob("deploy/kubernetes/*.yaml"))
RULES = "deploy/prometheus/leader-election-rules.yml"
RUNBOOK = "docs/operations.md"
CONFIG_RS = "leader-core/src/config.rs"


def load_manifests():
    docs = []
    for path in MANIFESTS:
        with open(path, encoding="utf-8") as f:
            docs += [(path, d) for d in yaml.safe_load_all(f) if d]
    return docs


def schema_errors(doc):
    """The schema error for one resource, or None."""
    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        return None
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return f"{path}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return f"no schema: {e}"


def defaults():
    """(lease s, clock drift, release timeout s) from leader-core's defaults."""
    with open(CONFIG_RS, encoding="utf-8") as f:
        src = f.read()
    lease = re.search(r"Preset::Production => \(s\((\d+)\)", src)
    drift = re.search(r"clock_drift: ([0-9.]+),", src)
    release = re.search(r"release_timeout: Duration::from_secs\((\d+)\)", src)
    if not (lease and drift and release):
        sys.exit(f"check-deploy: cannot find the defaults in {CONFIG_RS}; update this script")
    return float(lease.group(1)), float(drift.group(1)), float(release.group(1))


def policy_errors(docs):
    """What the Deployment and its PodDisruptionBudget must keep."""
    errors = []
    by_kind = {}
    for _, d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        return [f"expected one Deployment, found {len(deployments)}"]
    dep = deployments[0]
    spec = dep["spec"]["template"]["spec"]
    app = dep["spec"]["selector"]["matchLabels"]
    pod_sc = spec.get("securityContext", {})
    if pod_sc.get("runAsNonRoot") is not True:
        errors.append("pod securityContext.runAsNonRoot must be true")
    if "podAntiAffinity" not in spec.get("affinity", {}):
        errors.append("the pods need a podAntiAffinity")
    if not any(
        p.get("spec", {}).get("selector", {}).get("matchLabels") == app
        for p in by_kind.get("PodDisruptionBudget", [])
    ):
        errors.append(f"no PodDisruptionBudget selects {app}")

    lease, drift, release = defaults()
    for c in spec["containers"]:
        name = c["name"]
        image = c.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if "@sha256:" not in image and (not tag or tag == "latest"):
            errors.append(f"{name}: image {image!r} must be pinned (a version tag or a digest)")
        sc = c.get("securityContext", {})
        for key, want in [
            ("allowPrivilegeEscalation", False),
            ("readOnlyRootFilesystem", True),
        ]:
            if sc.get(key) is not want:
                errors.append(f"{name}: securityContext.{key} must be {want}")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            errors.append(f"{name}: securityContext.capabilities.drop must hold ALL")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in res.get(part, {}):
                    errors.append(f"{name}: resources.{part}.{what} missing")
        for probe, path in [("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")]:
            got = c.get(probe, {}).get("httpGet", {}).get("path")
            if got != path:
                errors.append(f"{name}: {probe} must GET {path}, not {got!r}")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        lease_here = float(env.get("LeaderElection__LeaseDurationSeconds") or lease)
        drift_here = float(env.get("LeaderElection__ClockDrift") or drift)
        release_here = float(env.get("LeaderElection__ReleaseTimeoutSeconds") or release)
        worst = lease_here * (1 - drift_here) + release_here
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace < worst:
            errors.append(
                f"terminationGracePeriodSeconds {grace} < worst-case shutdown {worst:.1f} s "
                f"(lease {lease_here} s * (1 - drift {drift_here}) + release timeout {release_here} s)"
            )
    return errors


def heading_anchors(markdown):
    """GitHub's anchors for the headings of a Markdown text."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def runbook_errors():
    errors = []
    with open(RUNBOOK, encoding="utf-8") as f:
        text = f.read()
    anchors = heading_anchors(text)
    for link in sorted(set(re.findall(r"\]\(#([^)]+)\)", text))):
        if link not in anchors:
            errors.append(f"{RUNBOOK}: link to #{link}, but no heading has that anchor")
    with open(RULES, encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            url = rule.get("annotations", {}).get("runbook_url", "")
            anchor = url.split(f"{RUNBOOK}#", 1)[1] if f"{RUNBOOK}#" in url else None
            if anchor is None:
                errors.append(f"{rule['alert']}: runbook_url {url!r} does not point into {RUNBOOK}")
            elif anchor not in anchors:
                errors.append(f"{rule['alert']}: {RUNBOOK} has no heading for #{anchor}")
    return errors


def self_test(docs):
    """Broken copies of the manifests must be refused."""
    errors = []
    deployment = next(d for _, d in docs if d["kind"] == "Deployment")
    container = lambda d: d["spec"]["template"]["spec"]["containers"][0]  # noqa: E731

    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "three"
    if schema_errors(broken) is None:
        errors.append("self-test: a Deployment with replicas: \"three\" passed the schema check")
    broken = copy.deepcopy(deployment)
    container(broken)["ports"][0]["contianerPort"] = container(broken)["ports"][0].pop("containerPort")
    if schema_errors(broken) is None:
        errors.append("self-test: a misspelt field (contianerPort) passed the strict schema check")
    broken = copy.deepcopy(deployment)
    container(broken)["image"] = "leader/server:latest"
    if not policy_errors([("broken", broken)] + [("", d) for _, d in docs if d["kind"] != "Deployment"]):
        errors.append("self-test: image :latest passed the policy check")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    if not policy_errors([("broken", broken)] + [("", d) for _, d in docs if d["kind"] != "Deployment"]):
        errors.append("self-test: a 30 s grace period passed the policy check")
    return errors


def main():
    if not MANIFESTS:
        sys.exit("check-deploy: no manifests under deploy/kubernetes (run from the workspace root)")
    docs = load_manifests()
    errors = []
    for path, doc in docs:
        err = schema_errors(doc)
        if err:
            errors.append(f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {err}")
    errors += policy_errors(docs)
    errors += runbook_errors()
    errors += self_test(docs)
    for e in errors:
        print(f"check-deploy: {e}", file=sys.stderr)
    if errors:
        return 1
    print(
        f"check-deploy: {len(docs)} Kubernetes resources valid (schemas of Kubernetes "
        f"{kubernetes_validate.latest_version()}, strict), policy kept, every runbook_url "
        f"anchor found in {RUNBOOK}, broken copies refused"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
