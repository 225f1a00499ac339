"""Exec and port-forward through the official Python client (`kubernetes` from PyPI), which
speaks the channel WebSocket protocols (v5/v4.channel.k8s.io for exec, the plain channel form with
`ports=` for port-forward). Run by tests/tests/pods_streams.rs against a lab, with KUBECONFIG set:

    python3 lab_streams.py EXEC_POD CONTAINER WEB_POD WEB_PORT

Not collected by pytest (no test_ prefix): it needs a node. Exits non-zero on the first failure.
"""
import sys

from kubernetes import client, config
from kubernetes.stream import portforward, stream


def main():
    pod, container, web, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    config.load_kube_config()
    api = client.CoreV1Api()

    out = stream(api.connect_get_namespaced_pod_exec, pod, "default", container=container,
                 command=["sh", "-c", "echo from-python"], stderr=True, stdin=False,
                 stdout=True, tty=False)
    assert out == "from-python\n", repr(out)
    print("exec output ok")

    resp = stream(api.connect_get_namespaced_pod_exec, pod, "default", container=container,
                  command=["sh", "-c", "echo to-stderr >&2; exit 7"], stderr=True, stdin=False,
                  stdout=True, tty=False, _preload_content=False)
    resp.run_forever(timeout=60)
    assert resp.returncode == 7, resp.returncode
    assert "to-stderr" in resp.read_stderr(), "no stderr"
    print("exec exit code ok")

    # The same over v4.channel.k8s.io (what clients without v5 speak): no close channel.
    resp = stream(api.connect_get_namespaced_pod_exec, pod, "default", container=container,
                  command=["sh", "-c", "echo over-v4; exit 4"], stderr=True, stdin=False,
                  stdout=True, tty=False, _preload_content=False,
                  _headers={"sec-websocket-protocol": "v4.channel.k8s.io"})
    resp.run_forever(timeout=60)
    assert resp.subprotocol == "v4.channel.k8s.io", resp.subprotocol
    assert resp.returncode == 4, resp.returncode
    assert "over-v4" in resp.read_stdout(timeout=1), "no stdout over v4"
    print("exec v4 ok")

    resp = stream(api.connect_get_namespaced_pod_exec, pod, "default", container=container,
                  command=["sh", "-c", "read line; echo got-$line"], stderr=True, stdin=True,
                  stdout=True, tty=False, _preload_content=False)
    resp.write_stdin("hello\n")
    got = ""
    while resp.is_open() and "got-hello" not in got:
        resp.update(timeout=5)
        got += resp.read_stdout()
    resp.close()
    assert "got-hello" in got, repr(got)
    print("exec stdin ok")

    pf = portforward(api.connect_get_namespaced_pod_portforward, web, "default", ports=str(port))
    sock = pf.socket(port)
    sock.setblocking(True)
    sock.settimeout(30)
    sock.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert ("pod=%s" % web).encode() in data, data
    assert pf.error(port) is None, pf.error(port)
    print("port-forward ok")


if __name__ == "__main__":
    main()
