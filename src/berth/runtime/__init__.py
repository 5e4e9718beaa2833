"""berth's OCI runtime: a runtime spec in, a container process out (namespaces, mounts, cgroups, caps, seccomp).

``linux`` has the lifecycle (create/start/state/kill/delete/run), ``init`` the in-container steps, ``spec``
Docker's default spec, ``state`` the on-disk state, ``cli`` the runc-compatible ``berth-runtime`` command.

Imports: berth.errors, berth.oci, berth.kernel (and berth.layers only from tests' helpers).
"""
