#!/usr/bin/env python3
"""Checks deploy/k8s/base: renders it, validates every object against the
Kubernetes schemas (kubernetes-validate), and checks what must agree between
the objects and with the node: seed and advertised names against the
headless Service and the StatefulSet, ports against the node's flags,
probe paths against a running node, the security context against the
image's user, the certificate files against the Secret that
deploy/k8s/make-certs prints.

    python3 deploy/tests/check_k8s.py --starling target/debug/starling

Rendering uses `kubectl kustomize` where kubectl is installed; otherwise the
base's resources are read as its kustomization lists them (the base has no
patches, generators or transformers, which this checks first). Run by
mesh/tests/deploy.rs.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import kubernetes_validate
import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
BASE = os.path.join(ROOT, "deploy", "k8s", "base")
# The oldest Kubernetes release the manifests are meant for, and the newest
# schemas kubernetes-validate holds.
VERSIONS = ["1.29", kubernetes_validate.utils.latest_version()]
# What the base may hold besides its resources: anything else would make
# reading the resources by hand a different rendering from kustomize's.
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources"}

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def render():
    with open(os.path.join(BASE, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    extra = set(kustomization) - KUSTOMIZATION_KEYS
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", BASE], check=True,
                             capture_output=True, text=True).stdout
        print("rendered with kubectl kustomize")
        return list(yaml.safe_load_all(out))
    if extra:
        sys.exit(f"no kubectl, and the kustomization uses {sorted(extra)}: "
                 "reading its resources by hand would not render it")
    docs = []
    for resource in kustomization["resources"]:
        with open(os.path.join(BASE, resource)) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    print("rendered by reading the kustomization's resources (no kubectl)")
    return docs


def validate(docs):
    for doc in docs:
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                check(False, f"{doc['kind']}/{doc['metadata']['name']} "
                             f"(Kubernetes {version}): {error.message} at "
                             f"{'/'.join(map(str, error.path))}")
    print(f"validated {len(docs)} objects against Kubernetes {', '.join(VERSIONS)}")


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    check(len(found) == 1, f"one {kind} expected, found {len(found)}")
    return found[0]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def host_port(value):
    host, _, port = value.rpartition(":")
    return host, int(port)


def start_node(starling):
    """A node on free loopback ports; returns (process, http address)."""
    node = subprocess.Popen(
        [starling, "node", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
         "--nats-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("STARLING_")})
    for line in node.stdout:
        if line.startswith("http http://"):
            return node, line.split("http://", 1)[1].strip()
    node.kill()
    sys.exit("the node did not print its HTTP address")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--starling", required=True, help="the starling binary")
    args = parser.parse_args()

    docs = render()
    validate(docs)

    sts = one(docs, "StatefulSet")
    services = [d for d in docs if d["kind"] == "Service"]
    pdb = one(docs, "PodDisruptionBudget")
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p for p in container["ports"]}
    replicas = sts["spec"]["replicas"]

    check(replicas == 3, f"3 replicas, not {replicas}")
    check(selects(sts["spec"]["selector"]["matchLabels"], labels),
          "the StatefulSet's selector matches its pods")
    check(selects(pdb["spec"]["selector"]["matchLabels"], labels),
          "the PodDisruptionBudget selects the pods")

    # The headless Service gives the names the nodes dial.
    headless = [s for s in services if s["metadata"]["name"] == sts["spec"]["serviceName"]]
    check(len(headless) == 1, "the StatefulSet's serviceName is a Service of the base")
    headless = headless[0]
    check(headless["spec"].get("clusterIP") == "None", "the mesh Service is headless")
    check(headless["spec"].get("publishNotReadyAddresses") is True,
          "pods are named in DNS before they are ready (nodes find each other while starting)")
    check(selects(headless["spec"]["selector"], labels), "the mesh Service selects the pods")
    domain = headless["metadata"]["name"]
    _, mesh_port = host_port(env["STARLING_CLUSTER_LISTEN"])
    expected = [f"{sts['metadata']['name']}-{i}.{domain}:{mesh_port}" for i in range(replicas)]
    check(env["STARLING_SEEDS"].split(",") == expected,
          f"STARLING_SEEDS names every pod through the headless Service: {expected}")
    check(env["STARLING_CLUSTER_ADVERTISE"] == f"$(POD_NAME).{domain}:{mesh_port}",
          "each pod advertises its own name through the headless Service")
    check(env["STARLING_NAME"] == "$(POD_NAME)", "the node is named after its pod (its certificate)")
    pod_name = next(e for e in container["env"] if e["name"] == "POD_NAME")
    check(pod_name.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          "POD_NAME is the pod's name")
    names = [e["name"] for e in container["env"]]
    check(names.index("POD_NAME") == 0, "POD_NAME comes first: $(POD_NAME) expands only after it")

    # Ports: the node's flags, the container's ports, the Services' targets.
    for flag, name, protocol in [("STARLING_LISTEN", "client", "TCP"),
                                 ("STARLING_CLUSTER_LISTEN", "mesh", "UDP"),
                                 ("STARLING_HTTP", "http", "TCP")]:
        host, port = host_port(env[flag])
        check(host == "0.0.0.0", f"{flag} listens on every interface of the pod")
        check(name in ports and ports[name]["containerPort"] == port
              and ports[name].get("protocol", "TCP") == protocol,
              f"container port {name} is {protocol} {port}, as {flag}")
    for service in services:
        for port in service["spec"]["ports"]:
            target = ports.get(port["targetPort"])
            check(target is not None and target.get("protocol", "TCP") == port.get("protocol", "TCP"),
                  f"Service {service['metadata']['name']} port {port['name']} targets a container port")
    annotations = pod["metadata"]["annotations"]
    check(annotations.get("prometheus.io/scrape") == "true", "Prometheus scrapes the pods")
    check(int(annotations.get("prometheus.io/port", 0)) == ports["http"]["containerPort"],
          "Prometheus scrapes the HTTP port")

    # Probes: on the HTTP port, at paths a node serves.
    node, http = start_node(args.starling)
    try:
        paths = [annotations.get("prometheus.io/path", "/metrics")]
        for probe in ["readinessProbe", "livenessProbe"]:
            get = container[probe]["httpGet"]
            check(get["port"] in ("http", ports["http"]["containerPort"]),
                  f"{probe} asks the HTTP port")
            paths.append(get["path"])
        for path in paths:
            with urllib.request.urlopen(f"http://{http}{path}", timeout=5) as reply:
                check(reply.status == 200, f"a node answers {path} with 200, not {reply.status}")
        print(f"a node serves {', '.join(sorted(set(paths)))}")
    finally:
        node.terminate()
        node.wait()

    # Security: not root, the image's user, nothing writable but volumes.
    with open(os.path.join(ROOT, "deploy", "docker", "Dockerfile")) as f:
        user = re.search(r"^USER (\d+):(\d+)$", f.read(), re.M)
    security = pod["spec"]["securityContext"]
    check(security.get("runAsNonRoot") is True, "runAsNonRoot")
    check(user and security.get("runAsUser") == int(user.group(1)),
          "runAsUser is the image's USER")
    csc = container["securityContext"]
    check(csc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
    check(csc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], "every capability dropped")
    for kind in ["requests", "limits"]:
        check({"cpu", "memory"} <= set(container["resources"].get(kind, {})),
              f"cpu and memory {kind}")

    # Certificates: the Secret make-certs prints holds every file the pods read.
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "certs")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "certs")
    with tempfile.TemporaryDirectory() as work:
        out = subprocess.run([os.path.join(ROOT, "deploy", "k8s", "make-certs"),
                              os.path.join(work, "certs")],
                             env=dict(os.environ, STARLING=args.starling,
                                      REPLICAS=str(replicas)),
                             check=True, capture_output=True, text=True).stdout
    secret = yaml.safe_load(out)
    validate([secret])
    check(secret["metadata"]["name"] == volume["secret"]["secretName"],
          "make-certs prints the Secret the pods mount")
    check("ca-key.pem" not in secret["data"], "the CA's key stays out of the cluster")
    for i in range(replicas):
        pod_name = f"{sts['metadata']['name']}-{i}"
        for flag in ["STARLING_TLS_CA", "STARLING_TLS_CERT", "STARLING_TLS_KEY"]:
            path = env[flag].replace("$(POD_NAME)", pod_name)
            directory, _, file = path.rpartition("/")
            check(directory == mount["mountPath"] and file in secret["data"],
                  f"{flag} of {pod_name} ({path}) is in the Secret")

    if failures:
        for failure in failures:
            print(f"FAILED: {failure}")
        sys.exit(1)
    print("the Kubernetes base renders, validates and agrees with the node")


if __name__ == "__main__":
    main()
