"""The Kubernetes API as a Python program sees it: the official `kubernetes` client (PyPI) against
a real keel-server.

Run by tests/tests/python_client.rs, which starts the server and points KUBECONFIG at its admin
kubeconfig. Every assertion is what the same call returns on a real Kubernetes 1.32 cluster.
"""

import ipaddress
import os
import queue
import textwrap
import threading
import time
import uuid

import pytest
from kubernetes import client, config, utils, watch
from kubernetes.client.exceptions import ApiException

DEADLINE = 30  # seconds to wait for anything asynchronous


@pytest.fixture(scope="session")
def api_client():
    config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    return client.ApiClient()


@pytest.fixture
def core(api_client):
    return client.CoreV1Api(api_client)


@pytest.fixture
def apps(api_client):
    return client.AppsV1Api(api_client)


@pytest.fixture
def ns(core):
    """A fresh namespace for one test."""
    name = "py-" + uuid.uuid4().hex[:8]
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def wait_gone(read, *args):
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            read(*args)
        except ApiException as e:
            assert e.status == 404, e
            return
        assert time.monotonic() < deadline, f"{args} still exists after {DEADLINE} s"
        time.sleep(0.1)


def test_namespaces_crud(core):
    name = "py-ns-" + uuid.uuid4().hex[:6]
    created = core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    assert created.metadata.name == name
    assert created.status.phase == "Active"
    assert created.metadata.labels.get("kubernetes.io/metadata.name") == name

    read = core.read_namespace(name)
    assert read.metadata.uid == created.metadata.uid

    names = [n.metadata.name for n in core.list_namespace().items]
    for want in ("default", "kube-system", name):
        assert want in names

    patched = core.patch_namespace(name, {"metadata": {"labels": {"team": "py"}}})
    assert patched.metadata.labels["team"] == "py"

    core.delete_namespace(name)
    wait_gone(core.read_namespace, name)


def test_config_maps_crud(core, ns):
    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="settings", labels={"app": "py"}),
        data={"mode": "fast"},
    )
    created = core.create_namespaced_config_map(ns, body)
    assert created.metadata.namespace == ns
    assert created.data == {"mode": "fast"}
    rv = created.metadata.resource_version
    assert rv

    assert core.read_namespaced_config_map("settings", ns).data == {"mode": "fast"}

    listed = core.list_namespaced_config_map(ns, label_selector="app=py")
    assert [c.metadata.name for c in listed.items] == ["settings"]

    created.data = {"mode": "safe", "level": "3"}
    replaced = core.replace_namespaced_config_map("settings", ns, created)
    assert replaced.data == {"mode": "safe", "level": "3"}
    assert replaced.metadata.resource_version != rv

    # A dict body is sent as a strategic merge patch.
    patched = core.patch_namespaced_config_map("settings", ns, {"data": {"extra": "x"}})
    assert patched.data == {"mode": "safe", "level": "3", "extra": "x"}

    # A stale resourceVersion is a 409 Conflict.
    created.data = {"mode": "stale"}
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("settings", ns, created)
    assert conflict.value.status == 409

    core.delete_namespaced_config_map("settings", ns)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("settings", ns)
    assert missing.value.status == 404
    assert '"reason":"NotFound"' in missing.value.body.replace(" ", "")


def test_services_crud(core, ns):
    body = client.V1Service(
        metadata=client.V1ObjectMeta(name="web", labels={"app": "web"}),
        spec=client.V1ServiceSpec(
            selector={"app": "web"},
            ports=[client.V1ServicePort(name="http", port=80, target_port=8080)],
        ),
    )
    created = core.create_namespaced_service(ns, body)
    spec = created.spec
    assert spec.type == "ClusterIP"
    assert spec.session_affinity == "None"
    assert spec.ports[0].protocol == "TCP"
    assert ipaddress.ip_address(spec.cluster_ip) in ipaddress.ip_network("10.96.0.0/12")
    assert spec.cluster_ips == [spec.cluster_ip]

    read = core.read_namespaced_service("web", ns)
    assert read.spec.cluster_ip == spec.cluster_ip

    patched = core.patch_namespaced_service("web", ns, {"metadata": {"labels": {"tier": "front"}}})
    assert patched.metadata.labels == {"app": "web", "tier": "front"}
    assert patched.spec.cluster_ip == spec.cluster_ip, "patching keeps the allocated IP"

    names = [s.metadata.name for s in core.list_namespaced_service(ns).items]
    assert names == ["web"]

    core.delete_namespaced_service("web", ns)
    wait_gone(core.read_namespaced_service, "web", ns)


def deployment(name, replicas):
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name}),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="nginx",
                            image="nginx:1.25",
                            ports=[client.V1ContainerPort(container_port=80)],
                        )
                    ]
                ),
            ),
        ),
    )


def test_deployments_create_patch_read_delete(apps, ns):
    created = apps.create_namespaced_deployment(ns, deployment("web", 2))
    assert created.spec.replicas == 2
    assert created.spec.strategy.type == "RollingUpdate"
    assert created.metadata.generation == 1

    # Strategic merge patch: containers merge by name, the ports stay.
    patched = apps.patch_namespaced_deployment(
        "web",
        ns,
        {"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.26"}]}}}},
    )
    assert patched.spec.replicas == 3
    containers = patched.spec.template.spec.containers
    assert len(containers) == 1
    assert containers[0].image == "nginx:1.26"
    assert containers[0].ports[0].container_port == 80

    # A JSON patch (a list body) is sent as application/json-patch+json.
    scaled = apps.patch_namespaced_deployment("web", ns, [{"op": "replace", "path": "/spec/replicas", "value": 1}])
    assert scaled.spec.replicas == 1

    read = apps.read_namespaced_deployment("web", ns)
    assert read.spec.replicas == 1
    assert read.metadata.generation == 3

    names = [d.metadata.name for d in apps.list_namespaced_deployment(ns).items]
    assert names == ["web"]

    apps.delete_namespaced_deployment("web", ns)
    wait_gone(apps.read_namespaced_deployment, "web", ns)


def test_watch_stream_sees_added_modified_deleted(core, ns):
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    events = queue.Queue()
    w = watch.Watch()

    def follow():
        try:
            for ev in w.stream(
                core.list_namespaced_config_map,
                namespace=ns,
                resource_version=rv,
                timeout_seconds=DEADLINE,
            ):
                obj = ev["object"]
                if obj.metadata.name == "watched":
                    events.put((ev["type"], dict(obj.data or {})))
                    if ev["type"] == "DELETED":
                        w.stop()
        except Exception as e:  # surfaced to the test thread below
            events.put(("EXCEPTION", repr(e)))

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="watched"), data={"v": "1"})
    )
    core.patch_namespaced_config_map("watched", ns, {"data": {"v": "2"}})
    core.delete_namespaced_config_map("watched", ns)

    seen = []
    while len(seen) < 3:
        try:
            seen.append(events.get(timeout=DEADLINE))
        except queue.Empty:
            pytest.fail(f"watch events so far: {seen}")
        assert seen[-1][0] != "EXCEPTION", seen
    assert seen == [("ADDED", {"v": "1"}), ("MODIFIED", {"v": "2"}), ("DELETED", {"v": "2"})]
    t.join(timeout=DEADLINE)


def test_create_from_yaml_multi_document(api_client, core, apps, ns, tmp_path):
    manifest = tmp_path / "app.yaml"
    manifest.write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: ConfigMap
            metadata:
              name: app-config
            data:
              greeting: hello
            ---
            apiVersion: v1
            kind: Service
            metadata:
              name: app
            spec:
              selector: {app: app}
              ports:
              - port: 80
                targetPort: 8080
            ---
            apiVersion: apps/v1
            kind: Deployment
            metadata:
              name: app
            spec:
              replicas: 1
              selector:
                matchLabels: {app: app}
              template:
                metadata:
                  labels: {app: app}
                spec:
                  containers:
                  - name: app
                    image: nginx:1.25
            """
        )
    )
    created = utils.create_from_yaml(api_client, str(manifest), namespace=ns)
    kinds = sorted(type(o).__name__ for group in created for o in group)
    assert kinds == ["V1ConfigMap", "V1Deployment", "V1Service"]

    assert core.read_namespaced_config_map("app-config", ns).data == {"greeting": "hello"}
    assert core.read_namespaced_service("app", ns).spec.ports[0].target_port == 8080
    assert apps.read_namespaced_deployment("app", ns).spec.replicas == 1

    # Creating the same objects again fails with 409 AlreadyExists for each.
    with pytest.raises(utils.FailToCreateError) as again:
        utils.create_from_yaml(api_client, str(manifest), namespace=ns)
    assert [e.status for e in again.value.api_exceptions] == [409, 409, 409]
